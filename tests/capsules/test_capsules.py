"""The capsule family: layers, losses, the two-digit test, data builders and smoke training."""

import gzip
import itertools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax import lax

from zoo import cli
from zoo.capsules import losses, task
from zoo.capsules.model import CapsNet, CNNBaseline, SuCapsNet
from zoo.core.layers import ValidConv, im2col_conv
from zoo.data.images import ZooFashionMnist, load_images, read_idx


# --------------------------------------------------------------------------- #
# layers
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("k,s,h,w", [(9, 2, 20, 20), (5, 2, 28, 27), (3, 3, 11, 10), (4, 2, 9, 12), (3, 1, 7, 7)])
def test_im2col_conv_equals_native_conv(rng, k, s, h, w):
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    kernel = rng.normal(size=(k, k, 3, 5)).astype(np.float32)

    def native(x, kernel):
        return lax.conv_general_dilated(x, kernel, (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    # jitted: eagerly, each of the k² strided slices would compile on its own
    want = jax.jit(native)(x, kernel)
    got = jax.jit(im2col_conv, static_argnums=2)(x, kernel, s)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    probe = rng.normal(size=want.shape).astype(np.float32)
    g_want = jax.jit(jax.grad(lambda a, b: jnp.sum(native(a, b) * probe), argnums=(0, 1)))(x, kernel)
    g_got = jax.jit(jax.grad(lambda a, b: jnp.sum(im2col_conv(a, b, s) * probe), argnums=(0, 1)))(x, kernel)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_valid_conv_has_nn_conv_parameters(rng):
    x = jnp.asarray(rng.normal(size=(1, 13, 13, 2)), jnp.float32)
    params = ValidConv(4, 5, 2).init(jax.random.key(0), x)["params"]
    assert params["kernel"].shape == (5, 5, 2, 4) and params["bias"].shape == (4,)
    import flax.linen as nn

    want = nn.Conv(4, (5, 5), (2, 2), padding="VALID").apply({"params": params}, x)
    np.testing.assert_allclose(ValidConv(4, 5, 2).apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)


def test_capsnet_cpu_settings_change_no_loss_or_gradient(rng):
    """``routing_chunk`` and ``bias_grad_as_matmul`` (set by configs/capsnet.py) only change how
    the step is computed: same parameters, outputs and gradients as the defaults."""
    sizes = dict(conv_features=8, primary_types=4, primary_dim=4, class_dim=6, decoder_features=(16,))
    images = jnp.asarray(rng.uniform(size=(3, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray([1, 7, 3])
    plain, tuned = CapsNet(**sizes), CapsNet(**sizes, routing_chunk=48, bias_grad_as_matmul=True)
    params = plain.init(jax.random.key(0), images, labels)["params"]
    assert jax.tree.map(jnp.shape, tuned.init(jax.random.key(0), images, labels)["params"]) == jax.tree.map(
        jnp.shape, params
    )

    def loss(model):
        def fn(p):
            lengths, pixels = model.apply({"params": p}, images, labels)
            return losses.margin_loss(lengths, labels) + 0.0005 * jnp.sum(jnp.square(pixels - images))

        return jax.jit(jax.value_and_grad(fn))(params)

    (got, g_got), (want, g_want) = loss(tuned), loss(plain)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_em_capsnet_vote_factors_change_no_loss_or_gradient(rng, monkeypatch):
    """ConvCapsules hands em_routing the votes' factors (a scan over offsets for the sums over
    children); that changes only the summation order: in float64 the smoke EMCapsNet's loss and
    gradients equal those of em_routing on the votes alone."""
    from kernels import routing
    from zoo.capsules.configs import em_capsnet

    config = em_capsnet.get_config("smoke")
    model = task.make_model(config)
    with jax.enable_x64(True):
        batch = {"images": jnp.asarray(rng.uniform(size=(3, 28, 28, 1))), "labels": jnp.asarray([1, 7, 3]),
                 "margin": jnp.full((3,), 0.2)}  # fmt: skip
        params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(0), batch["images"])["params"])

        def value_and_grad():
            return jax.jit(jax.value_and_grad(lambda p: task.loss_and_metrics(model, config, p, batch)[0]))(params)

        with_factors = value_and_grad()
        em_routing = routing.em_routing
        monkeypatch.setattr(routing, "em_routing", lambda *a, vote_factors=None, **kw: em_routing(*a, **kw))
        votes_only = value_and_grad()
    np.testing.assert_allclose(with_factors[0], votes_only[0], rtol=1e-12)
    for a, b in zip(jax.tree.leaves(with_factors[1]), jax.tree.leaves(votes_only[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_su_capsule_takes_any_image_size_and_couplings_sum_to_one():
    model = SuCapsNet(variant="su")
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    for shape, n_caps in (((2, 28, 28, 1), 64), ((2, 56, 28, 1), 176)):
        lengths, coupling = model.apply(params, jnp.full(shape, 0.5), return_coupling=True)
        assert lengths.shape == (2, 10) and coupling.shape == (2, n_caps, 10)
        np.testing.assert_allclose(coupling.sum(-1), 1.0, rtol=1e-5)
        assert np.all((np.asarray(lengths) > 0) & (np.asarray(lengths) < 1))
    assert CNNBaseline().apply(CNNBaseline().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))), jnp.zeros((3, 56, 28, 1))).shape == (3, 10)


# --------------------------------------------------------------------------- #
# losses
# --------------------------------------------------------------------------- #


def test_margin_loss_matches_formula(rng):
    scores = rng.uniform(size=(4, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=4)
    want = 0.0
    for b in range(4):
        for k in range(10):
            if k == labels[b]:
                want += max(0.0, 0.9 - scores[b, k]) ** 2
            else:
                want += 0.25 * max(0.0, scores[b, k] - 0.1) ** 2
    got = losses.margin_loss(jnp.asarray(scores), jnp.asarray(labels), down_weight=0.25)
    np.testing.assert_allclose(got, want / 4, rtol=1e-5)


def test_spread_loss_matches_formula_and_margin_per_example(rng):
    act = rng.uniform(size=(3, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=3)
    margins = np.array([0.2, 0.5, 0.9], np.float32)
    want = np.mean([
        sum(max(0.0, margins[b] - (act[b, labels[b]] - act[b, k])) ** 2 for k in range(5) if k != labels[b])
        for b in range(3)
    ])  # fmt: skip
    np.testing.assert_allclose(losses.spread_loss(jnp.asarray(act), jnp.asarray(labels), margins), want, rtol=1e-5)


# --------------------------------------------------------------------------- #
# the two-digit test
# --------------------------------------------------------------------------- #


def test_stack_two_digits_pairs_different_labels(rng):
    images = rng.integers(0, 255, size=(40, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40).astype(np.int32)
    stacked, pairs = task.stack_two_digits(images, labels, seed=3)
    assert stacked.shape == (40, 56, 28, 1) and pairs.shape == (40, 2)
    assert np.all(pairs[:, 0] == labels) and np.all(pairs[:, 0] != pairs[:, 1])
    np.testing.assert_array_equal(stacked[:, :28], images)
    again, _ = task.stack_two_digits(images, labels, seed=3)
    np.testing.assert_array_equal(stacked, again)


def test_two_digit_accuracy_counts_both_definitions():
    pairs = np.array([[1, 2], [3, 4], [5, 6]])
    scores = np.zeros((3, 10))
    scores[0, [1, 2]] = [0.9, 0.8]  # right pair, confident
    scores[1, [3, 4]] = [0.9, 0.3]  # right pair, second score below 0.5
    scores[2, [5, 7]] = [0.9, 0.8]  # wrong second class
    acc = task.two_digit_accuracy(scores, pairs)
    assert acc == {"two_digit_top2": 2 / 3, "two_digit_top2_confident": 1 / 3}


def _translate(image, dy, dx):
    """``image [H, W, C]`` moved by ``(dy, dx)`` pixels, what leaves the frame dropped, zeros coming in."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[max(-dy, 0) : h - max(dy, 0),
                                                                           max(-dx, 0) : w - max(dx, 0)]  # fmt: skip
    return out


def test_random_shift_translates_each_image_with_zero_fill(rng):
    """Every output is its input translated by some (dy, dx) in [−2, 2]² with zero fill (no wrap-around);
    over 64 images several different shifts occur."""
    images = rng.random((64, 8, 8, 1)).astype(np.float32) + 0.5  # no zeros inside: fill is visible
    shifted = task.random_shift(images, 2, rng)
    assert shifted.shape == images.shape
    seen = set()
    for image, out in zip(images, shifted):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if np.array_equal(out, _translate(image, dy, dx))]
        assert len(matches) == 1, matches
        seen.add(matches[0])
    assert len(seen) >= 5 and seen != {(0, 0)}
    assert task.random_shift(images, 0, rng) is images


def test_random_flip_mirrors_about_half_of_the_images_and_no_others(rng):
    images = rng.random((200, 6, 5, 2)).astype(np.float32)
    flipped = task.random_flip(images, rng)
    assert flipped.shape == images.shape
    mirrored = np.array([np.array_equal(out, image[:, ::-1]) for image, out in zip(images, flipped)])
    kept = np.array([np.array_equal(out, image) for image, out in zip(images, flipped)])
    assert np.all(mirrored ^ kept)
    assert 60 <= mirrored.sum() <= 140  # Binomial(200, 1/2): outside this range with probability < 1e-8


# --------------------------------------------------------------------------- #
# data
# --------------------------------------------------------------------------- #


def test_mnist5k_from_the_installed_package_is_split_450_50_per_class(tmp_path):
    train_x, train_y = load_images("mnist_5k", "train", data_dir=tmp_path)
    test_x, test_y = load_images("mnist_5k", "test", data_dir=tmp_path)
    assert train_x.shape == (4500, 28, 28, 1) and test_x.shape == (500, 28, 28, 1)
    assert np.all(np.bincount(train_y) == 450) and np.all(np.bincount(test_y) == 50)
    assert train_x.dtype == np.uint8 and train_x.max() > 200
    # no image is in both splits
    train_keys = {x.tobytes() for x in train_x}
    assert not any(x.tobytes() in train_keys for x in test_x)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_builder_reads_idx_files(tmp_path, rng):
    raw = tmp_path / "raw"
    raw.mkdir()
    data = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        data[prefix] = (rng.integers(0, 256, size=(n, 28, 28)), rng.integers(0, 10, size=n))
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", data[prefix][0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", data[prefix][1])
    np.testing.assert_array_equal(read_idx(raw / "t10k-images-idx3-ubyte.gz"), data["t10k"][0])
    builder = ZooFashionMnist(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))
    source = builder.as_data_source(split="test")
    got = sorted((int(source[i]["label"]), source[i]["image"].tobytes()) for i in range(len(source)))
    want = sorted((int(y), x[..., None].astype(np.uint8).tobytes()) for x, y in zip(*data["t10k"]))
    assert got == want


def test_missing_fashion_mnist_names_the_data_script(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_RAW_DIR", str(tmp_path / "nothing"))
    monkeypatch.setattr("zoo.data.images.Path.exists", lambda self: False)
    with pytest.raises(FileNotFoundError, match="scripts/get_data.sh fashion_mnist"):
        load_images("fashion_mnist", "test", data_dir=tmp_path)


# --------------------------------------------------------------------------- #
# smoke training of every model (tfds mock data stands in for Fashion-MNIST / smallNORB)
# --------------------------------------------------------------------------- #


def train_smoke(model, tmp_path, *extra):
    workdir = tmp_path / model
    assert cli.main(["train", model, "--config", "smoke", "--workdir", str(workdir), *extra]) == 0
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["split"] == "train"]
    assert train and all(np.isfinite(r["loss"]) for r in train)
    return workdir, [r for r in lines if r["split"] == "eval"][-1]


@pytest.mark.parametrize("model", ["su_capsule", "cnn_baseline"])
def test_two_digit_models_train_and_report_both_accuracies(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "tfds"))
    # cnn_baseline: 20 steps with an EMA, after which weights and EMA differ in test accuracy (4% vs 16%)
    ema = ["--config.train.ema_decay=0.5", "--config.train.num_steps=20", "--config.train.ckpt_every=10"]
    workdir, ev = train_smoke(model, tmp_path, *(ema if model == "cnn_baseline" else []))
    assert {"test_accuracy", "two_digit_top2", "two_digit_top2_confident"} <= set(ev)
    assert ev["two_digit_top2_confident"] <= ev["two_digit_top2"]
    if model == "su_capsule":  # `zoo eval` restores the checkpoint and reproduces the final evaluation
        capsys.readouterr()
        assert cli.main(["eval", str(workdir)]) == 0
        printed = json.loads(capsys.readouterr().out.split("evaluation: ")[1])
        assert printed == {k: round(v, 4) for k, v in ev.items() if k not in ("step", "split")}
        with pytest.raises(SystemExit, match="needs a CRF run"):
            cli.main(["predict", str(workdir), "text"])
        with pytest.raises(SystemExit, match="ema=True.*ema_decay"):
            cli.main(["compare", str(workdir), f"{workdir}:ema"])
        other = tmp_path / "not_capsules"  # only the config is read before the family check
        other.mkdir()
        config = json.loads((workdir / "config.json").read_text())
        (other / "config.json").write_text(json.dumps({**config, "model_name": "crf_seg"}))
        with pytest.raises(SystemExit, match="capsule-family run; got a crf run"):
            cli.main(["compare", str(workdir), str(other)])
        other_data = {**config, "data": {**config["data"], "name": "fashion_mnist"}}
        (other / "config.json").write_text(json.dumps(other_data))
        with pytest.raises(SystemExit, match="different test sets.*fashion_mnist"):
            cli.main(["compare", str(workdir), str(other)])
        return
    # `zoo compare`: the restored weights and EMA reproduce the run's own two test accuracies
    assert ev["test_accuracy"] != ev["test_accuracy_ema"]  # else a swap of the two would pass unseen
    capsys.readouterr()
    assert cli.main(["compare", str(workdir), f"{workdir}:ema"]) == 0
    r = json.loads(capsys.readouterr().out.split("evaluation: ")[1])
    assert (r["accuracy_a"], r["accuracy_b"]) == pytest.approx((ev["test_accuracy"], ev["test_accuracy_ema"]), abs=1e-6)
    assert r["difference"] == pytest.approx((r["only_a"] - r["only_b"]) / r["n"], abs=1e-6)
    # the run's record without its checkpoints (as docs/ keeps them) gives the same paired test
    record = tmp_path / "record"
    record.mkdir()
    for name in ("config.json", "test_correct.npz", "test_correct_ema.npz"):
        shutil.copy(workdir / name, record / name)
    assert cli.main(["compare", str(record), f"{record}:ema"]) == 0
    out = capsys.readouterr().out
    assert "from its saved record" in out
    assert json.loads(out.split("evaluation: ")[1]) == r


def test_capsnet_trains_on_mock_fashion_mnist_and_saves_reconstructions(tmp_path):
    with tfds.testing.mock_data(num_examples=64, data_dir=str(tmp_path / "mock")):
        workdir, ev = train_smoke("capsnet", tmp_path, "--config.data.name=tfds:fashion_mnist")
    assert 0 <= ev["test_accuracy"] <= 1
    assert (workdir / "reconstructions.png").stat().st_size > 0


def test_flip_changes_only_the_mirrored_training_images(tmp_path, monkeypatch):
    """``data.flip`` draws from its own stream: the shifts and the batch order stay those of the run
    without it, and each image is either the unflipped one or its mirror."""
    from zoo.capsules.configs import su_capsule

    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "tfds"))

    def first_batches(flip):
        config = su_capsule.get_config("smoke")
        config.data.flip = flip
        return list(itertools.islice(task.get_task(config, tmp_path).train_batches(3), 4))

    plain, flipped = first_batches(False), first_batches(True)
    mirrored = 0
    for a, b in zip(plain, flipped):
        np.testing.assert_array_equal(a["labels"], b["labels"])
        same = np.all(a["images"] == b["images"], axis=(1, 2, 3))
        mirror = np.all(a["images"][:, :, ::-1] == b["images"], axis=(1, 2, 3))
        assert np.all(same | mirror)
        mirrored += int(np.sum(mirror & ~same))
    assert mirrored > 0


def test_em_capsnet_trains_on_mock_smallnorb_resized(tmp_path):
    with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path / "mock")):
        _, ev = train_smoke(
            "em_capsnet", tmp_path, "--config.data.name=tfds:smallnorb", "--config.data.resize=32",
            "--config.data.shift=0",
        )  # fmt: skip
    assert 0 <= ev["test_accuracy"] <= 1


def test_capsule_train_step_does_not_recompile(tmp_path, monkeypatch):
    from tests.helpers import count_compilations
    from zoo.capsules.configs import su_capsule
    from zoo.core import parallel
    from zoo.core.train import init_state, make_train_step

    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "tfds"))
    config = su_capsule.get_config("smoke")
    t = task.get_task(config, tmp_path)
    mesh = parallel.data_mesh(1)
    state = init_state(t, jax.random.key(0), mesh)
    step = make_train_step(t, mesh)
    batches = t.train_batches(0)
    state, _ = step(state, parallel.shard_batch(next(batches), mesh), jax.random.key(1))
    with count_compilations() as compiled:
        state, metrics = step(state, parallel.shard_batch(next(batches), mesh), jax.random.key(1))
        jax.block_until_ready(metrics)
    assert compiled == []


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: losses.margin_loss(s, jnp.array([[0], [1]])), r"margin_loss: `labels` must be \[B\] class ids or \[B, K\] = \(2, 3\) targets; got shape \(2, 1\)"),
        (lambda s: losses.margin_loss(s, jnp.array([0, 7])), r"margin_loss: `labels` must be class ids in \[0, 3\); got values in \[0, 7\]"),
        (lambda s: losses.margin_loss(s, jnp.array([0.0, 1.0])), r"margin_loss: `labels` must be \[B\] = \[2\] integer class ids .*; got shape \(2,\), dtype float32"),
        (lambda s: losses.margin_loss(s[0], jnp.array([0])), r"margin_loss: `scores` must be \[B, K\] \(rank 2\); got shape \(3,\)"),
        (lambda s: losses.spread_loss(s, jnp.array([0, -1]), 0.5), r"spread_loss: `labels` must be class ids in \[0, 3\); got values in \[-1, 0\]"),
        (lambda s: losses.spread_loss(s, jnp.array([[0, 1, 0], [1, 0, 0]]), 0.5), r"spread_loss: `labels` must be \[B\] = \[2\] integer class ids; got shape \(2, 3\)"),
        (lambda s: losses.spread_loss(s, jnp.array([0, 1]), jnp.array([0.5])), r"spread_loss: `margin` must be a scalar or \[B\] = \(2,\); got shape \(1,\)"),
    ],
)
def test_capsule_losses_reject_bad_labels_and_margins(call, message):
    """A [B, 1] label column would broadcast as multi-hot targets, an id >= K drops the positive term
    (margin) or gives NaN (spread): both raise instead."""
    scores = jnp.array([[0.95, 0.05, 0.05], [0.05, 0.95, 0.05]])
    with pytest.raises(ValueError, match=message):
        call(scores)


def test_im2col_conv_rejects_a_kernel_whose_channels_differ_from_the_input():
    with pytest.raises(ValueError, match=r"im2col_conv: `kernel` must be \[kh, kw, C, F\] with C = x's channels.*got kernel \(3, 3, 4, 1\), x \(1, 5, 5, 2\)"):
        im2col_conv(jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 4, 1)), 1)
