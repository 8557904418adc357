"""CRF tagging as a :class:`zoo.core.Task`: data, loss, optimizer, evaluation, prediction.

The loss is the author's: mean over sentences of log Z − gold-path score
(:func:`kernels.crf.crf_log_likelihood`). The transitions get their own learning rate
(``optim.transitions_lr_multiplier``, bert4keras uses ×1000 next to BERT) through
``optax.partition``, which for Adam is the same as the author's trick of storing the
transitions divided by the multiplier.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
from pathlib import Path
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kernels import crf
from zoo import data as zoo_data
from zoo.core import ema, parallel
from zoo.core.checkpoint import Checkpointer
from zoo.core.config import read_config
from zoo.core.train import Task, init_state
from zoo.crf.model import Tagger
from zoo.crf.spans import chunks, span_f1
from zoo.data.batching import pad_batch, padded_length, step_batches

PAD, UNK = 0, 1


@dataclasses.dataclass
class Vocabulary:
    """Token ids (0 = <pad>, 1 = <unk>), tag names and the tagging scheme of a run."""

    tokens: list[str]
    labels: list[str]
    scheme: str

    @classmethod
    def build(cls, examples, labels, scheme, min_count=1):
        counts = collections.Counter(tok for tokens, _ in examples for tok in tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls(["<pad>", "<unk>", *kept], list(labels), scheme)

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, tokens) -> np.ndarray:
        return np.array([self._index.get(t, UNK) for t in tokens], np.int32)

    def save(self, path: Path):
        fields = {"tokens": self.tokens, "labels": self.labels, "scheme": self.scheme}
        Path(path).write_text(json.dumps(fields, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path):
        return cls(**json.loads(Path(path).read_text()))


def make_model(config: ml_collections.ConfigDict, vocab: Vocabulary) -> Tagger:
    m = config.model
    return Tagger(
        vocab_size=len(vocab.tokens),
        num_tags=len(vocab.labels),
        embed_dim=m.embed_dim,
        encoder=m.encoder,
        features=m.features,
        kernel_size=m.kernel_size,
        dilations=tuple(m.dilations),
        residual=m.residual,
        lstm_layers=m.lstm_layers,
        dropout=m.dropout,
        use_start_end=m.use_start_end,
    )


def constraints(config, vocab: Vocabulary):
    """The scheme's constraints for training and decoding (``model.constrained``).

    ``model.constrain_start_end=False`` keeps only the pair constraints: corpora cut into
    fixed-length pieces (MSRA) have sentences that open inside an entity (M-ORG, E-PER).
    """
    if not config.model.constrained:
        return None
    allowed = crf.allowed_transitions(vocab.scheme, vocab.labels)
    if not config.model.constrain_start_end:
        everywhere = np.ones_like(allowed.start)
        allowed = allowed._replace(start=everywhere, end=everywhere)
    return allowed


def make_optimizer(config) -> optax.GradientTransformation:
    o = config.optim
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.learning_rate, o.warmup_steps, max(config.train.num_steps, o.warmup_steps + 1), o.final_lr_fraction * o.learning_rate
    )
    crf_schedule = lambda step: schedule(step) * o.transitions_lr_multiplier  # noqa: E731

    def label(params):
        return {name: ("crf" if name.startswith("crf_") else "body") for name in params}

    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.partition({"body": optax.adamw(schedule, weight_decay=o.weight_decay), "crf": optax.adam(crf_schedule)}, label),
    )


def encode_examples(examples, vocab: Vocabulary):
    tokens = [vocab.encode(toks) for toks, _ in examples]
    tags = [np.asarray(t, np.int32) for _, t in examples]
    return tokens, tags


def make_batch(tokens, tags, indices, bucket, max_len):
    lengths = np.array([min(len(tokens[i]), max_len) for i in indices], np.int32)
    t = min(padded_length(int(lengths.max()), bucket), max_len)
    return {
        "tokens": pad_batch([tokens[i] for i in indices], t),
        "tags": pad_batch([tags[i] for i in indices], t),
        "lengths": lengths,
    }


def split_long(examples, labels, scheme, max_len):
    """Cuts examples longer than ``max_len`` into pieces at chunk boundaries.

    Truncating instead would leave pieces that end inside a word or entity, whose gold
    paths the scheme's start/end constraints forbid. A cut before position j is taken
    where tag j may open a sequence and tag j−1 may close one; a piece with no such
    place is cut hard at ``max_len``.
    """
    allowed = crf.allowed_transitions(scheme, labels)
    out = []
    for tokens, tags in examples:
        begin = 0
        while len(tokens) - begin > max_len:
            cut = begin + max_len
            while cut > begin + 1 and not (allowed.start[tags[cut]] and allowed.end[tags[cut - 1]]):
                cut -= 1
            cut = cut if cut > begin + 1 else begin + max_len
            out.append((tokens[begin:cut], tags[begin:cut]))
            begin = cut
        out.append((tokens[begin:], tags[begin:]))
    return out


def load_split(config, split):
    """``(examples, labels)`` of a split; training examples are cut to ``data.max_len``."""
    source = zoo_data.load(config.data.name, split, data_dir=config.data.data_dir or None)
    labels = zoo_data.tag_names(source, config.data.name)
    examples = [ex for ex in zoo_data.read_examples(source, config.data.name) if len(ex[0]) > 0]
    limit = config.data.get(f"{split}_limit", 0)
    if limit:
        examples = examples[:limit]
    if split == "train":
        examples = split_long(examples, labels, zoo_data.DATASETS[config.data.name].scheme, config.data.max_len)
    return examples, labels


def get_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    """Builds (or reloads, when resuming) the vocabulary in ``workdir`` and the Task."""
    train_examples, labels = load_split(config, "train")
    scheme = zoo_data.DATASETS[config.data.name].scheme
    vocab_path = Path(workdir) / "vocab.json"
    if vocab_path.exists():
        vocab = Vocabulary.load(vocab_path)
    else:
        vocab = Vocabulary.build(train_examples, labels, scheme, config.data.min_count)
        vocab.save(vocab_path)
    model = make_model(config, vocab)
    allowed = constraints(config, vocab)
    tokens, tags = encode_examples(train_examples, vocab)
    lengths = np.array([len(t) for t in tokens])
    d = config.data

    def init(key):
        dummy = jnp.zeros((1, d.bucket), jnp.int32)
        return model.init(key, dummy, jnp.ones((1,), jnp.int32))["params"]

    def loss_fn(params, batch, key):
        out = model.apply({"params": params}, batch["tokens"], batch["lengths"], train=True, rngs={"dropout": key})
        ll = crf.crf_log_likelihood(
            out.emissions, out.transitions, batch["lengths"], batch["tags"], start=out.start, end=out.end, allowed=allowed
        )
        # A gold path the constraints forbid scores ~FORBIDDEN (-1e30): leave it out of
        # the mean rather than let one bad label swamp the loss, and report the count.
        valid = ll > 0.5 * crf.FORBIDDEN
        ll = jnp.where(valid, ll, 0.0)
        loss = -jnp.sum(ll) / jnp.maximum(jnp.sum(valid), 1)
        return loss, {
            "nll_per_token": -jnp.sum(ll) / jnp.sum(jnp.where(valid, batch["lengths"], 0)),
            "forbidden_gold_paths": jnp.sum(~valid).astype(jnp.float32),
        }

    def train_batches(start_step):
        for idx in step_batches(lengths, d.batch_size, config.seed, start_step):
            yield make_batch(tokens, tags, idx, d.bucket, d.max_len)

    test_examples, _ = load_split(config, "test")

    def evaluate(params):
        return evaluate_examples(config, model, params, vocab, test_examples)

    return Task(init, make_optimizer(config), loss_fn, train_batches, evaluate)


@functools.lru_cache(maxsize=8)
def _decoder(model: Tagger, allowed_key):
    """One jitted decoder per (model, constraints): repeated evaluations reuse its compilations."""
    allowed = None
    if allowed_key is not None:
        start, end, pairs = (np.frombuffer(b, bool) for b in allowed_key)
        allowed = crf.TransitionConstraints(start, end, pairs.reshape(len(start), len(start)))

    @jax.jit
    def decode(params, tokens, lengths):
        out = model.apply({"params": params}, tokens, lengths)
        return crf.crf_viterbi(out.emissions, out.transitions, lengths, start=out.start, end=out.end, allowed=allowed)[0]

    return decode


def make_decoder(model: Tagger, allowed):
    """``decode(params, tokens[B, T], lengths[B]) -> tags[B, T]``, jitted and cached."""
    # Linen modules hash by their fields; numpy constraints are made hashable as bytes.
    key = None if allowed is None else tuple(np.asarray(a, bool).tobytes() for a in allowed)
    return _decoder(model, key)


def decode_all(config, model, params, vocab, token_lists) -> list[list[str]]:
    """Viterbi tags for every sequence, batched by similar length; no truncation."""
    decode = make_decoder(model, constraints(config, vocab))
    encoded = [vocab.encode(toks) for toks in token_lists]
    order = np.argsort([len(t) for t in encoded], kind="stable")
    bs, bucket = config.data.eval_batch_size, config.data.bucket
    out: list[list[str] | None] = [None] * len(encoded)
    for i in range(0, len(order), bs):
        idx = order[i : i + bs]
        lengths = np.array([len(encoded[j]) for j in idx], np.int32)
        t = padded_length(int(lengths.max()), bucket)
        pad_rows = bs - len(idx)  # fixed batch shape: one compilation per bucket
        toks = pad_batch([encoded[j] for j in idx] + [np.zeros(1, np.int32)] * pad_rows, t)
        lens = np.concatenate([lengths, np.ones(pad_rows, np.int32)])
        tags = np.asarray(decode(params, toks, lens))
        for row, j in enumerate(idx):
            out[j] = [vocab.labels[k] for k in tags[row, : lengths[row]]]
    return out


def evaluate_examples(config, model, params, vocab, examples) -> dict[str, float]:
    predicted = decode_all(config, model, params, vocab, [toks for toks, _ in examples])
    gold = [chunks([vocab.labels[k] for k in tags], vocab.scheme) for _, tags in examples]
    pred = [chunks(p, vocab.scheme) for p in predicted]
    scores = span_f1(gold, pred)
    correct = sum(int(vocab.labels[g] == p) for (_, tags), ps in zip(examples, predicted) for g, p in zip(tags, ps))
    scores["tag_accuracy"] = correct / max(1, sum(len(t) for _, t in examples))
    return scores


def tag_text(config, model, params, vocab, text: str):
    """Tags raw text character by character; returns (tags, spans as (text, start, end, type))."""
    chars = list(text)
    tags = decode_all(config, model, params, vocab, [chars])[0]
    spans = sorted(chunks(tags, vocab.scheme))
    return tags, [("".join(chars[s:e]), s, e, kind) for s, e, kind in spans]


def restore_run(run_dir: Path):
    """``(config, vocab, model, params, step)`` of a run directory's latest checkpoint."""
    run_dir = Path(run_dir)
    config = read_config(run_dir / "config.json")
    vocab = Vocabulary.load(run_dir / "vocab.json")
    model = make_model(config, vocab)
    checkpointer = Checkpointer(run_dir / "checkpoints")
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint")

    def init(key):
        return model.init(key, jnp.zeros((1, config.data.bucket), jnp.int32), jnp.ones((1,), jnp.int32))["params"]

    # Only init, the optimizer and a weight EMA's presence give the state's structure to restore into.
    like = Task(init, make_optimizer(config), loss_fn=None, train_batches=None, evaluate=None)
    like = ema.apply_config(like, config.train)
    state = checkpointer.restore(init_state(like, jax.random.key(0), parallel.data_mesh(1)))
    checkpointer.close()
    return config, vocab, model, state.params, int(state.step)
