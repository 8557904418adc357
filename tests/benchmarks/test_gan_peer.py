"""The PyTorch DCGAN peer (benchmarks/peers/gan_torch.py): output shapes of both configurations,
the 28×28 parameter count against one worked out from the layer sizes, one alternating step
updates both networks with finite losses, and the timing helper returns what it promises."""

import math

import pytest

torch = pytest.importorskip("torch")

from benchmarks.peers import gan_torch as peer  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(peer, "set_cpu_threads", lambda: 1)  # time_train_step must not take every core
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("image_size, channels", [(28, 1), (64, 1), (64, 3)])
def test_shapes(image_size, channels):
    g, d = peer.build_dcgan(image_size, channels, z_dim=100, seed=0)
    with torch.no_grad():
        x = g(torch.randn(2, 100))
        assert x.shape == (2, channels, image_size, image_size)
        assert x.abs().max() <= 1.0  # tanh
        assert d(x).shape == (2,)
    with pytest.raises(ValueError):
        peer.build_dcgan(32, channels)


def test_param_count_28():
    z, c = 100, 1
    g_expected = (
        z * 7 * 7 * 128  # Linear, no bias
        + 2 * 128  # BatchNorm2d(128) γ, β
        + 128 * 64 * 4 * 4  # ConvTranspose2d 128 -> 64, no bias
        + 2 * 64  # BatchNorm2d(64)
        + 64 * c * 4 * 4 + c  # ConvTranspose2d 64 -> 1, with bias
    )
    d_expected = (
        c * 64 * 4 * 4 + 64  # Conv2d 1 -> 64
        + 64 * 128 * 4 * 4 + 128  # Conv2d 64 -> 128
        + 128 * 7 * 7 + 1  # Linear -> 1
    )
    g, d = peer.build_dcgan(28, c, z_dim=z)
    assert peer.num_params(g) == g_expected == 759_681
    assert peer.num_params(d) == d_expected == 138_561


def test_init():
    g, d = peer.build_dcgan(28, 1, seed=0)
    assert 0.015 < g.fc.weight.std().item() < 0.025
    assert 0.015 < d.convs[1].weight.std().item() < 0.025
    assert torch.all(g.bn0.weight == 1) and torch.all(g.bn0.bias == 0)
    g2, _ = peer.build_dcgan(28, 1, seed=0)
    assert torch.equal(g.fc.weight, g2.fc.weight)  # seeded, reproducible


def test_one_step_updates_both(rng):
    g, d = peer.build_dcgan(28, 1, seed=0)
    opt_g, opt_d = peer.make_optimizers(g, d)
    assert opt_g.defaults["lr"] == 2e-4 and opt_g.defaults["betas"] == (0.5, 0.999)
    g_before = [p.detach().clone() for p in g.parameters()]
    d_before = [p.detach().clone() for p in d.parameters()]
    real = torch.from_numpy(rng.uniform(-1, 1, size=(4, 1, 28, 28)).astype("float32"))
    step = peer.train_step_fn(g, d, opt_g, opt_d, z_dim=100, generator=torch.Generator().manual_seed(0))
    d_loss, g_loss = step(real)
    assert math.isfinite(d_loss) and math.isfinite(g_loss)
    assert d_loss > 0 and g_loss > 0
    # near init D outputs ~0 logits: d_loss ≈ 2 log 2, g_loss ≈ log 2
    assert d_loss == pytest.approx(2 * math.log(2), abs=0.2)
    assert g_loss == pytest.approx(math.log(2), abs=0.2)
    for before, p in zip(g_before, g.parameters()):
        assert not torch.equal(before, p), "a G parameter did not change"
    for before, p in zip(d_before, d.parameters()):
        assert not torch.equal(before, p), "a D parameter did not change"
    assert all(p.requires_grad for p in d.parameters())  # unfrozen after the G step


def test_time_train_step():
    times = peer.time_train_step(28, 1, batch_size=2, repeats=3, warmup=1)
    assert len(times) == 3
    assert all(isinstance(t, float) and t > 0 for t in times)
