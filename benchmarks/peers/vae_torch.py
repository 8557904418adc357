"""pythae's VAE (clementchadebec/benchmark_VAE) with the zoo's MLP, the peer of ``zoo train vae``.

``pythae.models.VAE`` with a custom encoder/decoder of the zoo's default architecture
(vae_keras.py): encoder Linear(784, 256) → ReLU → two Linear(256, z) heads (μ, log σ²);
decoder Linear(z, 256) → ReLU → Linear(256, 784) → sigmoid, reshaped to ``[B, 1, 28, 28]``;
``VAEConfig(reconstruction_loss="bce")``. pythae's ``forward`` returns the loss the zoo
also minimises: the batch mean of ``BCE(x̂, x)`` summed over pixels (torch's BCE clamps
``log`` at −100) plus the analytic KL, with one reparameterised sample.

pythae's ``TrainingPipeline`` (data sets, callbacks, checkpoints, logging) is not used: the
loop here is the bare ``zero_grad → model({"data": x}).loss → backward → Adam step`` on the
batches the caller hands it, so the comparison times the model and optimiser alone.

Test metrics: the mean single-sample negative ELBO (``forward``'s loss in eval mode) and
pythae's own importance-sampled ``get_nll`` (the IWAE bound ``−L_k``).
"""

from __future__ import annotations

import os
import time
from typing import Iterable

import numpy as np
import torch
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder


def set_cpu_threads(n: int = 0) -> int:
    """Sets torch's intra-op threads to ``n`` (0: the CPU cores this process may use); returns it."""
    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


class MLPEncoder(BaseEncoder):
    def __init__(self, latent_dim: int, hidden: int = 256, input_dim: int = 784):
        BaseEncoder.__init__(self)
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_dim, hidden), torch.nn.ReLU())
        self.mean = torch.nn.Linear(hidden, latent_dim)
        self.logvar = torch.nn.Linear(hidden, latent_dim)

    def forward(self, x):
        h = self.body(x)
        return ModelOutput(embedding=self.mean(h), log_covariance=self.logvar(h))


class MLPDecoder(BaseDecoder):
    def __init__(self, latent_dim: int, hidden: int = 256, image_shape=(1, 28, 28)):
        BaseDecoder.__init__(self)
        self.image_shape = tuple(image_shape)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(latent_dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, int(np.prod(image_shape))),
            torch.nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, z):
        return ModelOutput(reconstruction=self.net(z).reshape(z.shape[0], *self.image_shape))


def build_vae(latent_dim: int, hidden: int = 256, *, seed: int = 0) -> VAE:
    """pythae's VAE with the MLP above, BCE reconstruction; parameters from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = VAEConfig(input_dim=(1, 28, 28), latent_dim=latent_dim, reconstruction_loss="bce")
        return VAE(config, encoder=MLPEncoder(latent_dim, hidden), decoder=MLPDecoder(latent_dim, hidden))


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def to_torch(images01: np.ndarray) -> torch.Tensor:
    """NHWC {0, 1} uint8/float -> NCHW float32."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images01, np.float32).transpose(0, 3, 1, 2)))


@torch.no_grad()
def test_nelbo(model: VAE, images01: np.ndarray, batch_size: int = 250, seed: int = 1) -> float:
    """Mean per-image negative ELBO (one posterior sample, analytic KL) in nats."""
    model.eval()
    torch.manual_seed(seed)
    total = 0.0
    for i in range(0, len(images01), batch_size):
        x = to_torch(images01[i : i + batch_size])
        total += float(model({"data": x}).loss) * len(x)
    return total / len(images01)


@torch.no_grad()
def test_iwae(model: VAE, images01: np.ndarray, k: int, seed: int = 1) -> float:
    """pythae's ``get_nll`` with ``k`` importance samples: mean ``−L_k`` in nats."""
    model.eval()
    torch.manual_seed(seed)
    return -float(model.get_nll(to_torch(images01), n_samples=k, batch_size=k))


def fastest_threads(batches: list[np.ndarray], latent_dim: int, hidden: int = 256, steps: int = 40) -> tuple[int, dict]:
    """Times ``steps`` training steps of a throw-away model at 1 thread and at every core this
    process may use; sets and returns the faster count, and ``{threads: median ms}``.
    (On a small shared machine the winner depends on the load: a busy neighbour makes
    multi-threaded torch many times slower.)"""
    medians = {}
    for n in sorted({1, len(os.sched_getaffinity(0))}):
        torch.set_num_threads(n)
        r = train(build_vae(latent_dim, hidden, seed=123), (batches[i % len(batches)] for i in range(steps)), steps)
        medians[n] = float(np.median(r["step_times_s"][steps // 4 :]) * 1e3)
    best = min(medians, key=medians.get)
    torch.set_num_threads(best)
    return best, medians


def train(model: VAE, batches: Iterable[np.ndarray], num_steps: int, learning_rate: float = 1e-3,
          seed: int = 0) -> dict:  # fmt: skip
    """Adam on ``num_steps`` batches (NHWC {0, 1}); returns per-step wall times and losses.

    Timed per step: the host batch to a tensor, ``zero_grad``, ``forward`` (loss), ``backward``,
    ``optimizer.step``; the loss is read (``float``) after the clock stops.
    """
    model.train()
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    times, losses = [], []
    it = iter(batches)
    for _ in range(num_steps):
        batch = next(it)
        t0 = time.perf_counter()
        x = to_torch(batch)
        optimizer.zero_grad(set_to_none=True)
        loss = model({"data": x}).loss
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return {"step_times_s": times, "losses": losses}
