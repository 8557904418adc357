"""Plain PyTorch (eager, ``torch.nn``) twins of this zoo's capsule networks, for benchmarks.

They mirror :mod:`zoo.capsules.model` layer for layer and parameter shape for parameter
shape, so that a Flax parameter tree can be copied in (:func:`load_capsnet_params`,
:func:`load_em_capsnet_params`) and the forward passes agree to float32 rounding:

* :class:`CapsNet`: conv 9×9 ReLU → primary capsules (conv 9×9 stride 2, cut into
  ``primary_types`` × ``primary_dim`` capsules, squash) → a vote matrix per (input, output)
  capsule pair, one einsum → 3 iterations of Sabour et al.'s dynamic routing → capsule
  lengths; the decoder (Dense ReLU, …, Dense sigmoid) reads the capsules masked by the label.
* :class:`EMCapsNet`: conv 5×5 stride 2 ReLU → primary matrix capsules (1×1 convs) →
  two convolutional capsule layers and the class capsules (coordinate addition), each with
  EM routing in log space exactly as ``kernels/routing.py::_em_routing``.

Written the way a typical PyTorch port is: NCHW images, ``nn.Conv2d``/``nn.Linear``, the
routing iterations as a Python loop of ``torch.einsum``/``softmax``; no ``torch.compile``.
The convolutions' outputs are permuted to NHWC before being cut into capsules, so a
capsule's entries are the same channels as in the JAX code (which reshapes NHWC arrays).

:func:`train_step_fn` builds the training step the benchmark times: ``zero_grad``,
forward, loss, ``backward``, gradient clipping at global norm 5 (as the zoo's task
optimizer, ``optax.chain(clip_by_global_norm(5), adam)``), Adam ``step``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_TINY = 1e-12  # M-step denominator floor, as kernels/routing.py


# --------------------------------------------------------------------------- #
# Routing
# --------------------------------------------------------------------------- #


def squash(s: torch.Tensor, c: float = 1.0, eps: float = 1e-7, dim: int = -1) -> torch.Tensor:
    """``s · sqrt(‖s‖² + eps) / (c + ‖s‖² + eps)`` (kernels/routing.py's squash)."""
    squared = (s * s).sum(dim, keepdim=True) + eps
    return s * (squared.sqrt() / (c + squared))


def dynamic_routing(u_hat: torch.Tensor, num_iters: int = 3) -> torch.Tensor:
    """Sabour et al.'s routing-by-agreement: ``u_hat [B, I, J, D]`` -> ``v [B, J, D]``."""
    logits = u_hat.new_zeros(u_hat.shape[:3])  # [B, I, J]
    for it in range(num_iters):
        coupling = torch.softmax(logits, dim=2)
        s = torch.einsum("bij,bijd->bjd", coupling, u_hat)
        v = squash(s)
        if it < num_iters - 1:
            logits = logits + torch.einsum("bijd,bjd->bij", u_hat, v)
    return v


def em_routing(
    votes: torch.Tensor,
    a_in: torch.Tensor,
    beta_u: torch.Tensor,
    beta_a: torch.Tensor,
    num_iters: int = 3,
    inverse_temperature: float = 0.01,
    min_var: float = 1e-4,
    normalize_amount: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM routing in log space: ``votes [B, I, J, P]``, ``a_in [B, I]`` -> ``(mean [B, J, P],
    activations [B, J])``; the same M- and E-steps as ``kernels.routing.em_routing``."""
    _, n_in, n_out, p = votes.shape
    amount_scale = n_out / n_in if normalize_amount else 1.0
    resp = votes.new_full(votes.shape[:3], 1.0 / n_out)
    for it in range(num_iters):
        # M-step
        weight = resp * a_in[..., None]  # [B, I, J]
        amount = weight.sum(1)  # [B, J]
        coeff = weight / amount.clamp_min(_TINY)[:, None]
        mean = torch.einsum("bij,bijp->bjp", coeff, votes)
        centred = votes - mean[:, None]
        sq = centred * centred
        var = torch.einsum("bij,bijp->bjp", coeff, sq) + min_var
        log_var = var.log()
        cost = (p * beta_u + 0.5 * log_var.sum(-1)) * (amount * amount_scale)
        logit = inverse_temperature * (beta_a - cost)
        if it == num_iters - 1:
            break
        # E-step: the child-independent terms summed on [B, J], as the JAX kernel does
        mahalanobis = torch.einsum("bijp,bjp->bij", sq, 1.0 / var)
        log_norm = log_var.sum(-1) + p * math.log(2 * math.pi)  # [B, J]
        log_p = -0.5 * (mahalanobis + log_norm[:, None])  # [B, I, J]
        resp = torch.softmax(F.logsigmoid(logit)[:, None, :] + log_p, dim=2)
    return mean, torch.sigmoid(logit)


def extract_patches(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """``x [B, H, W, ...]`` -> ``[B, H', W', K*K, ...]``, entry ``dy*K + dx`` (valid padding)."""
    h, w = x.shape[1], x.shape[2]
    ho, wo = (h - kernel_size) // stride + 1, (w - kernel_size) // stride + 1
    slices = [
        x[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
        for dy in range(kernel_size)
        for dx in range(kernel_size)
    ]
    return torch.stack(slices, dim=3)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------- #
# CapsNet (Sabour et al. 2017)
# --------------------------------------------------------------------------- #


class CapsNet(nn.Module):
    """Images ``[B, C, H, W]`` (+ labels ``[B]``) -> ``(lengths [B, J], reconstruction [B, C, H, W])``."""

    def __init__(
        self,
        num_classes: int = 10,
        conv_features: int = 256,
        primary_types: int = 32,
        primary_dim: int = 8,
        class_dim: int = 16,
        num_iters: int = 3,
        decoder_features: Sequence[int] = (512, 1024),
        image_shape: tuple[int, int, int] = (28, 28, 1),  # H, W, C
    ):
        super().__init__()
        h, w, c = image_shape
        self.num_classes, self.primary_types, self.primary_dim = num_classes, primary_types, primary_dim
        self.num_iters, self.image_shape = num_iters, image_shape
        self.conv1 = nn.Conv2d(c, conv_features, 9)
        self.primary = nn.Conv2d(conv_features, primary_types * primary_dim, 9, stride=2)
        side_h, side_w = ((h - 8) - 9) // 2 + 1, ((w - 8) - 9) // 2 + 1
        n_in = side_h * side_w * primary_types
        self.weights = nn.Parameter(0.01 * torch.randn(n_in, primary_dim, num_classes, class_dim))
        dims = [num_classes * class_dim, *decoder_features]
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], h * w * c)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        x = F.relu(self.conv1(images))
        x = _nhwc(self.primary(x))  # channels last, as the JAX reshape
        u = squash(x.reshape(x.shape[0], -1, self.primary_dim))  # [B, I, Din]
        u_hat = torch.einsum("bid,idje->bije", u, self.weights)
        v = dynamic_routing(u_hat, self.num_iters)  # [B, J, Dout]
        lengths = ((v * v).sum(-1) + 1e-7).sqrt()
        chosen = lengths.argmax(-1) if labels is None else labels
        masked = v * F.one_hot(chosen, self.num_classes).to(v.dtype)[..., None]
        h = masked.flatten(1)
        for layer in self.decoder:
            h = F.relu(layer(h))
        pixels = torch.sigmoid(self.out(h)).reshape(-1, *self.image_shape)  # [B, H, W, C]
        return lengths, pixels.permute(0, 3, 1, 2)


def margin_loss(scores, labels, m_plus=0.9, m_minus=0.1, down_weight=0.5):
    targets = F.one_hot(labels, scores.shape[-1]).to(scores.dtype)
    present = targets * F.relu(m_plus - scores) ** 2
    absent = down_weight * (1 - targets) * F.relu(scores - m_minus) ** 2
    return (present + absent).sum(-1).mean()


def capsnet_loss(model: CapsNet, images, labels, reconstruction_weight: float = 0.0005):
    lengths, recon = model(images, labels)
    recon_err = ((recon - images) ** 2).sum((1, 2, 3)).mean()
    return margin_loss(lengths, labels) + reconstruction_weight * recon_err


# --------------------------------------------------------------------------- #
# Matrix capsules with EM routing
# --------------------------------------------------------------------------- #


def _pose_init(*shape):
    return torch.eye(4) + 0.5 * torch.randn(*shape, 4, 4)


class ConvCapsules(nn.Module):
    """Poses ``[B, H, W, C, 4, 4]``, activations ``[B, H, W, C]`` -> the same at ``[H', W', D]``."""

    def __init__(self, in_types, num_types, kernel_size=3, stride=1, num_iters=3, inverse_temperature=0.01):
        super().__init__()
        self.k, self.stride, self.num_types = kernel_size, stride, num_types
        self.num_iters, self.inverse_temperature = num_iters, inverse_temperature
        self.weights = nn.Parameter(_pose_init(kernel_size, kernel_size, in_types, num_types))
        self.beta_u = nn.Parameter(torch.zeros(num_types))
        self.beta_a = nn.Parameter(torch.zeros(num_types))

    def forward(self, poses, activations):
        k, c, d = self.k, poses.shape[3], self.num_types
        patches = extract_patches(poses, k, self.stride)  # [B, H', W', K*K, C, 4, 4]
        votes = torch.einsum("bhwkcxy,kcdyz->bhwkcdxz", patches, self.weights.reshape(k * k, c, d, 4, 4))
        b, ho, wo = votes.shape[:3]
        n_in = k * k * c
        a_in = extract_patches(activations, k, self.stride).reshape(b * ho * wo, n_in)
        mean, a_out = em_routing(
            votes.reshape(b * ho * wo, n_in, d, 16), a_in, self.beta_u, self.beta_a,
            self.num_iters, self.inverse_temperature,
        )  # fmt: skip
        return mean.reshape(b, ho, wo, d, 4, 4), a_out.reshape(b, ho, wo, d)


class ClassCapsules(nn.Module):
    """Transforms shared over positions, coordinate addition, EM routing to the classes."""

    def __init__(self, in_types, num_classes, num_iters=3, inverse_temperature=0.01):
        super().__init__()
        self.num_classes, self.num_iters, self.inverse_temperature = num_classes, num_iters, inverse_temperature
        self.weights = nn.Parameter(_pose_init(in_types, num_classes))
        self.beta_u = nn.Parameter(torch.zeros(num_classes))
        self.beta_a = nn.Parameter(torch.zeros(num_classes))

    def forward(self, poses, activations):
        b, h, w, c = poses.shape[:4]
        votes = torch.einsum("bhwcxy,cjyz->bhwcjxz", poses, self.weights)
        offset = votes.new_zeros(h, w, 4, 4)
        offset[:, :, 0, 3] = ((torch.arange(h, dtype=votes.dtype) + 0.5) / h)[:, None]
        offset[:, :, 1, 3] = ((torch.arange(w, dtype=votes.dtype) + 0.5) / w)[None, :]
        votes = votes + offset[None, :, :, None, None]
        n_in = h * w * c
        return em_routing(
            votes.reshape(b, n_in, self.num_classes, 16), activations.reshape(b, n_in), self.beta_u, self.beta_a,
            self.num_iters, self.inverse_temperature,
        )  # fmt: skip


class EMCapsNet(nn.Module):
    """Images ``[B, C, H, W]`` -> class activations ``[B, num_classes]``."""

    def __init__(
        self,
        num_classes: int = 10,
        conv_features: int = 32,
        primary_types: int = 8,
        caps1_types: int = 16,
        caps2_types: int = 16,
        num_iters: int = 3,
        inverse_temperature: float = 0.01,
        in_channels: int = 1,
    ):
        super().__init__()
        self.primary_types = primary_types
        em = dict(num_iters=num_iters, inverse_temperature=inverse_temperature)
        self.conv1 = nn.Conv2d(in_channels, conv_features, 5, stride=2)
        self.poses = nn.Conv2d(conv_features, primary_types * 16, 1)
        self.activations = nn.Conv2d(conv_features, primary_types, 1)
        self.caps1 = ConvCapsules(primary_types, caps1_types, 3, 2, **em)
        self.caps2 = ConvCapsules(caps1_types, caps2_types, 3, 1, **em)
        self.classes = ClassCapsules(caps2_types, num_classes, **em)

    def forward(self, images):
        x = F.relu(self.conv1(images))
        poses = _nhwc(self.poses(x))
        b, h, w, _ = poses.shape
        poses = poses.reshape(b, h, w, self.primary_types, 4, 4)
        activations = _nhwc(torch.sigmoid(self.activations(x)))
        poses, activations = self.caps1(poses, activations)
        poses, activations = self.caps2(poses, activations)
        _, class_activations = self.classes(poses, activations)
        return class_activations


def spread_loss(activations, labels, margin: float = 0.2):
    target = activations.gather(1, labels[:, None])
    others = 1 - F.one_hot(labels, activations.shape[-1]).to(activations.dtype)
    return (others * F.relu(margin - (target - activations)) ** 2).sum(-1).mean()


def em_capsnet_loss(model: EMCapsNet, images, labels, margin: float = 0.2):
    return spread_loss(model(images), labels, margin)


# --------------------------------------------------------------------------- #
# Training step
# --------------------------------------------------------------------------- #


def train_step_fn(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    grad_clip: float | None = 5.0,
) -> Callable[[], torch.Tensor]:
    """A zero-argument callable doing one Adam step on ``(images, labels)``; returns the loss.

    The loss is CapsNet's margin + reconstruction loss or EMCapsNet's spread loss (margin
    0.2), picked by the model's type.
    """
    if isinstance(model, CapsNet):
        loss_fn = capsnet_loss
    elif isinstance(model, EMCapsNet):
        loss_fn = em_capsnet_loss
    else:
        raise TypeError(f"train_step_fn: no loss for {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, images, labels)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        return loss.detach()

    return step


# --------------------------------------------------------------------------- #
# Copying Flax parameters in
# --------------------------------------------------------------------------- #


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float32))


def _copy_conv(conv: nn.Conv2d, p) -> None:
    """Flax ``kernel [kh, kw, in, out]`` (HWIO) + ``bias`` -> torch OIHW weight + bias."""
    conv.weight.copy_(_t(p["kernel"]).permute(3, 2, 0, 1))
    conv.bias.copy_(_t(p["bias"]))


def _copy_dense(linear: nn.Linear, p) -> None:
    linear.weight.copy_(_t(p["kernel"]).T)
    linear.bias.copy_(_t(p["bias"]))


@torch.no_grad()
def load_capsnet_params(model: CapsNet, params) -> CapsNet:
    """Copies the Flax params of ``zoo.capsules.model.CapsNet`` into ``model`` (in place)."""
    _copy_conv(model.conv1, params["Conv_0"])
    _copy_conv(model.primary, params["PrimaryCapsules_0"]["Conv_0"])
    model.weights.copy_(_t(params["CapsuleLayer_0"]["weights"]))
    for i, layer in enumerate(model.decoder):
        _copy_dense(layer, params[f"Dense_{i}"])
    _copy_dense(model.out, params[f"Dense_{len(model.decoder)}"])
    return model


@torch.no_grad()
def load_em_capsnet_params(model: EMCapsNet, params) -> EMCapsNet:
    """Copies the Flax params of ``zoo.capsules.model.EMCapsNet`` into ``model`` (in place)."""
    _copy_conv(model.conv1, params["ValidConv_0"])
    _copy_conv(model.poses, params["Conv_0"])
    _copy_conv(model.activations, params["Conv_1"])
    for layer, name in ((model.caps1, "ConvCapsules_0"), (model.caps2, "ConvCapsules_1"), (model.classes, "ClassCapsules_0")):
        for attr in ("weights", "beta_u", "beta_a"):
            getattr(layer, attr).copy_(_t(params[name][attr]))
    return model
