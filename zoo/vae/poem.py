"""The author's CNN + VAE poem generator (post 5332, ``bojone/vae`` ``vae_shi.py``).

**Data.** Five-character couplets: each quatrain of :mod:`zoo.data.poetry` gives two, its
first and its second line with the punctuation dropped (``XXXXX，XXXXX。`` → 10 characters),
so 27,214 training and 1,312 test couplets (the quatrains' split). The author regex-extracted
couplets from the whole Quan Tang Shi; this corpus is its strict-quatrain subset plus Song.

**Model** (:class:`PoemVAE`), as in the post:

* encoder: Embedding(V, 64) → two residual gated convolutions (:class:`GatedConv`: conv1d of
  width 3 to ``2·64`` channels, ``a · sigmoid(b)``, plus the input) → average over the 10
  positions → Dense(64) heads for ``μ`` and ``log σ²``;
* ``z = μ + σ·ε`` (64 dimensions);
* decoder, **non-autoregressive**: Dense(64·10) → reshape ``[10, 64]`` → one residual gated
  convolution → Dense(V) logits per position.

**Loss:** the sum over the 10 positions of the character cross-entropy plus the analytic
Gaussian KL (the negative ELBO in nats per couplet). Against posterior collapse (not in the
post): ``loss.kl_warmup_steps`` (β from 0 to 1) and ``loss.free_bits`` (nats per latent
dimension), both off by default; evaluation always reports the true ELBO. ``log σ²`` is clipped to ``[-30, 20]``
so ``exp`` cannot overflow. Adam 1e-3, batch 64 as in the post.

**Generation:** ``z ~ N(0, I)`` and the argmax at every position (vmapped over samples),
printed as ``XXXXX，XXXXX。``. The 10 positions are decoded independently given ``z``, which
is the model's known weakness: the lines need not rhyme or even agree.

**Evaluation** (test split): the negative ELBO, its reconstruction and KL parts (nats per
couplet), the character accuracy of decoding the posterior mean, and for
``eval.num_samples`` prior samples the fraction that are exact training couplets (copying)
and the number of distinct samples; the samples go to ``<workdir>/samples.txt``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kernels.checks import argument_error, token_ids
from zoo.core.train import Task
from zoo.data import poetry
from zoo.data.batching import shuffled_batches
from zoo.vae.losses import gaussian_kl

COUPLET_LENGTH = 10
LOGVAR_RANGE = (-30.0, 20.0)


def couplets(poems) -> list[str]:
    """Two 10-character couplets per 24-character quatrain body (punctuation dropped)."""
    out = []
    for p in poems:
        b = p.body
        out.extend([b[0:5] + b[6:11], b[12:17] + b[18:23]])
    return out


def format_couplet(text: str) -> str:
    return f"{text[:5]}，{text[5:]}。"


class GatedConv(nn.Module):
    """Residual gated convolution (GCNN): ``x + a·sigmoid(b)``, ``[a | b] = conv1d(x)`` of
    width ``kernel_size`` ('same' padding) to ``2·C`` channels. ``x [B, T, C] -> [B, T, C]``."""

    kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        h = nn.Conv(2 * channels, (self.kernel_size,), padding="SAME")(x)
        a, b = jnp.split(h, 2, axis=-1)
        return x + a * jax.nn.sigmoid(b)


class PoemVAE(nn.Module):
    """``tokens [B, 10] -> (logits [B, 10, V], mean [B, Z], logvar [B, Z])`` (see the module docstring)."""

    vocab_size: int
    embed_dim: int = 64
    latent_dim: int = 64
    length: int = COUPLET_LENGTH

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim)
        self.enc_convs = [GatedConv(), GatedConv()]
        self.to_mean = nn.Dense(self.latent_dim)
        self.to_logvar = nn.Dense(self.latent_dim)
        self.from_z = nn.Dense(self.embed_dim * self.length)
        self.dec_conv = GatedConv()
        self.to_logits = nn.Dense(self.vocab_size)

    def encode(self, tokens):
        h = self.embed(tokens)
        for conv in self.enc_convs:
            h = conv(h)
        h = jnp.mean(h, axis=1)
        return self.to_mean(h), jnp.clip(self.to_logvar(h), *LOGVAR_RANGE)

    def decode(self, z):
        """``z [B, Z] -> logits [B, 10, V]``: every position at once (non-autoregressive)."""
        h = self.from_z(z).reshape(z.shape[0], self.length, self.embed_dim)
        return self.to_logits(self.dec_conv(h))

    def __call__(self, tokens, key):
        if jnp.ndim(tokens) != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"PoemVAE: `tokens` must be [B, {self.length}]; got shape {jnp.shape(tokens)}")
        mean, logvar = self.encode(tokens)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        return self.decode(z), mean, logvar


def negative_elbo(logits, tokens, mean, logvar):
    """Per couplet: ``(reconstruction [B], kl [B])`` in nats; the negative ELBO is their sum.

    ``logits [B, L, V]``, ``tokens [B, L]`` integer ids in ``[0, V)`` (checked when concrete),
    ``mean``, ``logvar [B, Z]``."""
    fn = "poem negative_elbo"
    if jnp.ndim(logits) != 3 or jnp.shape(tokens) != jnp.shape(logits)[:2]:
        raise argument_error(fn, "tokens", f"[B, L] = {jnp.shape(logits)[:2]} (logits' first two axes)",
                             f"shape {jnp.shape(tokens)} with logits {jnp.shape(logits)}")
    tokens = token_ids(fn, "tokens", tokens, 2, jnp.shape(logits)[-1], "[B, L]")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    recon = -jnp.sum(jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0], axis=1)
    return recon, gaussian_kl(mean, logvar)


# --------------------------------------------------------------------------- #
# Task
# --------------------------------------------------------------------------- #


def load_data(config):
    d = config.data
    train = couplets(poetry.load_split("train", d.train_limit))
    test = couplets(poetry.load_split("test", d.test_limit))
    vocab = poetry.Vocab.build(train, d.min_count)
    index = vocab.index()
    encode = lambda texts: np.array([vocab.encode(t, index) for t in texts], np.int32).reshape(-1, COUPLET_LENGTH)  # noqa: E731
    return encode(train), encode(test), vocab, set(train)


def make_model(config, vocab_size: int) -> PoemVAE:
    m = config.model
    return PoemVAE(vocab_size, m.embed_dim, m.latent_dim)


def kl_weight(step, warmup_steps: int):
    """KL warm-up (Bowman et al. 2016): β rises linearly from 0 to 1 over ``warmup_steps`` (1 when 0)."""
    if warmup_steps <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)


def free_bits_kl(mean, logvar, free_bits: float):
    """The KL term with free bits (Kingma et al. 2016): each latent dimension's batch-mean KL
    counts as at least ``free_bits`` nats, so the optimiser gains nothing from pushing a
    dimension below it; ``[]``. With ``free_bits = 0`` this is the batch-mean KL."""
    per_dim = 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)  # [B, D]
    return jnp.sum(jnp.maximum(jnp.mean(per_dim, axis=0), free_bits))


def loss_and_metrics(model, params, tokens, key, step=0, *, kl_warmup_steps: int = 0, free_bits: float = 0.0):
    """The training objective: batch mean of ``reconstruction + β·KL`` (β from :func:`kl_weight`,
    KL with :func:`free_bits_kl`); with the defaults, the negative ELBO. The metrics report
    the true reconstruction and KL."""
    logits, mean, logvar = model.apply({"params": params}, tokens, key)
    recon, kl = negative_elbo(logits, tokens, mean, logvar)
    kl_term = free_bits_kl(mean, logvar, free_bits) if free_bits > 0 else jnp.mean(kl)
    loss = jnp.mean(recon) + kl_weight(step, kl_warmup_steps) * kl_term
    return loss, {"reconstruction": jnp.mean(recon), "kl": jnp.mean(kl), "neg_elbo": jnp.mean(recon + kl)}


def couplet_text(vocab, ids) -> str:
    """All 10 positions as characters; the special ids (never targets) print as ``□``."""
    return "".join(vocab.chars[i] if i >= len(poetry.SPECIALS) else "□" for i in np.asarray(ids).tolist())


def sample_texts(model, params, vocab, key, num: int) -> list[str]:
    z = jax.random.normal(key, (num, model.latent_dim))
    tokens = _jitted_decode(model)(params, z)
    return [couplet_text(vocab, t) for t in np.asarray(tokens)]


@functools.lru_cache(maxsize=4)
def _jitted_decode(model):
    return jax.jit(lambda params, z: jnp.argmax(model.apply({"params": params}, z, method=PoemVAE.decode), -1))


@functools.lru_cache(maxsize=4)
def _jitted_eval(model):
    def batch_metrics(params, tokens, key):
        logits, mean, logvar = model.apply({"params": params}, tokens, key)
        recon, kl = negative_elbo(logits, tokens, mean, logvar)
        decoded = jnp.argmax(model.apply({"params": params}, mean, method=PoemVAE.decode), -1)
        return jnp.sum(recon), jnp.sum(kl), jnp.sum(decoded == tokens)

    return jax.jit(batch_metrics)


def evaluate_couplets(config, model, params, vocab, test_tokens, train_set, workdir=None) -> dict[str, float]:
    e = config.eval
    fn = _jitted_eval(model)
    key, sample_key = jax.random.split(jax.random.key(e.seed))
    recon = kl = correct = 0.0
    for i in range(0, len(test_tokens), e.batch_size):
        chunk = test_tokens[i : i + e.batch_size]
        r, k, c = fn(params, jnp.asarray(chunk), jax.random.fold_in(key, i))
        recon, kl, correct = recon + float(r), kl + float(k), correct + float(c)
    n = len(test_tokens)
    samples = sample_texts(model, params, vocab, sample_key, e.num_samples)
    metrics = {
        "test_neg_elbo": (recon + kl) / n,
        "test_reconstruction": recon / n,
        "test_kl": kl / n,
        "test_char_accuracy": correct / (n * COUPLET_LENGTH),
        "sample_copied_fraction": float(np.mean([s in train_set for s in samples])),
        "sample_distinct": float(len(set(samples))),
    }
    if workdir is not None:
        path = Path(workdir) / "samples.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(format_couplet(s) for s in samples) + "\n", encoding="utf-8")
    return metrics


def get_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    d = config.data
    train_tokens, test_tokens, vocab, train_set = load_data(config)
    model = make_model(config, vocab.size)
    n = len(train_tokens)
    steps_per_epoch = n // d.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size {d.batch_size} exceeds the {n} training couplets")

    def init(key):
        return model.init({"params": key}, jnp.asarray(train_tokens[:1]), key)["params"]

    lo = config.loss
    if lo.kl_warmup_steps < 0 or lo.free_bits < 0:
        raise ValueError(f"loss.kl_warmup_steps and loss.free_bits must be >= 0; got {lo.kl_warmup_steps}, {lo.free_bits}")

    def loss_fn(params, batch, key):
        return loss_and_metrics(
            model, params, batch["tokens"], key, batch["step"][0], kl_warmup_steps=lo.kl_warmup_steps,
            free_bits=lo.free_bits,
        )  # fmt: skip

    def train_batches(start_step):
        for step, idx in shuffled_batches(n, d.batch_size, config.seed, start_step):
            # the step once per example: every batch field is sharded along its first axis
            yield {"tokens": train_tokens[idx], "step": np.full(len(idx), step, np.int32)}

    def evaluate(params):
        return evaluate_couplets(config, model, params, vocab, test_tokens, train_set, workdir)

    optimizer = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip), optax.adam(config.optim.learning_rate))
    return Task(init, optimizer, loss_fn, train_batches, evaluate)
