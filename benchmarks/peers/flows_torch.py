"""A PyTorch Glow built from the ``normflows`` library, the peer of the zoo's JAX Glow in benchmarks.

The model is assembled exactly as normflows' own Glow example (``examples/glow_colab.ipynb``):
an ``nf.MultiscaleFlow`` whose levels are listed from the deepest (index 0) to the one that
touches the data (index ``levels - 1``). In the density direction (image -> latents) every
level does

* a ``Squeeze`` (2×2 space-to-depth: ``[B, C, H, W] -> [B, 4C, H/2, W/2]``), then
* ``depth`` ``nf.flows.GlowBlock`` layers, each ActNorm (data-initialised on the first batch)
  -> invertible 1×1 convolution (LU-parametrised) -> affine coupling (channel split, a
  3×3 / 1×1 / 3×3 ReLU ConvNet of ``width`` hidden channels, zero-initialised last layer,
  scale ``sigmoid(raw + 2)``), then
* except at the deepest level, a channel split (``nf.flows.Merge``'s inverse): one half
  is scored under its own learned diagonal Gaussian (``nf.distributions.GlowBase``), the
  other half goes on to the next level.

Channels per level: ``4C`` after the first squeeze, halved by each split, ×4 by each
squeeze, i.e. ``C·2^(levels+1-i)`` at level index ``i``.

normflows conventions worth knowing (read from its source, v1.7):

* tensors are NCHW; :func:`bits_per_dim` and :func:`train` take the zoo's NHWC uint8 arrays
  and transpose them.
* a flow's ``forward`` is the *generative* direction (latent -> data) and ``inverse`` the
  density direction; ``MultiscaleFlow.forward(x)`` is not a transform but ``-log_prob(x)``.
  The transforms are ``inverse_and_log_det(x) -> ([z_0, ..., z_{L-1}], log_det)`` and
  ``forward_and_log_det(zs) -> (x, log_det)``.
* ``MultiscaleFlow.log_prob(x, y)`` returns per-example log densities in nats, ``[B]``;
  ``y`` is positional, so unconditional models pass ``None``.
* ActNorm initialises from whichever direction it first sees: run a density-direction pass
  (``log_prob``) on data before anything else.
* the split priors (``GlowBase``) are *not* conditioned on the half that continues (as in
  the Glow paper's split prior): each is a per-channel learned mean and log-scale, the same
  at every pixel; the deepest level's prior is the same kind.

Data: ``y = (x + u) / 256 - 1/2`` with ``u ~ U[0, 1)`` per pixel (uniform dequantisation,
the shift has log-det 0); bits/dim ``= -(log p(y) - D·log 256) / (D·log 2)`` with
``D = H·W·C``.

Run as a script: ``python -m benchmarks.peers.flows_torch data.npz --levels 2 --depth 8
--width 128 --batch-size 64 --num-steps 1000`` trains on the ``train``/``test`` uint8 NHWC
arrays of the ``.npz`` and prints :func:`train`'s result as JSON (progress on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from typing import Callable, Sequence

import normflows as nf
import numpy as np
import torch

_INIT_BATCH = 256  # images in the data-dependent ActNorm initialisation pass


def set_cpu_threads() -> int:
    """Sets torch's intra-op threads to the CPU cores this process may use; returns the count."""
    n = len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #


def build_glow(
    image_shape: Sequence[int], levels: int, depth: int, width: int, *, seed: int = 0
) -> nf.MultiscaleFlow:
    """normflows' multi-scale Glow for images ``image_shape = (H, W, C)`` (the model itself is NCHW).

    ``levels`` squeezes, ``depth`` GlowBlocks per level, ``width`` hidden channels in each
    coupling network; a ``GlowBase`` prior per level. Parameters are drawn from a torch
    generator seeded with ``seed`` without disturbing the caller's global RNG state.
    """
    h, w, c = image_shape
    if levels < 1 or h % 2**levels or w % 2**levels:
        raise ValueError(f"H, W = {h}, {w} must be divisible by 2**levels = {2 ** levels}")
    q0, merges, flows = [], [], []
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # Invertible1x1Conv's LU set-up calls the deprecated ``Tensor.lu``; not our concern here
        warnings.filterwarnings("ignore", message="torch.lu is deprecated", category=UserWarning)
        torch.manual_seed(seed)
        for i in range(levels):  # i = 0: the deepest level (smallest images)
            channels = c * 2 ** (levels + 1 - i)
            blocks = [
                nf.flows.GlowBlock(
                    channels, width, scale=True, scale_map="sigmoid", split_mode="channel",
                    leaky=0.0, init_zeros=True, use_lu=True,
                )
                for _ in range(depth)
            ]  # fmt: skip
            flows.append(blocks + [nf.flows.Squeeze()])
            if i > 0:
                merges.append(nf.flows.Merge())
                s = 2 ** (levels - i)
                latent_shape = (c * s, h // s, w // s)  # the half split off at this level
            else:
                s = 2**levels
                latent_shape = (channels, h // s, w // s)  # all that reaches the deepest level
            q0.append(nf.distributions.GlowBase(latent_shape))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def num_params(model: torch.nn.Module) -> int:
    """Trainable parameter count (the 1×1 convs' permutation and signs are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- #
# Data and loss
# --------------------------------------------------------------------------- #


def dequantize(images_uint8: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float32 NCHW ``(x + u)/256 - 1/2`` in ``[-1/2, 1/2)``, ``u ~ U[0, 1)``."""
    x = images_uint8.astype(np.float32)
    u = rng.random(x.shape, dtype=np.float32)
    y = (x + u) / 256.0 - 0.5
    return torch.from_numpy(np.ascontiguousarray(y.transpose(0, 3, 1, 2)))


def _bits_per_dim_from_log_prob(log_prob: torch.Tensor, num_dims: int) -> torch.Tensor:
    """Per-example ``log p(y)`` (nats, of the ``[-1/2, 1/2)`` images) -> bits/dim of the uint8 images."""
    return -(log_prob - num_dims * math.log(256.0)) / (num_dims * math.log(2.0))


def bpd_loss(model: nf.MultiscaleFlow, y: torch.Tensor) -> torch.Tensor:
    """Mean bits/dim of a dequantised NCHW batch ``y [B, C, H, W]``: a scalar to minimise."""
    num_dims = y[0].numel()
    return _bits_per_dim_from_log_prob(model.log_prob(y, None), num_dims).mean()


@torch.no_grad()
def bits_per_dim(
    model: nf.MultiscaleFlow, images_uint8: np.ndarray, *, noise_seed: int, batch_size: int = 256
) -> float:
    """Average bits/dim of uint8 images ``[N, H, W, C]`` under ``model``, with seeded dequantisation.

    (On a model that has seen no data, the first batch here initialises ActNorm, as any
    first pass in normflows does.)
    """
    rng = np.random.default_rng(noise_seed)
    total, n = 0.0, len(images_uint8)
    num_dims = int(np.prod(images_uint8.shape[1:]))
    for start in range(0, n, batch_size):
        y = dequantize(images_uint8[start : start + batch_size], rng)
        total += _bits_per_dim_from_log_prob(model.log_prob(y, None), num_dims).double().sum().item()
    return total / n


@torch.no_grad()
def init_actnorm(model: nf.MultiscaleFlow, images_uint8: np.ndarray, rng: np.random.Generator) -> None:
    """One density-direction pass on (up to) 256 images: normflows' ActNorm layers initialise
    their scale and bias from this first batch so that their outputs are standardised."""
    model.log_prob(dequantize(images_uint8[:_INIT_BATCH], rng), None)


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def train_step_fn(
    model: nf.MultiscaleFlow,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
) -> Callable[[torch.Tensor], float]:
    """A callable doing one optimiser step on a dequantised batch ``y [B, C, H, W]``; returns its bits/dim.

    ``grad_clip`` clips the global gradient norm (as ``optax.clip_by_global_norm``) before the
    update; ``scheduler`` is stepped after it.
    """

    def step(y: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = bpd_loss(model, y)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return loss.item()

    return step


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless index batches: a fresh permutation of ``range(n)`` per epoch, the incomplete tail dropped."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} > {n} training images")
    while True:
        perm = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


def train(
    train_uint8: np.ndarray,
    test_uint8: np.ndarray,
    *,
    levels: int,
    depth: int,
    width: int,
    batch_size: int,
    num_steps: int,
    learning_rate: float = 1e-3,
    warmup_steps: int = 0,
    grad_clip: float | None = None,
    seed: int = 0,
    log_every: int = 0,
) -> dict:
    """Trains :func:`build_glow` with Adam on the mean bits/dim of uint8 NHWC ``train_uint8``.

    ActNorm is initialised on 256 training images first; each step draws its batch from a
    seeded per-epoch permutation and fresh dequantisation noise. Step times cover the
    dequantisation, forward, backward and Adam update. Returns ``train_bpd_last`` (the last
    step's batch bits/dim, before its update), ``test_bpd`` (:func:`bits_per_dim` on
    ``test_uint8``, noise seed ``seed + 1``), ``step_time_s_median`` (steps after the first
    3; all steps if there are no more), ``num_params`` and ``num_steps``.
    """
    set_cpu_threads()
    model = build_glow(train_uint8.shape[1:], levels, depth, width, seed=seed)
    rng = np.random.default_rng(seed)
    init_actnorm(model, train_uint8[rng.permutation(len(train_uint8))[:_INIT_BATCH]], rng)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    scheduler = None
    if warmup_steps > 0:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(t / warmup_steps, 1.0))
    step = train_step_fn(model, optimizer, scheduler, grad_clip)
    batches = _batches(len(train_uint8), batch_size, rng)
    times, loss = [], float("nan")
    for i in range(num_steps):
        t0 = time.perf_counter()
        loss = step(dequantize(train_uint8[next(batches)], rng))
        times.append(time.perf_counter() - t0)
        if log_every and (i + 1) % log_every == 0:
            print(f"step {i + 1}: train bpd {loss:.4f} ({times[-1]:.3f} s/step)", file=sys.stderr, flush=True)
    timed = times[3:] or times
    return {
        "train_bpd_last": loss,
        "test_bpd": bits_per_dim(model, test_uint8, noise_seed=seed + 1),
        "step_time_s_median": float(np.median(timed)) if timed else float("nan"),
        "num_params": num_params(model),
        "num_steps": num_steps,
    }


def time_train_step(
    image_shape: Sequence[int],
    *,
    levels: int,
    depth: int,
    width: int,
    batch_size: int,
    repeats: int,
    seed: int = 0,
) -> list[float]:
    """Seconds per train step (dequantisation, forward, backward, Adam) on random uint8 images
    ``[batch_size, *image_shape]``, ``repeats`` times after ActNorm init and 2 warm-up steps."""
    set_cpu_threads()
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch_size, *image_shape), dtype=np.uint8)
    model = build_glow(image_shape, levels, depth, width, seed=seed)
    init_actnorm(model, images, rng)
    step = train_step_fn(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    for _ in range(2):
        step(dequantize(images, rng))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(dequantize(images, rng))
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help=".npz with uint8 NHWC arrays 'train' and 'test'")
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=0)
    args = parser.parse_args(argv)
    with np.load(args.data) as data:
        train_uint8, test_uint8 = data["train"], data["test"]
    for name, arr in (("train", train_uint8), ("test", test_uint8)):
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise SystemExit(f"{args.data}: '{name}' must be uint8 [N, H, W, C], got {arr.dtype} {arr.shape}")
    result = train(
        train_uint8, test_uint8, levels=args.levels, depth=args.depth, width=args.width,
        batch_size=args.batch_size, num_steps=args.num_steps, learning_rate=args.learning_rate,
        seed=args.seed, log_every=args.log_every,
    )  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
