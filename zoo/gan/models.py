"""Generators and discriminators: the author's MLP GAN (post 20) and DCGAN (28×28, 64×64).

Images live on ``[−1, 1]``, NHWC. Every module takes ``train``; the discriminators return
raw outputs ``[B]`` (larger = more real; see :mod:`zoo.gan.losses` for the sign).

Discriminator normalisation (``norm``):

* ``"none"``: plain (the WGAN-GP paper's critic; required by gradient penalties, which
  assume each example's output depends on that example alone);
* ``"batch"``: BatchNorm after every convolution but the first (DCGAN; post 33);
* ``"spectral"``: ``flax.linen.SpectralNorm`` on every kernel, one power iteration per
  train-mode call with a persistent ``u`` (Miyato et al.): normalisation *inside* the
  forward pass. The author's other semantics, a post-update weight constraint, is
  :func:`zoo.gan.train.spectral_constraint`.

Convolutions use :class:`zoo.core.layers.Conv` / :class:`~zoo.core.layers.ConvTranspose`
(one matmul each on CPU) with PyTorch's ``k = 4, s = 2, p = 1`` geometry, so a plain
PyTorch DCGAN (``benchmarks/peers/gan_torch.py``) has the same shapes and parameter count.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.core.layers import Conv, ConvTranspose

DCGAN_INIT = nn.initializers.normal(0.02)  # N(0, 0.02) (Radford et al.; post 33)
NORMS = ("none", "batch", "spectral")


def _uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def _batch_norm(train: bool, name: str):
    # momentum 0.9 = PyTorch's 0.1; the running averages only matter for eval-mode sampling.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class MLPGenerator(nn.Module):
    """The author's 10-32-128-784 ReLU generator (post 20) with his ``U(−0.05, 0.05)``
    kernels (zero biases, TF1's default) and sigmoid output: pixels on ``[0, 1]``
    (``unit_output``, his setting), or ``2σ(h) − 1`` on ``[−1, 1]``.

    ``z [B, Z]`` -> ``[B, *image_shape]``.
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    hidden: tuple[int, ...] = (32, 128)
    unit_output: bool = False

    @nn.compact
    def __call__(self, z, train: bool = True):
        h = z
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, kernel_init=_uniform(0.05), name=f"Dense_{i}")(h))
        size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        h = nn.Dense(size, kernel_init=_uniform(0.05), name="Dense_out")(h)
        x = nn.sigmoid(h) if self.unit_output else 2 * nn.sigmoid(h) - 1
        return x.reshape(z.shape[0], *self.image_shape)


class MLPDiscriminator(nn.Module):
    """The author's 784-128-32-1 ReLU critic (post 20). ``x [B, H, W, C]`` -> ``[B]``
    (``[B, outputs]`` when ``outputs > 1``: the energy view's encoder)."""

    hidden: tuple[int, ...] = (128, 32)
    norm: str = "none"
    outputs: int = 1

    @nn.compact
    def __call__(self, x, train: bool = True):
        h = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            h = nn.relu(_dense(width, self.norm, train, f"Dense_{i}", _uniform(0.05))(h))
        out = _dense(self.outputs, self.norm, train, "Dense_out", _uniform(0.05))(h)
        return out[:, 0] if self.outputs == 1 else out


def _dense(features, norm, train, name, init=DCGAN_INIT, use_bias=True):
    dense = nn.Dense(features, use_bias=use_bias, kernel_init=init, bias_init=nn.initializers.zeros, name=name)
    if norm == "spectral":
        return lambda h: nn.SpectralNorm(dense, n_steps=1, name=f"{name}_sn")(h, update_stats=train)
    return dense


def _conv(features, norm, train, name):
    conv = Conv(features, 4, stride=2, padding=1, kernel_init=DCGAN_INIT, name=name)
    if norm == "spectral":
        return lambda h: nn.SpectralNorm(conv, n_steps=1, name=f"{name}_sn")(h, update_stats=train)
    return conv


def _dcgan_levels(image_size: int) -> int:
    if image_size not in (28, 64):
        raise ValueError(f"DCGAN: `image_size` must be 28 or 64; got {image_size}")
    return 2 if image_size == 28 else 4


class DCGANGenerator(nn.Module):
    """DCGAN generator: Dense → ``s₀×s₀×(width·2^(L−1))`` → BN → ReLU → L transposed convs
    (k 4, s 2, p 1) halving the width, BN + ReLU between, tanh out.

    28×28: 7×7×128 → 14×14×64 → 28×28×C (L = 2); 64×64: 4×4×512 → … → 64×64×C (L = 4).
    ``z [B, Z]`` -> ``[B, S, S, C]``.
    """

    image_size: int = 28
    channels: int = 1
    width: int = 64

    @nn.compact
    def __call__(self, z, train: bool = True):
        levels = _dcgan_levels(self.image_size)
        side = self.image_size // 2**levels
        features = self.width * 2 ** (levels - 1)
        h = nn.Dense(side * side * features, use_bias=False, kernel_init=DCGAN_INIT, name="Dense_0")(z)
        h = nn.relu(_batch_norm(train, "BatchNorm_0")(h.reshape(z.shape[0], side, side, features)))
        for i in range(1, levels):
            features //= 2
            h = ConvTranspose(features, 4, 2, 1, use_bias=False, kernel_init=DCGAN_INIT, name=f"ConvTranspose_{i}")(h)
            h = nn.relu(_batch_norm(train, f"BatchNorm_{i}")(h))
        h = ConvTranspose(self.channels, 4, 2, 1, kernel_init=DCGAN_INIT, name="ConvTranspose_out")(h)
        return jnp.tanh(h)


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: L convs (k 4, s 2, p 1; ``width · 2^i`` features) with
    LeakyReLU 0.2, ``norm`` after every conv but the first, then Dense 1.

    ``x [B, S, S, C]`` -> ``[B]`` (``[B, outputs]`` when ``outputs > 1``: the encoder).
    """

    width: int = 64
    norm: str = "none"
    outputs: int = 1

    @nn.compact
    def __call__(self, x, train: bool = True):
        levels = _dcgan_levels(x.shape[1])
        h = x
        for i in range(levels):
            h = _conv(self.width * 2**i, self.norm, train, f"Conv_{i}")(h)
            if i > 0 and self.norm == "batch":
                h = _batch_norm(train, f"BatchNorm_{i}")(h)
            h = nn.leaky_relu(h, 0.2)
        out = _dense(self.outputs, self.norm, train, "Dense_out")(h.reshape(x.shape[0], -1))
        return out[:, 0] if self.outputs == 1 else out


def make_models(model_config) -> tuple[nn.Module, nn.Module]:
    """``(generator, discriminator)`` for ``config.model`` (``arch`` = ``"mlp"`` | ``"dcgan"``)."""
    m = model_config
    if m.d_norm not in NORMS:
        raise ValueError(f"model.d_norm must be one of {NORMS}; got {m.d_norm!r}")
    shape = (m.image_size, m.image_size, m.channels)
    if m.arch == "mlp":
        if m.d_norm == "batch":
            raise ValueError("model.d_norm: the MLP discriminator supports d_norm 'none' or 'spectral'; got 'batch'")
        return MLPGenerator(shape, unit_output=m.pixel_range == "unit"), MLPDiscriminator(norm=m.d_norm)
    if m.arch == "dcgan":
        if m.pixel_range != "symmetric":
            raise ValueError(f"model.pixel_range: the DCGAN generator's tanh output needs 'symmetric'; got {m.pixel_range!r}")
        _dcgan_levels(m.image_size)
        return (
            DCGANGenerator(m.image_size, m.channels, m.g_width),
            DCGANDiscriminator(m.d_width, m.d_norm),
        )
    raise ValueError(f"model.arch must be 'mlp' or 'dcgan'; got {m.arch!r}")


def make_encoder(model_config) -> nn.Module:
    """The energy view's encoder ``E: x -> z [B, Z]`` (post 32): the discriminator's
    architecture without normalisation, ``z_dim`` outputs."""
    m = model_config
    if m.arch == "mlp":
        return MLPDiscriminator(outputs=m.z_dim)
    return DCGANDiscriminator(m.d_width, "none", outputs=m.z_dim)
