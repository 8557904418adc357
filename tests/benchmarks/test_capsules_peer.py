"""The PyTorch capsule peers compute the same functions as the zoo's Flax models: copy a
tiny model's Flax params into the peer, compare forward outputs (and, for the routing,
gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.peers import capsules_torch as peer  # noqa: E402
from kernels import routing  # noqa: E402
from zoo.capsules import losses  # noqa: E402
from zoo.capsules import model as zoo_model  # noqa: E402

ATOL, RTOL = 1e-4, 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _images(rng, b=2):
    images = rng.uniform(size=(b, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, size=(b,)).astype(np.int64)
    return images, labels


def _nchw(images):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _random_params(flax_model, rng, *args):
    """Random params of the model's shapes (``eval_shape``: no init computation to compile):
    fan-in scaled kernels, non-zero biases and betas, pose transforms near the identity,
    CapsNet's vote matrices large enough that routing moves the couplings."""
    shapes = jax.eval_shape(lambda: flax_model.init(jax.random.key(0), *args))["params"]

    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            return rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        if name == "weights" and shape[-2:] == (4, 4):
            return np.eye(4) + 0.5 * rng.normal(size=shape)
        if name == "weights":
            return 0.3 * rng.normal(size=shape)
        return 0.5 * rng.normal(size=shape)  # bias, beta_u, beta_a

    return jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(fill(p, x), jnp.float32), shapes)


def _close(torch_out, jax_out, atol=ATOL, rtol=RTOL):
    np.testing.assert_allclose(torch_out.detach().numpy(), np.asarray(jax_out), atol=atol, rtol=rtol)


def test_capsnet_matches_flax(rng):
    sizes = dict(conv_features=16, primary_types=4, class_dim=8, decoder_features=(16, 32))
    flax_model = zoo_model.CapsNet(**sizes)
    images, labels = _images(rng)
    params = _random_params(flax_model, rng, images, labels)
    t_model = peer.load_capsnet_params(peer.CapsNet(**sizes), params)
    assert sum(p.numel() for p in t_model.parameters()) == sum(x.size for x in jax.tree.leaves(params))

    x, y = _nchw(images), torch.from_numpy(labels)
    for jax_labels, torch_labels in ((labels, y), (None, None)):  # label mask, then argmax mask
        lengths, recon = jax.jit(flax_model.apply)({"params": params}, images, jax_labels)
        t_lengths, t_recon = t_model(x, torch_labels)
        _close(t_lengths, lengths)
        _close(t_recon.permute(0, 2, 3, 1), recon)
    assert float(np.std(np.asarray(lengths))) > 1e-3  # not a degenerate all-equal output

    # The losses, too.
    scores, recon = jax.jit(flax_model.apply)({"params": params}, images, labels)
    jax_loss = losses.margin_loss(scores, labels) + 0.0005 * jnp.mean(jnp.sum((recon - images) ** 2, axis=(1, 2, 3)))
    with torch.no_grad():
        np.testing.assert_allclose(float(peer.capsnet_loss(t_model, x, y)), float(jax_loss), rtol=1e-5)


def test_em_capsnet_matches_flax(rng):
    sizes = dict(conv_features=8, primary_types=4, caps1_types=4, caps2_types=4)
    flax_model = zoo_model.EMCapsNet(**sizes)
    images, labels = _images(rng)
    params = _random_params(flax_model, rng, images)
    t_model = peer.load_em_capsnet_params(peer.EMCapsNet(**sizes), params)
    assert sum(p.numel() for p in t_model.parameters()) == sum(x.size for x in jax.tree.leaves(params))

    acts = jax.jit(flax_model.apply)({"params": params}, images)
    with torch.no_grad():
        t_acts = t_model(_nchw(images))
    _close(t_acts, acts)
    np.testing.assert_allclose(
        float(peer.spread_loss(t_acts, torch.from_numpy(labels), 0.2)),
        float(losses.spread_loss(acts, labels, 0.2)),
        rtol=1e-4, atol=1e-6,
    )  # fmt: skip


def test_routing_matches_kernels_with_gradients(rng):
    u_hat = rng.normal(size=(2, 6, 3, 4)).astype(np.float32)
    probe = rng.normal(size=(2, 3, 4)).astype(np.float32)
    v, g = jax.value_and_grad(lambda u: jnp.sum(routing.dynamic_routing(u) * probe))(u_hat)
    t_u = torch.from_numpy(u_hat).requires_grad_()
    t_v = (peer.dynamic_routing(t_u) * torch.from_numpy(probe)).sum()
    t_v.backward()
    np.testing.assert_allclose(float(t_v.detach()), float(v), rtol=1e-5)
    _close(t_u.grad, g)

    votes = rng.normal(size=(2, 8, 3, 16)).astype(np.float32)
    a_in = rng.uniform(size=(2, 8)).astype(np.float32)
    beta_u, beta_a = rng.normal(size=(2, 3)).astype(np.float32)
    mean, act = routing.em_routing(votes, a_in, beta_u, beta_a, inverse_temperature=0.5)
    t_mean, t_act = peer.em_routing(*map(torch.from_numpy, (votes, a_in, beta_u, beta_a)), inverse_temperature=0.5)
    _close(t_mean, mean)
    _close(t_act, act)


def test_train_step_runs_and_lowers_the_loss(rng):
    torch.manual_seed(0)
    images, labels = _images(rng, b=4)
    x, y = _nchw(images), torch.from_numpy(labels)
    for model in (
        peer.CapsNet(conv_features=8, primary_types=2, class_dim=4, decoder_features=(8,)),
        peer.EMCapsNet(conv_features=4, primary_types=2, caps1_types=2, caps2_types=2),
    ):
        step = peer.train_step_fn(model, torch.optim.Adam(model.parameters(), lr=1e-2), x, y)
        first = float(step())
        for _ in range(4):
            last = float(step())
        assert np.isfinite(last) and last < first
