"""A plain PyTorch (eager) DCGAN, the peer of the zoo's JAX DCGAN in benchmarks.

No torchvision or torchgan: two small ``nn.Module``\\ s written out layer by layer. Tensors are
NCHW; images are float in ``[-1, 1]``. Two configurations, chosen by ``image_size``:

* ``image_size=28`` (MNIST-like, ``channels`` usually 1):

  - generator ``z [B, z_dim] -> Linear(z_dim, 7·7·128, bias=False) -> reshape [B, 128, 7, 7]
    -> BatchNorm2d(128) -> ReLU -> ConvTranspose2d(128, 64, 4, 2, 1, bias=False) [14×14]
    -> BatchNorm2d(64) -> ReLU -> ConvTranspose2d(64, C, 4, 2, 1) [28×28] -> tanh``;
  - discriminator ``x [B, C, 28, 28] -> Conv2d(C, 64, 4, 2, 1) [14×14] -> LeakyReLU(0.2)
    -> Conv2d(64, 128, 4, 2, 1) [7×7] -> LeakyReLU(0.2) -> flatten (128·7·7) -> Linear(·, 1)``,
    returning raw logits ``[B]``.

* ``image_size=64`` (``channels`` 1 or 3):

  - generator ``Linear(z_dim, 4·4·512, bias=False) -> BN -> ReLU``, then transposed
    convolutions 512→256→128→64 (each ``bias=False``, followed by BatchNorm2d and ReLU) and
    64→C (with bias) ``-> tanh``; spatial 4→8→16→32→64;
  - discriminator convolutions C→64→128→256→512 (each with LeakyReLU(0.2)), spatial
    64→32→16→8→4, ``flatten (4·4·512) -> Linear(·, 1)``.

Every (transposed) convolution is kernel 4, stride 2, padding 1. The discriminator has no
normalisation (the JAX side's ``norm="none"``) and its convolutions carry biases; the
generator's BatchNorm2d normalises per channel after the reshape, as the JAX side does on
NHWC. Init as in the DCGAN paper: conv / transposed-conv / linear weights ``N(0, 0.02)``,
biases 0, BatchNorm ``γ = 1, β = 0``.

Loss: non-saturating GAN with ``BCEWithLogits`` (means over the batch); the discriminator
loss is ``BCE(D(real), 1) + BCE(D(fake), 0)`` (a sum of the two means, as PyTorch's DCGAN
example), the generator loss ``BCE(D(G(z)), 1)``.

One training step (:func:`train_step_fn`) is one alternating 1:1 update in a single Python
call: sample ``z``, a discriminator step on the real batch and ``G(z)`` (computed without
gradient, i.e. ``G(z).detach()``), then a generator step on a fresh ``z`` through the just
updated discriminator. G and D have *separate* ``Adam(2e-4, betas=(0.5, 0.999))``
optimisers. During the generator step D's parameters have ``requires_grad`` switched off, so
backward computes no (unused) weight gradients for D, matching a JAX step that differentiates
with respect to G's parameters only. Both models stay in training mode throughout, so the
generator's BatchNorm uses batch statistics (and updates its running statistics) in both halves.

Run as a script: ``python -m benchmarks.peers.gan_torch --image-size 28 --channels 1
--batch-size 64 --repeats 20`` times :func:`time_train_step` and prints the median step time and
throughput (real images per second) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEARNING_RATE = 2e-4
BETAS = (0.5, 0.999)
INIT_STD = 0.02

# image_size -> (spatial size after the generator's Linear, generator channel widths from the
# Linear down to the last hidden layer); the discriminator mirrors the widths in reverse.
_CONFIGS = {
    28: (7, (128, 64)),
    64: (4, (512, 256, 128, 64)),
}


def set_cpu_threads() -> int:
    """Sets torch's intra-op threads to the CPU cores this process may use; returns the count.

    A copy of ``benchmarks.peers.flows_torch.set_cpu_threads`` (that module imports normflows at
    the top, which this peer does not need)."""
    n = len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #


class Generator(nn.Module):
    """``z [B, z_dim] -> images [B, C, H, W]`` in ``[-1, 1]`` (see the module docstring)."""

    def __init__(self, image_size: int = 28, channels: int = 1, z_dim: int = 100):
        super().__init__()
        if image_size not in _CONFIGS:
            raise ValueError(f"image_size must be one of {sorted(_CONFIGS)}, got {image_size}")
        start, widths = _CONFIGS[image_size]
        self.start, self.width0 = start, widths[0]
        self.fc = nn.Linear(z_dim, start * start * widths[0], bias=False)
        self.bn0 = nn.BatchNorm2d(widths[0])
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False) for cin, cout in zip(widths, widths[1:])
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(cout) for cout in widths[1:])
        self.out = nn.ConvTranspose2d(widths[-1], channels, 4, stride=2, padding=1, bias=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.width0, self.start, self.start)
        h = F.relu(self.bn0(h))
        for up, bn in zip(self.ups, self.bns):
            h = F.relu(bn(up(h)))
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    """``images [B, C, H, W] -> logits [B]`` (see the module docstring); no normalisation."""

    def __init__(self, image_size: int = 28, channels: int = 1):
        super().__init__()
        if image_size not in _CONFIGS:
            raise ValueError(f"image_size must be one of {sorted(_CONFIGS)}, got {image_size}")
        end, widths = _CONFIGS[image_size]
        widths = (channels, *reversed(widths))
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=True) for cin, cout in zip(widths, widths[1:])
        )
        self.fc = nn.Linear(end * end * widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        return self.fc(h.flatten(1)).squeeze(-1)


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN init, in place: conv / transposed-conv / linear weights ``N(0, 0.02)``, biases 0,
    BatchNorm ``γ = 1, β = 0``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_dcgan(
    image_size: int = 28, channels: int = 1, z_dim: int = 100, seed: int = 0
) -> tuple[Generator, Discriminator]:
    """The DCGAN pair ``(G, D)`` for ``image_size`` 28 or 64 and ``channels`` image channels.

    Weights are drawn from torch's RNG seeded with ``seed`` without disturbing the caller's
    global RNG state. Both modules are returned in training mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(image_size, channels, z_dim)
        d = Discriminator(image_size, channels)
        _dcgan_init(g)
        _dcgan_init(d)
    return g.train(), d.train()


def num_params(module: nn.Module) -> int:
    """Trainable parameter count (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def make_optimizers(g: nn.Module, d: nn.Module) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Separate ``Adam(2e-4, betas=(0.5, 0.999))`` optimisers for G and D: ``(opt_g, opt_d)``."""
    return (
        torch.optim.Adam(g.parameters(), lr=LEARNING_RATE, betas=BETAS),
        torch.optim.Adam(d.parameters(), lr=LEARNING_RATE, betas=BETAS),
    )


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def train_step_fn(
    g: Generator,
    d: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    z_dim: int,
    generator: torch.Generator | None = None,
) -> Callable[[torch.Tensor], tuple[float, float]]:
    """A callable doing one alternating 1:1 update on a real batch ``[B, C, H, W]`` (float in
    ``[-1, 1]``); returns ``(d_loss, g_loss)`` as Python floats.

    D step: ``z ~ N(0, I)`` from ``generator``, ``fake = G(z)`` without gradient,
    ``d_loss = BCE(D(real), 1) + BCE(D(fake), 0)``, backward, ``opt_d.step()``. G step: a fresh
    ``z``, ``g_loss = BCE(D(G(z)), 1)`` through the updated D (whose parameters are frozen for
    this backward), ``opt_g.step()``.
    """
    d_params = list(d.parameters())

    def step(real: torch.Tensor) -> tuple[float, float]:
        b = real.shape[0]
        ones = torch.ones(b, dtype=real.dtype)
        zeros = torch.zeros(b, dtype=real.dtype)

        # discriminator
        z = torch.randn(b, z_dim, generator=generator, dtype=real.dtype)
        with torch.no_grad():
            fake = g(z)  # == g(z).detach()
        opt_d.zero_grad(set_to_none=True)
        d_loss = F.binary_cross_entropy_with_logits(d(real), ones) + F.binary_cross_entropy_with_logits(
            d(fake), zeros
        )
        d_loss.backward()
        opt_d.step()

        # generator
        z = torch.randn(b, z_dim, generator=generator, dtype=real.dtype)
        opt_g.zero_grad(set_to_none=True)
        for p in d_params:
            p.requires_grad_(False)
        try:
            g_loss = F.binary_cross_entropy_with_logits(d(g(z)), ones)
            g_loss.backward()
        finally:
            for p in d_params:
                p.requires_grad_(True)
        opt_g.step()
        return d_loss.item(), g_loss.item()

    return step


def time_train_step(
    image_size: int,
    channels: int,
    batch_size: int,
    repeats: int,
    seed: int = 0,
    warmup: int = 2,
) -> list[float]:
    """Seconds per :func:`train_step_fn` step (a D update and a G update) on a fixed random real
    batch ``[batch_size, channels, image_size, image_size]`` uniform in ``[-1, 1]``, ``repeats``
    times after ``warmup`` untimed steps, with torch's threads set by :func:`set_cpu_threads`."""
    set_cpu_threads()
    g, d = build_dcgan(image_size, channels, seed=seed)
    opt_g, opt_d = make_optimizers(g, d)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    real = torch.from_numpy(
        rng.uniform(-1.0, 1.0, size=(batch_size, channels, image_size, image_size)).astype(np.float32)
    )
    step = train_step_fn(g, d, opt_g, opt_d, z_dim=g.fc.in_features, generator=gen)
    for _ in range(warmup):
        step(real)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(real)
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=28, choices=sorted(_CONFIGS))
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    times = time_train_step(
        args.image_size, args.channels, args.batch_size, args.repeats, seed=args.seed, warmup=args.warmup
    )
    median = float(np.median(times))
    g, d = build_dcgan(args.image_size, args.channels, seed=args.seed)
    result = {
        "image_size": args.image_size,
        "channels": args.channels,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "step_time_ms_median": median * 1e3,
        "images_per_s": args.batch_size / median,
        "num_params_g": num_params(g),
        "num_params_d": num_params(d),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
