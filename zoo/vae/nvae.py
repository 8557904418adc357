"""NVAE (Vahdat & Kautz, NeurIPS 2020; post 7574) at 28×28 scale, in Flax Linen.

A hierarchical VAE: ``L`` groups of latent feature maps ``z_1..z_L``, the first ones at the
smallest resolution. The prior is autoregressive over groups,
``p(z_l | z_<l) = N(μ_l, σ_l)``, computed from the top-down decoder state ``h``; the
approximate posterior is *residual* to it (section 3.2 of the paper),
``q(z_l | z_<l, x) = N(μ_l + Δμ_l, σ_l·Δσ_l)``, so its KL needs no ``σ_l`` at all except
through ``Δμ/σ_l``:

    KL_l = ½·Σ (Δμ²/σ_l² + Δσ² − log Δσ² − 1)        (:func:`residual_gaussian_kl`)

Architecture (``C`` = ``channels``, ``S`` = ``len(groups_per_scale)`` latent scales):

* bottom-up encoder: 3×3 stem to ``C`` channels at full size, ``pre_cells`` encoder cells,
  then per latent scale a stride-2 encoder cell doubling the channels and
  ``cells_per_group`` encoder cells per group; the feature after each group's cells
  conditions that group's posterior (the last one, at the smallest resolution, the first
  group's);
* top-down decoder: a learned constant ``[H/2^S, W/2^S, C·2^S]``; per group
  ``cells_per_group`` generative cells (not for the first group, whose prior is the
  standard ``Normal(0, 0)``), the prior head ``ELU → conv1×1`` on ``h``, the posterior head
  ``conv3×3`` on ``feature + conv1×1(h)`` (NVlabs's encoder combiner; the first group's on
  ``ELU → conv1×1 → ELU`` of the deepest feature, NVlabs's ``enc0``), and the decoder
  combiner ``h ← conv1×1([h, z])``; an upsampling generative cell between scales
  and one back to full size; ``post_cells`` generative cells; ``ELU → conv3×3`` to the
  output (Bernoulli logits, or a Gaussian mean and log-scale per pixel). The prior,
  posterior and output heads start at zero, so training starts from ``q = p`` (every group
  ``Normal(0, 0)``: mean 0, σ = 1.01) and a unit-variance (or fair-coin) decoder.
* encoder cell (paper fig. 3b): ``BN → Swish → conv3×3 → BN → Swish → conv3×3 → SE``;
  generative cell (fig. 3a): ``BN → conv1×1 (×expand) → BN → Swish → depthwise 5×5 → BN →
  Swish → conv1×1 → BN → SE``. Both are residual with the branch scaled by 0.1 (NVlabs's
  cells), and ``remat=True`` recomputes them in the backward pass.

Every Gaussian is NVlabs's ``Normal``: ``μ = soft_clamp5(m)``, ``σ = exp(soft_clamp5(s)) + 0.01``
(``5·tanh(·/5)``), here kept as ``log σ = logaddexp(soft_clamp5(s), log 0.01)``
(:func:`normal_params`). The posterior clamps the *raw* sums ``m_p + Δm``, ``s_p + Δs``. So
``exp`` of a scale can neither overflow nor vanish, and the KL is computed from these
log-scales as differences, never as a ratio of two ``exp``.

What is *not* built: NVlabs's weight normalisation of every convolution, the IAF flows
inside groups, the discretised logistic mixture for colour images, and mixed precision.
Simplified: the downsampling skip is one strided 1×1 convolution (NVlabs: FactorizedReduce);
upsampling is nearest (NVlabs: bilinear); an upsampling cell's expansion is
``channels·expand`` of its *output* width (NVlabs: of its input width); convolutions keep
their bias before a BatchNorm; ``h0`` starts normal (NVlabs: uniform).
The spectral regulariser, the BatchNorm-scale regulariser, KL warm-up with NVlabs's KL
balancing and BatchNorm re-estimation before sampling live in :mod:`zoo.vae.nvae_task`
and the functions below.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kernels.checks import argument_error as _error
from kernels.depthwise import depthwise_conv2d
from zoo.vae import losses

LIKELIHOODS = ("bernoulli", "gaussian")
CLAMP = 5.0
SIGMA_FLOOR = 1e-2


def soft_clamp(x, bound: float = CLAMP):
    """``bound·tanh(x/bound)``: about the identity for ``|x| ≪ bound``, never beyond ``±bound``."""
    return bound * jnp.tanh(x / bound)


def normal_params(raw_mean, raw_log_scale):
    """NVlabs's ``Normal(mu, log_sigma)``: ``(soft_clamp5(m), log(exp(soft_clamp5(s)) + 0.01))``."""
    return soft_clamp(raw_mean), jnp.logaddexp(soft_clamp(raw_log_scale), math.log(SIGMA_FLOOR))


def residual_gaussian_kl(delta_mean, delta_log_scale, prior_log_scale):
    """``KL(N(μ + Δμ, σ·Δσ) ‖ N(μ, σ))`` summed over all but the batch axis: ``[B, ...] -> [B]``.

    ``½·Σ (Δμ²·exp(−2 log σ) + exp(2 log Δσ) − 2 log Δσ − 1)``: NVAE's residual form, from
    log-scales only. With ``μ = 0`` and ``log σ = 0`` it is the KL to ``N(0, I)`` of a
    posterior ``N(Δμ, Δσ)``.
    """
    terms = (jnp.square(delta_mean * jnp.exp(-prior_log_scale)) + jnp.exp(2.0 * delta_log_scale)
             - 2.0 * delta_log_scale - 1.0)  # fmt: skip
    return 0.5 * jnp.sum(jnp.reshape(terms, (terms.shape[0], -1)), axis=-1)


def normal_log_density(z, mean, log_scale):
    """``log N(z; mean, exp(log_scale)²)`` summed over all but the batch axis: ``[B, ...] -> [B]``."""
    terms = -0.5 * (losses.LOG_2PI + jnp.square((z - mean) * jnp.exp(-log_scale))) - log_scale
    return jnp.sum(jnp.reshape(terms, (terms.shape[0], -1)), axis=-1)


def kl_balance_weights(groups_per_scale: Sequence[int]) -> np.ndarray:
    """NVlabs's ``kl_balancer_coeff(fun="square")``: per group (top-down order) the number
    of latent positions of its scale relative to the smallest, over the groups of that
    scale, normalised to a minimum of 1: ``[L]``."""
    w = [4.0**t / g for t, g in enumerate(groups_per_scale) for _ in range(g)]
    return np.asarray(w, np.float32) / min(w)


def kl_balancer(kl_groups, beta, weights, balance: bool = True):
    """NVlabs's KL balancing during warm-up: ``[B, L]`` per-group KLs -> ``[B]`` weighted KL.

    While ``beta < 1`` (and ``balance``), group ``l`` is weighted by
    ``c_l ∝ (mean_B |KL_l| + 0.01) / w_l · Σ_l (…)`` normalised to mean 1 (no gradient
    through ``c``), so groups with little KL are pushed less towards collapse; then
    ``beta·Σ_l c_l·KL_l``. At ``beta = 1`` (or ``balance=False``): ``beta·Σ_l KL_l``.
    """
    kl_groups = jnp.asarray(kl_groups)
    coeff = jnp.mean(jnp.abs(kl_groups), axis=0) + 0.01
    coeff = coeff / jnp.asarray(weights) * jnp.sum(coeff)
    coeff = jax.lax.stop_gradient(coeff / jnp.mean(coeff))
    use = jnp.logical_and(balance, beta < 1.0)
    coeff = jnp.where(use, coeff, jnp.ones_like(coeff))
    return beta * jnp.sum(kl_groups * coeff, axis=-1)


class SqueezeExcite(nn.Module):
    """Channel gating: ``x·sigmoid(W₂ relu(W₁ mean_hw(x)))`` with ``max(C/16, 4)`` hidden units."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        s = nn.relu(nn.Dense(max(c // 16, 4))(jnp.mean(x, axis=(1, 2))))
        return x * nn.sigmoid(nn.Dense(c)(s))[:, None, None, :]


class DepthwiseConv(nn.Module):
    """``k×k`` depthwise convolution with bias (:func:`kernels.depthwise.depthwise_conv2d`;
    flax's kernel layout ``[k, k, 1, C]`` and initialiser)."""

    kernel_size: int = 5

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel_size, self.kernel_size, 1, c))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return depthwise_conv2d(x, kernel) + bias


def _batch_norm(train: bool, momentum: float):
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5)


class EncoderCell(nn.Module):
    """``x + 0.1·SE(conv3(Swish(BN(conv3(Swish(BN(x)))))))``; ``stride=2`` halves H and W and
    the skip becomes a strided 1×1 convolution to ``channels``. ``[B, H, W, C] -> [B, H/s, W/s, channels]``."""

    channels: int
    stride: int = 1
    train: bool = True
    bn_momentum: float = 0.95

    @nn.compact
    def __call__(self, x):
        skip = x
        if self.stride != 1 or x.shape[-1] != self.channels:
            skip = nn.Conv(self.channels, (1, 1), strides=self.stride, name="skip")(x)
        h = nn.swish(_batch_norm(self.train, self.bn_momentum)(x))
        h = nn.Conv(self.channels, (3, 3), strides=self.stride, padding="SAME")(h)
        h = nn.swish(_batch_norm(self.train, self.bn_momentum)(h))
        h = nn.Conv(self.channels, (3, 3), padding="SAME")(h)
        return skip + 0.1 * SqueezeExcite()(h)


class GenerativeCell(nn.Module):
    """``x + 0.1·SE(BN(conv1(Swish(BN(dw5(Swish(BN(conv1_expand(BN(x))))))))))``; with
    ``upsample`` the input is first doubled in size (nearest) and the skip is a 1×1
    convolution to ``channels``. ``[B, H, W, C] -> [B, H·u, W·u, channels]``."""

    channels: int
    expand: int = 3
    upsample: bool = False
    train: bool = True
    bn_momentum: float = 0.95

    @nn.compact
    def __call__(self, x):
        if self.upsample:
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
        skip = x if x.shape[-1] == self.channels else nn.Conv(self.channels, (1, 1), name="skip")(x)
        wide = self.channels * self.expand
        bn = lambda y: _batch_norm(self.train, self.bn_momentum)(y)  # noqa: E731
        h = nn.Conv(wide, (1, 1))(bn(x))
        h = nn.swish(bn(h))
        h = DepthwiseConv(5)(h)
        h = nn.swish(bn(h))
        h = bn(nn.Conv(self.channels, (1, 1))(h))
        return skip + 0.1 * SqueezeExcite()(h)


class NVAE(nn.Module):
    """NVAE for ``image_shape`` images (28×28×1 by default).

    Attributes:
      channels: ``C`` at full resolution; doubled at each downsampling.
      latent_channels: channels of every latent group ``z_l`` (``[B, h_l, w_l, latent_channels]``).
      groups_per_scale: groups per latent scale, top-down (the smallest resolution first);
        ``S = len(groups_per_scale)`` scales at ``H/2^S … H/2``.
      cells_per_group, pre_cells, post_cells, expand: cell counts and the generative cells'
        expansion ratio.
      likelihood: ``"bernoulli"`` (logits) or ``"gaussian"`` (per-pixel mean and
        log-scale, the latter soft-clamped to ``±log_scale_bound``).
      train: BatchNorm on batch statistics (``True``) or on the running averages.
      bn_momentum: flax convention (``running ← m·running + (1 − m)·batch``); NVlabs's 0.05
        in PyTorch's convention is 0.95 here.
      remat: recompute the cells in the backward pass (``nn.remat``).
    """

    image_shape: Sequence[int] = (28, 28, 1)
    channels: int = 16
    latent_channels: int = 8
    groups_per_scale: Sequence[int] = (2, 2)
    cells_per_group: int = 1
    pre_cells: int = 1
    post_cells: int = 1
    expand: int = 3
    likelihood: str = "bernoulli"
    log_scale_bound: float = 8.0
    train: bool = True
    bn_momentum: float = 0.95
    remat: bool = False

    # ---- structure ------------------------------------------------------------------
    @property
    def num_scales(self) -> int:
        return len(self.groups_per_scale)

    @property
    def num_groups(self) -> int:
        return int(sum(self.groups_per_scale))

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Per group, top-down: ``(h_l, w_l, latent_channels)``."""
        h, w, _ = self.image_shape
        shapes = []
        for t, g in enumerate(self.groups_per_scale):
            f = 2 ** (self.num_scales - t)
            shapes += [(h // f, w // f, self.latent_channels)] * g
        return shapes

    def setup(self):
        h, w, c = (int(s) for s in self.image_shape)
        if self.likelihood not in LIKELIHOODS:
            raise _error("NVAE", "likelihood", f"one of {LIKELIHOODS}", repr(self.likelihood))
        if not self.groups_per_scale or any(int(g) < 1 for g in self.groups_per_scale):
            raise _error("NVAE", "groups_per_scale", "a non-empty tuple of integers >= 1", tuple(self.groups_per_scale))
        factor = 2**self.num_scales
        if h % factor or w % factor:
            raise _error("NVAE", "image_shape", f"H and W divisible by 2**len(groups_per_scale) = {factor}",
                         tuple(self.image_shape))  # fmt: skip
        enc_cell = nn.remat(EncoderCell) if self.remat else EncoderCell
        gen_cell = nn.remat(GenerativeCell) if self.remat else GenerativeCell
        kw = dict(train=self.train, bn_momentum=self.bn_momentum)
        gkw = dict(expand=self.expand, **kw)
        C, S, G = self.channels, self.num_scales, self.groups_per_scale
        width = lambda t: C * 2 ** (S - t)  # noqa: E731  decoder channels at top-down scale t

        self.stem = nn.Conv(C, (3, 3), padding="SAME")
        self.pre = [enc_cell(C, **kw) for _ in range(self.pre_cells)]
        # bottom-up, r = 0 is the largest latent scale (top-down scale S-1-r)
        self.down = [enc_cell(C * 2 ** (r + 1), stride=2, **kw) for r in range(S)]
        self.enc_cells = [
            [enc_cell(C * 2 ** (r + 1), **kw) for _ in range(G[S - 1 - r] * self.cells_per_group)] for r in range(S)
        ]
        self.h0 = self.param("h0", nn.initializers.normal(1.0), (h // factor, w // factor, width(0)))
        # zero-initialised heads: every group starts at q = p = N(0, I) (KL 0); a random
        # head puts log-scales near the ±5 clamp, where one group's KL is ~1e4 nats
        head = lambda f, k: nn.Conv(f, (k, k), padding="SAME", kernel_init=nn.initializers.zeros)  # noqa: E731
        self.enc0 = nn.Conv(width(0), (1, 1))
        dec_cells, prior, posterior, enc_comb, dec_comb = [], [], [], [], []
        for t, g in enumerate(G):
            for _ in range(g):
                first = not dec_comb
                dec_cells.append([] if first else [gen_cell(width(t), **gkw) for _ in range(self.cells_per_group)])
                prior.append(None if first else head(2 * self.latent_channels, 1))
                posterior.append(head(2 * self.latent_channels, 3))
                enc_comb.append(None if first else nn.Conv(width(t), (1, 1)))
                dec_comb.append(nn.Conv(width(t), (1, 1)))
        self.dec_cells, self.prior_heads, self.posterior_heads = dec_cells, prior, posterior
        self.enc_combiners, self.dec_combiners = enc_comb, dec_comb
        self.up = [gen_cell(width(t + 1), upsample=True, **gkw) for t in range(S)]  # the last: back to full size
        self.post = [gen_cell(C, **gkw) for _ in range(self.post_cells)]
        out_channels = c if self.likelihood == "bernoulli" else 2 * c
        # zero-initialised: the first Gaussian decoder is N(0, 1) per pixel, not a random
        # log-scale near -5 that makes the first losses ~1e9 nats
        self.out = nn.Conv(out_channels, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros)

    # ---- passes ---------------------------------------------------------------------
    def _check_images(self, x):
        if jnp.ndim(x) != 4 or tuple(jnp.shape(x)[1:]) != tuple(self.image_shape):
            raise _error("NVAE", "x", f"images [B, {', '.join(map(str, self.image_shape))}]",
                         f"shape {tuple(jnp.shape(x))}")  # fmt: skip
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise _error("NVAE", "x", "floating point (binarised or dequantised pixels)", f"dtype {jnp.result_type(x)}")

    def _bottom_up(self, x):
        """Encoder features per group, top-down order (the first group's is the deepest)."""
        h = self.stem(2.0 * x - 1.0)
        for cell in self.pre:
            h = cell(h)
        feats = []
        for r in range(self.num_scales):
            h = self.down[r](h)
            cells = self.enc_cells[r]
            for g in range(self.groups_per_scale[self.num_scales - 1 - r]):
                for cell in cells[g * self.cells_per_group : (g + 1) * self.cells_per_group]:
                    h = cell(h)
                feats.append(h)
        return feats[::-1]

    def _prior(self, l, h):
        """Raw ``(m, s)`` of ``p(z_l | z_<l)`` (see :func:`normal_params`); zeros for the first group."""
        if l == 0:
            shape = (h.shape[0], *self.latent_shapes()[0])
            return jnp.zeros(shape, h.dtype), jnp.zeros(shape, h.dtype)
        return tuple(jnp.split(self.prior_heads[l](nn.elu(h)), 2, axis=-1))

    def _top_down(self, batch: int, choose_z):
        """Runs the decoder; ``choose_z(l, h, prior) -> (z, extras)``. Returns ``(output, [extras])``."""
        h = jnp.broadcast_to(self.h0, (batch, *self.h0.shape))
        extras, l = [], 0
        for t, g in enumerate(self.groups_per_scale):
            for _ in range(g):
                for cell in self.dec_cells[l]:
                    h = cell(h)
                prior = self._prior(l, h)
                z, extra = choose_z(l, h, prior)
                extras.append(extra)
                h = self.dec_combiners[l](jnp.concatenate([h, z], axis=-1))
                l += 1
            h = self.up[t](h)
        for cell in self.post:
            h = cell(h)
        return self.out(nn.elu(h)), extras

    def __call__(self, x, key):
        """One posterior pass: ``(output [B, H, W, C or 2C], kl [B, L], log_ratio [B])``.

        ``kl[:, l]`` is the analytic ``KL(q(z_l | z_<l, x) ‖ p(z_l | z_<l))`` at the sampled
        ``z_<l``; ``log_ratio = Σ_l [log p(z_l | z_<l) − log q(z_l | z_<l, x)]`` at the
        sampled ``z`` (the importance weight's latent part, for the IWAE bound).
        """
        self._check_images(x)
        feats = self._bottom_up(x)

        def choose_z(l, h, prior):
            raw_mean, raw_log_scale = prior
            p_mean, p_log_scale = normal_params(raw_mean, raw_log_scale)
            q_in = nn.elu(self.enc0(nn.elu(feats[0]))) if l == 0 else feats[l] + self.enc_combiners[l](h)
            d_mean, d_log_scale = jnp.split(self.posterior_heads[l](q_in), 2, axis=-1)
            q_mean, q_log_scale = normal_params(raw_mean + d_mean, raw_log_scale + d_log_scale)
            eps = jax.random.normal(jax.random.fold_in(key, l), q_mean.shape, q_mean.dtype)
            z = q_mean + jnp.exp(q_log_scale) * eps
            kl = residual_gaussian_kl(q_mean - p_mean, q_log_scale - p_log_scale, p_log_scale)
            log_ratio = normal_log_density(z, p_mean, p_log_scale) - normal_log_density(z, q_mean, q_log_scale)
            return z, (kl, log_ratio)

        out, extras = self._top_down(x.shape[0], choose_z)
        kl = jnp.stack([e[0] for e in extras], axis=-1)
        log_ratio = sum(e[1] for e in extras)
        return out, kl, log_ratio

    def sample_output(self, key, num: int, temperature: float = 1.0):
        """Decoder output for ``z ~ p(z)`` with every group's scale times ``temperature``."""

        def choose_z(l, h, prior):
            mean, log_scale = normal_params(*prior)
            eps = jax.random.normal(jax.random.fold_in(key, l), mean.shape, mean.dtype)
            return mean + temperature * jnp.exp(log_scale) * eps, None

        return self._top_down(num, choose_z)[0]

    # ---- likelihood -----------------------------------------------------------------
    def log_likelihood(self, out, x):
        """``log p(x | z)`` ``[B]`` from the decoder output."""
        if self.likelihood == "bernoulli":
            return losses.bernoulli_log_likelihood(out, x)
        c = out.shape[-1] // 2
        return losses.gaussian_log_likelihood(out[..., :c], x, soft_clamp(out[..., c:], self.log_scale_bound))

    def mean_image(self, out):
        """Decoder output -> the expected image in [0, 1]."""
        if self.likelihood == "bernoulli":
            return jax.nn.sigmoid(out)
        return jnp.clip(out[..., : out.shape[-1] // 2], 0.0, 1.0)

    def terms(self, x, key):
        """``(log p(x|z) [B], kl [B, L], log_ratio [B])`` of one posterior sample."""
        out, kl, log_ratio = self(x, key)
        return self.log_likelihood(out, x), kl, log_ratio

    def sample(self, key, num: int, temperature: float = 1.0):
        """``num`` expected images in [0, 1] from the prior at ``temperature``."""
        return self.mean_image(self.sample_output(key, num, temperature))

    def reconstruct(self, x, key):
        """Expected images in [0, 1] decoded from one posterior sample."""
        return self.mean_image(self(x, key)[0])


def spectral_matrices(params) -> dict[str, jax.Array]:
    """Every convolution kernel ``[kh, kw, C_in/g, C_out]`` as the matrix ``[C_out, kh·kw·C_in/g]``
    NVlabs regularises, keyed by its path (``"a/b/kernel"``)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(p, "key", str(p)) for p in path]
        if names[-1] == "kernel" and jnp.ndim(leaf) == 4:
            flat["/".join(names)] = jnp.reshape(leaf, (-1, leaf.shape[-1])).T
    return flat


def init_power_vectors(params, key, num_iters: int = 0) -> dict[str, jax.Array]:
    """Unit vectors ``u [C_out]`` per convolution for :func:`spectral_regulariser`: random,
    then ``num_iters`` power iterations on ``params`` (NVlabs: 10× the per-step count on
    first use)."""
    mats = spectral_matrices(params)
    out = {}
    for i, (name, w) in enumerate(sorted(mats.items())):
        u = jax.random.normal(jax.random.fold_in(key, i), (w.shape[0],))
        out[name] = u / jnp.linalg.norm(u)
    if num_iters > 0:
        out = spectral_regulariser(params, out, num_iters)[1]
    return out


def _normalize(v, fallback):
    """``v/‖v‖``, or ``fallback`` where ``v`` is (numerically) zero: a zero-initialised kernel
    must not turn its power vector into 0 for good."""
    norm = jnp.linalg.norm(v)
    return jnp.where(norm > 1e-12, v / jnp.maximum(norm, 1e-12), fallback)


def spectral_regulariser(params, power_vectors, num_iters: int = 1):
    """NVAE's spectral regulariser ``Σ_conv σ_max(W)``, by power iteration.

    Each convolution's ``u`` (the state, ``[C_out]``) takes ``num_iters`` steps
    ``v = Wᵀu/‖Wᵀu‖, u = Wv/‖Wv‖`` without gradient; ``σ = uᵀWv`` then has gradient
    ``u vᵀ`` with respect to ``W``, that of the largest singular value once converged.

    Returns:
      ``(scalar sum of σ, new power vectors)``.
    """
    mats = spectral_matrices(params)
    if set(mats) != set(power_vectors):
        missing = sorted(set(mats) ^ set(power_vectors))[:3]
        raise _error("spectral_regulariser", "power_vectors", "one vector per convolution kernel of `params`",
                     f"a different set of names (e.g. {missing})")  # fmt: skip
    total, new = 0.0, {}
    for name, w in mats.items():
        u = power_vectors[name]
        wd = jax.lax.stop_gradient(w)
        v0 = jnp.full((w.shape[1],), 1.0 / math.sqrt(w.shape[1]), w.dtype)

        def step(_, u, wd=wd, v0=v0):
            return _normalize(wd @ _normalize(wd.T @ u, v0), u)

        u = jax.lax.fori_loop(0, num_iters, step, u)  # a loop, not num_iters copies, in the compiled graph
        v = _normalize(wd.T @ u, v0)
        total = total + u @ w @ v
        new[name] = u
    return total, new


def batchnorm_scale_regulariser(params):
    """NVlabs's ``batchnorm_loss``: ``Σ_BN max_c |γ_c|`` over every BatchNorm scale."""
    total = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(p, "key", str(p)) for p in path]
        if names[-1] == "scale" and any(n.startswith("BatchNorm") for n in names[:-1]):
            total = total + jnp.max(jnp.abs(leaf))
    return total

