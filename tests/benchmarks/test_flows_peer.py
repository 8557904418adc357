"""The normflows Glow peer (benchmarks/peers/flows_torch.py): a tiny 8×8×1 model is invertible
through normflows' own API, its bits/dim are sane, and a few training steps report finite numbers."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("normflows")

from benchmarks.peers import flows_torch as peer  # noqa: E402

SHAPE = (8, 8, 1)  # H, W, C
TINY = dict(levels=2, depth=2, width=16)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _images(rng, n=64):
    return rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


@pytest.fixture
def model(rng):
    """The tiny Glow, ActNorm initialised on data, then every parameter jittered so that the
    zero-initialised couplings and the priors are not trivial."""
    m = peer.build_glow(SHAPE, TINY["levels"], TINY["depth"], TINY["width"], seed=0)
    peer.init_actnorm(m, _images(rng), rng)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return m


def test_architecture():
    m = peer.build_glow(SHAPE, **TINY)
    # deepest level first: 8 channels at 2×2 after two squeezes; the split-off half at 4×4
    assert [q.shape for q in m.q0] == [(8, 2, 2), (2, 4, 4)]
    assert [len(level) for level in m.flows] == [TINY["depth"] + 1] * TINY["levels"]  # blocks + Squeeze
    assert len(m.merges) == TINY["levels"] - 1
    with pytest.raises(ValueError):
        peer.build_glow((6, 6, 1), **TINY)


def test_round_trip(model, rng):
    y = peer.dequantize(_images(rng, 8), rng)  # [8, 1, 8, 8]
    with torch.no_grad():
        zs, log_det = model.inverse_and_log_det(y)  # density direction
        assert [tuple(z.shape[1:]) for z in zs] == [(8, 2, 2), (2, 4, 4)]
        x, log_det_back = model.forward_and_log_det(zs)  # generative direction
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-4)
        np.testing.assert_allclose((log_det + log_det_back).numpy(), 0.0, atol=1e-3)
        # sampling reports log q(x) that log_prob recovers
        samples, log_q = model.sample(4)
        assert samples.shape == (4, 1, 8, 8)
        np.testing.assert_allclose(model.log_prob(samples, None).numpy(), log_q.numpy(), rtol=1e-4, atol=1e-3)
        zs2, _ = model.inverse_and_log_det(samples)
        back, _ = model.forward_and_log_det(zs2)
        np.testing.assert_allclose(back.numpy(), samples.numpy(), atol=1e-4)


def test_bits_per_dim_random_data(model, rng):
    images = _images(rng, 40)
    bpd = peer.bits_per_dim(model, images, noise_seed=0, batch_size=16)
    assert math.isfinite(bpd) and 0.0 < bpd < 20.0
    assert peer.bits_per_dim(model, images, noise_seed=0, batch_size=40) == pytest.approx(bpd, rel=1e-5)


def test_train_few_steps(rng):
    images = _images(rng, 64)
    result = peer.train(images, images[:16], batch_size=16, num_steps=5, seed=0, **TINY)
    assert set(result) == {"train_bpd_last", "test_bpd", "step_time_s_median", "num_params", "num_steps"}
    assert result["num_steps"] == 5 and result["num_params"] > 0
    for key in ("train_bpd_last", "test_bpd", "step_time_s_median"):
        assert math.isfinite(result[key]), (key, result)
    assert 0.0 < result["train_bpd_last"] < 20.0 and 0.0 < result["test_bpd"] < 20.0
