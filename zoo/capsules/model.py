"""Capsule networks as Flax Linen modules (pure functions of params and images).

* :class:`CapsNet`: Sabour, Frosst, Hinton 2017 (conv 256 9×9 → 32×8D primary capsules →
  10×16D class capsules, 3 routing iterations, reconstruction decoder).
* :class:`SuCapsNet` and :class:`CNNBaseline`: the author's pair from post 4819 (the same
  small conv backbone; shared-weight capsules over its feature map vs pooling + dense).
* :class:`EMCapsNet`: matrix capsules with EM routing (Hinton, Sabour, Frosst 2018), small.

Images are ``[B, H, W, C]`` floats in [0, 1]. Class outputs are "probabilities" in [0, 1]
(capsule lengths, sigmoid outputs or EM activations), so all models share the losses and
the two-digit evaluation.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels import routing
from zoo.core.layers import ValidConv


class CapsuleLayer(nn.Module):
    """Vector capsules in, vector capsules out: votes by one einsum, then dynamic routing.

    ``shared=True`` is post 4819's form (one matrix per output capsule, shared over all
    input capsules, so any number of them works); ``shared=False`` is Sabour et al.'s
    (a matrix per (input, output) pair; needs a fixed number of input capsules).
    """

    num_capsules: int
    capsule_dim: int
    num_iters: int = 3
    variant: str = "sabour"
    shared: bool = False
    chunk_size: int = 32  # full weights only: input capsules per routing-scan step (capsule_routing)

    @nn.compact
    def __call__(self, u, return_coupling=False):  # u: [B, I, Din]
        _, n_in, din = u.shape
        if self.shared:  # Keras glorot over a 1-wide conv1d kernel (Din -> J*Dout)
            init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2))
            shape = (din, self.num_capsules, self.capsule_dim)
        else:  # small: the class capsules start short (lengths ~0.1), not saturated at ~1
            init = nn.initializers.normal(0.01)
            shape = (n_in, din, self.num_capsules, self.capsule_dim)
        weights = self.param("weights", init, shape)
        route = dict(num_iters=self.num_iters, variant=self.variant, return_coupling=return_coupling)
        if not self.shared:  # votes recomputed per chunk of input capsules, never all held
            return routing.capsule_routing(u, weights, chunk_size=self.chunk_size, **route)
        return routing.dynamic_routing(routing.capsule_votes(u, weights), **route)  # u_hat [B, I, J, Dout]


def capsule_lengths(v, eps=1e-7):
    """``[B, J, D]`` -> ``[B, J]`` lengths, with eps so the gradient is finite at 0."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=-1) + eps)


class PrimaryCapsules(nn.Module):
    """A conv whose channels are cut into ``num_types`` capsules of ``capsule_dim``, squashed."""

    num_types: int = 32
    capsule_dim: int = 8
    kernel_size: int = 9
    stride: int = 2
    bias_grad_as_matmul: bool = False  # zoo.core.layers.add_bias

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> [B, H'*W'*num_types, capsule_dim]
        conv = ValidConv(self.num_types * self.capsule_dim, self.kernel_size, self.stride,
                         bias_grad_as_matmul=self.bias_grad_as_matmul, name="Conv_0")  # fmt: skip
        x = conv(x)
        b, h, w, _ = x.shape
        return routing.squash(x.reshape(b, h * w * self.num_types, self.capsule_dim))


class CapsNet(nn.Module):
    """Sabour et al.'s CapsNet. Returns ``(class lengths [B, 10], reconstruction [B, H, W, C])``.

    The decoder sees the class capsules masked to one class: the label when given
    (training), otherwise the longest capsule.

    ``routing_chunk`` and ``bias_grad_as_matmul`` change how the step is computed, not what
    it computes (equal up to float32 rounding): the CPU config sets them with XLA:CPU options
    that keep reductions out of YNNPACK (``configs/capsnet.py``).
    """

    num_classes: int = 10
    conv_features: int = 256
    primary_types: int = 32
    primary_dim: int = 8
    class_dim: int = 16
    num_iters: int = 3
    variant: str = "sabour"
    decoder_features: tuple[int, ...] = (512, 1024)
    routing_chunk: int = 32
    bias_grad_as_matmul: bool = False

    @nn.compact
    def __call__(self, images, labels=None):
        matmul_bias = self.bias_grad_as_matmul
        x = nn.relu(ValidConv(self.conv_features, 9, bias_grad_as_matmul=matmul_bias, name="Conv_0")(images))
        u = PrimaryCapsules(self.primary_types, self.primary_dim, bias_grad_as_matmul=matmul_bias)(x)
        v = CapsuleLayer(
            self.num_classes, self.class_dim, self.num_iters, self.variant, shared=False, chunk_size=self.routing_chunk
        )(u)
        lengths = capsule_lengths(v)
        chosen = jnp.argmax(lengths, axis=-1) if labels is None else labels
        masked = v * jax.nn.one_hot(chosen, self.num_classes, dtype=v.dtype)[..., None]
        h = masked.reshape(masked.shape[0], -1)
        for features in self.decoder_features:
            h = nn.relu(nn.Dense(features)(h))
        pixels = nn.sigmoid(nn.Dense(images[0].size)(h))
        return lengths, pixels.reshape(images.shape)


class SuBackbone(nn.Module):
    """Post 4819's backbone: conv 64, 64 (3×3) → avg-pool 2 → conv 128, 128 (ReLU, valid)."""

    @nn.compact
    def __call__(self, images):
        # Explicit names: the parameter tree is nn.Conv's (Conv_0..Conv_3), so checkpoints
        # do not depend on how the convolution is computed.
        x = images
        for i, features in enumerate((64, 64)):
            x = nn.relu(ValidConv(features, 3, name=f"Conv_{i}")(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        for i, features in enumerate((128, 128), start=2):
            x = nn.relu(ValidConv(features, 3, name=f"Conv_{i}")(x))
        return x


class SuCapsNet(nn.Module):
    """The author's capsule model: the feature map's positions are the input capsules
    (128-D, not squashed), routed by a shared-weight capsule layer to 10×16D; the output is
    each capsule's length. Any image size works (28×28 gives 64 input capsules, 56×28 176).
    """

    num_classes: int = 10
    capsule_dim: int = 16
    num_iters: int = 3
    variant: str = "su"

    @nn.compact
    def __call__(self, images, return_coupling=False):
        x = SuBackbone()(images)
        u = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, positions, 128]
        out = CapsuleLayer(self.num_classes, self.capsule_dim, self.num_iters, self.variant, shared=True)(
            u, return_coupling=return_coupling
        )
        if return_coupling:
            v, coupling = out
            return capsule_lengths(v), coupling
        return capsule_lengths(out)


class CNNBaseline(nn.Module):
    """Post 4819's baseline: the same backbone → global average pool → Dense 128 ReLU →
    Dense 10 sigmoid (independent per-class scores, trained with the same margin loss)."""

    num_classes: int = 10
    hidden: int = 128

    @nn.compact
    def __call__(self, images):
        x = jnp.mean(SuBackbone()(images), axis=(1, 2))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.sigmoid(nn.Dense(self.num_classes)(x))


# --------------------------------------------------------------------------- #
# Matrix capsules with EM routing
# --------------------------------------------------------------------------- #


def _pose_init(key, shape, dtype=jnp.float32):
    """Transforms start near the identity plus noise, so early votes keep the child pose."""
    eye = jnp.eye(4, dtype=dtype)
    return eye + 0.5 * jax.random.normal(key, shape, dtype)


class ConvCapsules(nn.Module):
    """A convolutional matrix-capsule layer: votes from K×K patches, EM routing per output
    position over the D parent types (children of one patch compete for the parents at
    that position)."""

    num_types: int
    kernel_size: int = 3
    stride: int = 1
    num_iters: int = 3
    inverse_temperature: float = 0.01

    @nn.compact
    def __call__(self, poses, activations):  # [B, H, W, C, 4, 4], [B, H, W, C]
        c = poses.shape[3]
        k = self.kernel_size
        weights = self.param("weights", _pose_init, (k, k, c, self.num_types, 4, 4))
        beta_u = self.param("beta_u", nn.initializers.zeros, (self.num_types,))
        beta_a = self.param("beta_a", nn.initializers.zeros, (self.num_types,))
        votes = routing.conv_capsule_votes(poses, weights, stride=self.stride)  # [B, H', W', K*K*C, D, 16]
        b, ho, wo, n_in = votes.shape[:4]
        a_in = routing.extract_patches(activations, k, self.stride).reshape(b, ho, wo, n_in)
        first_mean = routing.conv_capsule_initial_mean(poses, activations, weights, stride=self.stride)
        # the votes' factors: em_routing then sums over children as a scan over offsets (see vote_factors)
        patches = routing.extract_patches(poses, k, self.stride).reshape(b * ho * wo, k * k, c, 4, 4)
        mean, a_out = routing.em_routing(
            votes.reshape(b * ho * wo, n_in, self.num_types, 16),
            a_in.reshape(b * ho * wo, n_in),
            beta_u,
            beta_a,
            num_iters=self.num_iters,
            inverse_temperature=self.inverse_temperature,
            initial_mean=first_mean.reshape(b * ho * wo, self.num_types, 16),
            vote_factors=(patches, weights.reshape(k * k, c, self.num_types, 4, 4)),
        )
        return mean.reshape(b, ho, wo, self.num_types, 4, 4), a_out.reshape(b, ho, wo, self.num_types)


class ClassCapsules(nn.Module):
    """Every position's capsules vote for the class capsules with transforms shared over
    positions; coordinate addition adds each child's scaled (row, column) centre to the
    first two entries of its vote's translation column (paper §4)."""

    num_classes: int
    num_iters: int = 3
    inverse_temperature: float = 0.01

    @nn.compact
    def __call__(self, poses, activations):  # [B, H, W, C, 4, 4], [B, H, W, C]
        b, h, w, c = poses.shape[:4]
        weights = self.param("weights", _pose_init, (c, self.num_classes, 4, 4))
        beta_u = self.param("beta_u", nn.initializers.zeros, (self.num_classes,))
        beta_a = self.param("beta_a", nn.initializers.zeros, (self.num_classes,))
        votes = jnp.einsum("bhwcxy,cjyz->bhwcjxz", poses, weights)  # [B, H, W, C, J, 4, 4]
        rows = (jnp.arange(h, dtype=votes.dtype) + 0.5) / h
        cols = (jnp.arange(w, dtype=votes.dtype) + 0.5) / w
        offset = jnp.zeros((h, w, 4, 4), votes.dtype)
        offset = offset.at[:, :, 0, 3].set(rows[:, None]).at[:, :, 1, 3].set(cols[None, :])
        votes = votes + offset[None, :, :, None, None]
        n_in = h * w * c
        mean, a_out = routing.em_routing(
            votes.reshape(b, n_in, self.num_classes, 16),
            activations.reshape(b, n_in),
            beta_u,
            beta_a,
            num_iters=self.num_iters,
            inverse_temperature=self.inverse_temperature,
        )
        return mean, a_out


class EMCapsNet(nn.Module):
    """Conv 5×5 (A, stride 2) → primary matrix capsules (B types, 1×1) → ConvCaps K=3 s=2 (C)
    → ConvCaps K=3 s=1 (D) → class capsules. Returns class activations ``[B, num_classes]``."""

    num_classes: int = 10
    conv_features: int = 32  # A
    primary_types: int = 8  # B
    caps1_types: int = 16  # C
    caps2_types: int = 16  # D
    num_iters: int = 3
    inverse_temperature: float = 0.01

    @nn.compact
    def __call__(self, images):
        x = nn.relu(ValidConv(self.conv_features, 5, 2)(images))
        b, h, w, _ = x.shape
        poses = nn.Conv(self.primary_types * 16, (1, 1))(x).reshape(b, h, w, self.primary_types, 4, 4)
        activations = nn.sigmoid(nn.Conv(self.primary_types, (1, 1))(x))
        em = dict(num_iters=self.num_iters, inverse_temperature=self.inverse_temperature)
        poses, activations = ConvCapsules(self.caps1_types, 3, 2, **em)(poses, activations)
        poses, activations = ConvCapsules(self.caps2_types, 3, 1, **em)(poses, activations)
        _, class_activations = ClassCapsules(self.num_classes, **em)(poses, activations)
        return class_activations
