"""Whole flows: NICE (post 5776) and the multi-scale RealNVP / Glow family (post 5807).

A model is a bijector from an image ``x[B, H, W, C]`` to a flat latent ``z[B, D]`` with a
standard normal prior, so ``log p(x) = log N(z; 0, I) + log_det``. The multi-scale
priors (Glow's split2d, the author's CondActnorm, ``learntop``) are folded into the
bijector as conditional standardisations, which makes ``sample(key, n, temperature)``
Glow's temperature sampling: every latent is ``mean + std·T·eps``.

Model-level methods, via ``model.apply(variables, ..., method=...)``:
``log_prob(x) -> [B]`` (nats, continuous density of the dequantised input),
``sample(key, n, temperature) -> [n, H, W, C]``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels import flows as F
from zoo.flows.layers import ActNorm, Bijector, FlowStep, LearnedPrior, SplitPrior, scan_steps

REMAT_MODES = ("auto", "on", "off")
PRIORS = ("split2d", "per_channel")  # Glow's conditional split priors / normflows' per-channel ones


def _check_images(owner, x, image_shape):
    if jnp.ndim(x) != 4 or tuple(jnp.shape(x)[1:]) != tuple(image_shape):
        raise ValueError(
            f"{owner}: `x` must have shape [B, H, W, C] = [B, {', '.join(map(str, image_shape))}]; "
            f"got shape {tuple(jnp.shape(x))}"
        )


def _check_latent(owner, z, num_dims):
    if jnp.ndim(z) != 2 or jnp.shape(z)[1] != num_dims:
        raise ValueError(f"{owner}: `z` must have shape [B, D] = [B, {num_dims}]; got shape {tuple(jnp.shape(z))}")


class FlowModel(Bijector):
    """Base of the image flows: ``__call__(x) -> (z[B, D], log_det[B])`` and back."""

    image_shape: tuple[int, int, int] = (28, 28, 1)

    @property
    def num_dims(self) -> int:
        return math.prod(self.image_shape)

    def log_prob(self, x):
        """``log p(x)`` in nats per example, ``[B]``."""
        z, log_det = self(x)
        return F.standard_normal_log_prob(z) + log_det

    def sample(self, key, n: int, temperature: float = 1.0):
        """``n`` images ``[n, H, W, C]`` from latents ``T·N(0, I)``."""
        z = temperature * jax.random.normal(key, (n, self.num_dims))
        x, _ = self(z, inverse=True)
        return x


class MultiScaleFlow(FlowModel):
    """RealNVP / Glow: ``levels`` × (squeeze → ``depth`` flow steps → split), learned priors.

    Per level the image is squeezed (C → 4C at half the side), ``depth`` steps of
    actnorm → channel mixing → coupling are applied (with ``nn.scan`` when ``scan``; ``remat``
    then says whether the backward pass recomputes each step: ``"auto"`` on the CPU backend
    only, where it was measured faster, ``"on"`` or ``"off"``), and,
    except at the last level, the second half of the channels leaves as a latent whose
    prior is a Gaussian conditioned on the kept half (:class:`SplitPrior`).

    Configurations (see ``zoo/flows/configs``):

    * Glow: ``actnorm="data"``, ``permutation="lu"``, ``coupling="affine"``.
    * RealNVP (channel-wise, no checkerboard, as post 5807 describes it; actnorm stands in
      for its batch norm): ``actnorm="data"``, ``permutation="reverse"``, ``coupling="affine"``.
    * The author's Keras Glow: ``actnorm="zero"``, ``permutation="random"``,
      ``coupling="additive"``, ``final_actnorm=True``, ``learn_top=False``.
    """

    levels: int = 2
    depth: int = 8
    width: int = 128
    actnorm: str = "data"
    permutation: str = "lu"
    coupling: str = "affine"
    learn_top: bool = True
    final_actnorm: bool = False
    scan: bool = True
    remat: str = "auto"
    coupling_init: str = "lecun"
    logscale_factor: float = 0.0
    priors: str = "split2d"

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Shapes of the per-level latents, in the order they appear in ``z``."""
        h, w, c = self.image_shape
        shapes = []
        for level in range(self.levels):
            h, w, c = h // 2, w // 2, 4 * c
            if level < self.levels - 1:
                c //= 2
                shapes.append((h, w, c))
        shapes.append((h, w, c))
        return shapes

    def setup(self):
        h, w, _ = self.image_shape
        if self.levels < 1:
            raise ValueError(f"MultiScaleFlow: `levels` must be >= 1; got {self.levels}")
        side = 2**self.levels
        if h % side or w % side:
            raise ValueError(
                f"MultiScaleFlow: `image_shape` {tuple(self.image_shape)} needs H and W divisible by "
                f"2^levels = {side} (levels = {self.levels})"
            )
        if self.depth < 1:
            raise ValueError(f"MultiScaleFlow: `depth` must be >= 1; got {self.depth}")
        if self.priors not in PRIORS:
            raise ValueError(f"MultiScaleFlow: `priors` must be one of {PRIORS}; got {self.priors!r}")
        if self.remat not in REMAT_MODES:
            raise ValueError(f"MultiScaleFlow: `remat` must be one of {REMAT_MODES}; got {self.remat!r}")

        def make_step():
            return FlowStep(
                self.width, self.actnorm, self.permutation, self.coupling, self.coupling_init, self.logscale_factor
            )

        if self.scan:
            self.steps = [make_step() for _ in range(self.levels)]
        else:
            self.steps = [[make_step() for _ in range(self.depth)] for _ in range(self.levels)]
        conditional = self.priors == "split2d"
        self.split_priors = [SplitPrior(self.logscale_factor, conditional) for _ in range(self.levels - 1)]
        if self.final_actnorm:
            self.final = ActNorm(self.actnorm if self.actnorm != "none" else "zero")
        if self.learn_top:
            self.top = LearnedPrior(self.logscale_factor, per_channel=self.priors == "per_channel")

    def _level(self, level, h, inverse):
        if self.scan:
            remat = self.remat == "on" or (self.remat == "auto" and jax.default_backend() == "cpu")
            return scan_steps(self.steps[level], h, depth=self.depth, inverse=inverse, remat=remat)
        log_det = jnp.zeros(h.shape[:1], jnp.float32)
        for step in reversed(self.steps[level]) if inverse else self.steps[level]:
            h, d = step(h, inverse=inverse)
            log_det = log_det + d
        return h, log_det

    def __call__(self, x, inverse=False):
        return self._inverse(x) if inverse else self._forward(x)

    def _forward(self, x):
        _check_images("MultiScaleFlow", x, self.image_shape)
        log_det = jnp.zeros(x.shape[:1], jnp.float32)
        latents, h = [], x
        for level in range(self.levels):
            h, d = self._level(level, F.squeeze(h), inverse=False)
            log_det += d
            if level < self.levels - 1:
                h, z = F.split_channels(h)
                eps, d = self.split_priors[level](z, h)
                latents.append(eps)
                log_det += d
        if self.final_actnorm:
            h, d = self.final(h)
            log_det += d
        if self.learn_top:
            h, d = self.top(h)
            log_det += d
        latents.append(h)
        return jnp.concatenate([e.reshape(e.shape[0], -1) for e in latents], axis=1), log_det

    def _inverse(self, z):
        _check_latent("MultiScaleFlow", z, self.num_dims)
        b = z.shape[0]
        shapes = self.latent_shapes()
        sizes = [math.prod(s) for s in shapes]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        latents = [z[:, o : o + n].reshape((b,) + s) for o, n, s in zip(offsets, sizes, shapes)]
        log_det = jnp.zeros((b,), jnp.float32)
        h = latents[-1]
        if self.learn_top:
            h, d = self.top(h, inverse=True)
            log_det += d
        if self.final_actnorm:
            h, d = self.final(h, inverse=True)
            log_det += d
        for level in reversed(range(self.levels)):
            if level < self.levels - 1:
                z_level, d = self.split_priors[level](latents[level], h, inverse=True)
                log_det += d
                h = jnp.concatenate([h, z_level], axis=-1)
            h, d = self._level(level, h, inverse=True)
            log_det += d
            h = F.unsqueeze(h)
        return h, log_det


class NiceMLP(nn.Module):
    """NICE's coupling function m(·): ``num_hidden_layers`` × Dense(hidden) + ReLU, then a
    Dense output, with ReLU on the output too in the author's version (``output_relu``)."""

    hidden: int
    num_hidden_layers: int
    out_features: int
    output_relu: bool = True

    @nn.compact
    def __call__(self, x):
        for _ in range(self.num_hidden_layers):
            x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.Dense(self.out_features)(x)
        return nn.relu(x) if self.output_relu else x


def _interleave(even, odd):
    b, n = even.shape[0], even.shape[1] + odd.shape[1]
    return jnp.zeros((b, n), even.dtype).at[:, 0::2].set(even).at[:, 1::2].set(odd)


class NICE(FlowModel):
    """NICE as in post 5776: ``num_couplings`` additive couplings on the flattened image;
    before each the order is reversed, then even/odd positions are split; a final diagonal
    scale ``exp(s)`` (log-det ``Σ s``).

    ``sign=-1`` is the author's encoding direction ``x2 ← x2 − m(x1)`` (generation adds
    ``m``, biased positive by the ReLU output); ``sign=+1`` is the paper's.
    """

    num_couplings: int = 4
    hidden: int = 1000
    num_hidden_layers: int = 5
    output_relu: bool = True
    sign: float = -1.0

    def setup(self):
        d = self.num_dims
        self.nets = [
            NiceMLP(self.hidden, self.num_hidden_layers, d // 2, self.output_relu) for _ in range(self.num_couplings)
        ]
        # Keras' glorot_normal on a [1, D] weight: std sqrt(2 / (1 + D)).
        self.log_scale = self.param("log_scale", nn.initializers.normal(math.sqrt(2.0 / (1 + d))), (d,))

    def __call__(self, x, inverse=False):
        if inverse:
            _check_latent("NICE", x, self.num_dims)
            v = x * jnp.exp(-self.log_scale)
            for net in reversed(self.nets):
                x1, y2 = v[:, 0::2], v[:, 1::2]
                x2, _ = F.additive_coupling(y2, net(x1), sign=self.sign, inverse=True)
                v = _interleave(x1, x2)[:, ::-1]
            log_det = -jnp.sum(self.log_scale)
            return v.reshape((x.shape[0],) + tuple(self.image_shape)), jnp.broadcast_to(log_det, x.shape[:1])
        _check_images("NICE", x, self.image_shape)
        v = x.reshape(x.shape[0], -1)
        for net in self.nets:
            v = v[:, ::-1]
            x1, x2 = v[:, 0::2], v[:, 1::2]
            y2, _ = F.additive_coupling(x2, net(x1), sign=self.sign)
            v = _interleave(x1, y2)
        return v * jnp.exp(self.log_scale), jnp.broadcast_to(jnp.sum(self.log_scale), x.shape[:1])
