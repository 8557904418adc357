"""Real Inception FID: pytorch-fid's FID Inception v3 in Flax, its weights, and the GAN evaluation hook.

The real weights are a download, so these tests use random weights in the same layout.
Where torch and pytorch-fid are installed (``bash scripts/setup.sh peers``), the network is
compared with pytorch-fid's own on the same random weights."""

import numpy as np
import pytest
import jax.numpy as jnp
from flax import traverse_util

from zoo.core import load_config, train_and_evaluate
from zoo.data.images import load_images
from zoo.gan import inception as inc
from zoo.gan.evaluation import to_model_range

SIDE = 75  # the smallest input the network takes: fast, and every layer still runs


def he_scaled_variables(seed=0):
    """Random variables that keep activations at unit scale through the 94 layers: He-scaled
    kernels, BatchNorm statistics and affine terms near the identity (numpy: cheap to draw)."""
    r = np.random.default_rng(seed)
    out = {}
    for path, shape in inc._variable_shapes().items():
        noise = r.normal(size=shape).astype(np.float32)
        if path[-1] == "kernel":
            out[path] = noise * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif path[-1] in ("scale", "var"):
            out[path] = 1.0 + 0.1 * np.abs(noise)
        else:  # bias, mean
            out[path] = 0.1 * noise
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in out.items()})


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    variables = he_scaled_variables()
    path = tmp_path_factory.mktemp("inception") / "random_fid_inception.npz"
    np.savez(path, **inc.state_dict_from_variables(variables))
    return {"variables": variables, "path": path}


def test_the_state_dict_has_pytorch_fids_names_and_shapes_and_round_trips(weights):
    sd = inc.state_dict_from_variables(weights["variables"])
    # shapes of pytorch-fid's pt_inception-2015-12-05 file (torch layouts)
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert sd["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert sd["Mixed_7b.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert sd["fc.weight"].shape == (1008, 2048)
    assert len([k for k in sd if k.endswith("conv.weight")]) == 94
    loaded = inc.load_inception(weights["path"], warn_if_not_pytorch_fid=False)
    for path, value in traverse_util.flatten_dict(weights["variables"]).items():
        np.testing.assert_array_equal(traverse_util.flatten_dict(loaded)[path], value, err_msg=str(path))


def test_bad_weights_name_the_key(weights):
    sd = inc.state_dict_from_variables(weights["variables"])
    with pytest.raises(ValueError, match=r"state_dict\['Mixed_5b.branch1x1.conv.weight'\].*shape \(64, 192, 1, 1\); got shape \(64, 192, 3, 3\)"):
        inc.variables_from_state_dict({**sd, "Mixed_5b.branch1x1.conv.weight": np.zeros((64, 192, 3, 3))})
    partial = {k: v for k, v in sd.items() if k != "fc.bias"}
    with pytest.raises(ValueError, match=r"1 missing \(e.g. \['params.fc.bias'\]\), 0 unknown"):
        inc.variables_from_state_dict(partial)
    with pytest.raises(ValueError, match=r"1 unknown \(e.g. \['AuxLogits.fc.weight'\]\)"):
        inc.variables_from_state_dict({**sd, "AuxLogits.fc.weight": np.zeros((1000, 768))})
    # BatchNorm's counter carries no value: accepted and ignored
    inc.variables_from_state_dict({**sd, "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(5)})
    with pytest.raises(FileNotFoundError, match="pytorch-fid"):
        inc.load_inception("/nonexistent/pt_inception.pth")


def test_outputs_shapes_batch_independence_grey_as_rgb_and_8_bit_rounding(weights, rng):
    v = weights["variables"]
    grey = rng.uniform(-1, 1, (3, 28, 28, 1)).astype(np.float32)
    pool, logits = inc.inception_outputs(v, grey, batch_size=8, side=SIDE)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008) and np.all(np.isfinite(pool))
    assert pool.std() > 1e-2  # the features are not degenerate
    pool2, logits2 = inc.inception_outputs(v, grey, batch_size=2, side=SIDE)  # padded last batch
    np.testing.assert_allclose(pool2, pool, rtol=1e-5, atol=1e-5 * np.abs(pool).max())
    rgb, _ = inc.inception_outputs(v, np.repeat(grey, 3, axis=-1), batch_size=8, side=SIDE)
    np.testing.assert_array_equal(rgb, pool)
    # pixels are rounded to 256 levels first: a nudge well inside a level changes nothing
    level = np.round((grey + 1) * 127.5) / 127.5 - 1
    nudged, _ = inc.inception_outputs(v, level + 0.3 / 255, batch_size=8, side=SIDE)
    np.testing.assert_array_equal(nudged, pool)


def test_bad_images_raise_clear_errors(weights):
    v = weights["variables"]
    with pytest.raises(ValueError, match=r"images.*C = 1 or 3.*\(2, 28, 28, 2\)"):
        inc.inception_outputs(v, np.zeros((2, 28, 28, 2), np.float32))
    with pytest.raises(ValueError, match="images.*finite"):
        inc.inception_outputs(v, np.full((2, 28, 28, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="side.*>= 75"):
        inc.inception_outputs(v, np.zeros((2, 28, 28, 1), np.float32), side=64)
    with pytest.raises(ValueError, match="batch_size.*int >= 1.*got 0"):
        inc.inception_outputs(v, np.zeros((2, 28, 28, 1), np.float32), batch_size=0)
    with pytest.raises(ValueError, match=r"inception_outputs: `images` must be in \[-1, 1\] .*; got range \[0, 255\]"):
        inc.inception_outputs(v, np.stack([np.zeros((28, 28, 1)), np.full((28, 28, 1), 255.0)]).astype(np.float32))


def test_reference_is_cached_and_the_test_split_scores_zero_against_itself(weights, tmp_path, rng, monkeypatch):
    kwargs = dict(cache_dir=tmp_path / "cache", test_limit=8, side=SIDE, batch_size=8)
    first = inc.get_inception_reference(weights["path"], "mnist_5k", **kwargs)
    files = list((tmp_path / "cache").glob("inception-mnist_5k-*.npz"))
    assert len(files) == 1 and first.num_test == 8 and first.mu.shape == (2048,)
    with monkeypatch.context() as m:  # the second call must come from the cache: computing is refused
        m.setattr(inc, "inception_outputs", lambda *a, **k: pytest.fail("statistics recomputed"))
        second = inc.get_inception_reference(weights["path"], "mnist_5k", **kwargs)
    np.testing.assert_array_equal(second.sigma, first.sigma)
    # an unreadable cache file is rebuilt, not fatal
    files[0].write_bytes(b"not a zip")
    rebuilt = inc.get_inception_reference(weights["path"], "mnist_5k", **kwargs)
    np.testing.assert_allclose(rebuilt.mu, first.mu, rtol=1e-6)
    test_x, _ = load_images("mnist_5k", "test", limit=8)
    own = inc.inception_fid(first, to_model_range(test_x), 8, SIDE, num_splits=2)
    noise = inc.inception_fid(first, rng.uniform(-1, 1, (8, 28, 28, 1)).astype(np.float32), 8, SIDE, num_splits=2)
    assert own["fid_inception"] < 1e-6 * noise["fid_inception"]
    assert 1.0 <= own["inception_score"] <= 1008


def test_gan_evaluation_adds_inception_fid_when_given_weights(weights, tmp_path, monkeypatch):
    # The classifier metrics have their own tests (test_evaluation.py); stubbed here, so this
    # test pays for the GAN step and the Inception hook only.
    from zoo.gan import evaluation

    monkeypatch.setattr(evaluation, "get_reference", lambda *a, **k: None)
    monkeypatch.setattr(evaluation, "evaluate_samples", lambda *a, **k: {"fid_classifier": 1.0})
    config = load_config("zoo.gan.configs.dcgan:smoke")
    config.eval.update(inception_weights=str(weights["path"]), inception_side=SIDE, inception_batch_size=8,
                       num_samples=8, reference_test_limit=16)  # fmt: skip
    config.train.update(num_steps=2, log_every=1, ckpt_every=2)
    _, metrics = train_and_evaluate(config, tmp_path)
    assert metrics["fid_classifier"] == 1.0  # the stub: the classifier path ran beside the hook
    for key in ("fid_inception", "inception_score", "fid_inception_ema", "inception_score_ema"):
        assert np.isfinite(metrics[key]) and metrics[key] > 0, key


# --------------------------------------------------------------------------- #
# Against pytorch-fid itself (peers installed)
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def pytorch_fid(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_fid")
    from benchmarks.peers.fid_inception_torch import make_pytorch_fid_inception

    model, fc, state_dict = make_pytorch_fid_inception(seed=0, calibration_side=128)
    path = tmp_path_factory.mktemp("pytorch_fid") / "random.pth"
    torch.save(state_dict, path)
    return torch, model, fc, path


@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (2, 64, 64, 3)])
def test_equals_pytorch_fid_on_the_same_weights(pytorch_fid, shape, rng):
    torch, model, fc, path = pytorch_fid
    variables = inc.load_inception(path, warn_if_not_pytorch_fid=False)
    images = rng.uniform(-1, 1, shape).astype(np.float32)
    unit = np.round((images + 1) * 127.5) / 255.0  # what pytorch-fid reads from a PNG
    x = torch.tensor(np.broadcast_to(unit, (*shape[:3], 3)).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        pool_t = model(x)[0].flatten(1)  # resizes to 299 itself
        logits_t = fc(pool_t).numpy()
    pool, logits = inc.inception_outputs(variables, images, batch_size=len(images))
    np.testing.assert_allclose(pool, pool_t.numpy(), rtol=0, atol=1e-5 * np.abs(pool_t.numpy()).max())
    np.testing.assert_allclose(logits, logits_t, rtol=0, atol=1e-5 * np.abs(logits_t).max())
