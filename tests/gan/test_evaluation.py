"""GAN evaluation: Fréchet distance, classifier score, and the cached classifier reference."""

import socket

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from zoo.data.images import load_images
from zoo.gan import evaluation as ev


def random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d + 3))
    return a @ a.T / a.shape[1]


# --------------------------------------------------------------------------- #
# Fréchet distance and statistics
# --------------------------------------------------------------------------- #


def sqrtm_fd(mu1, s1, mu2, s2):
    """The textbook formula with scipy's matrix square root."""
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


@pytest.mark.parametrize("d", [2, 16])
def test_frechet_distance_matches_sqrtm_formula(rng, d):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    np.testing.assert_allclose(ev.frechet_distance(mu1, s1, mu2, s2), sqrtm_fd(mu1, s1, mu2, s2), rtol=1e-6)


def test_frechet_distance_zero_for_identical_and_symmetric(rng):
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    s1, s2 = random_spd(rng, 10), random_spd(rng, 10, rank=4)  # rank-deficient: clipped eigenvalues
    assert ev.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert ev.frechet_distance(mu2, s2, mu2, s2) == pytest.approx(0.0, abs=1e-9)
    # rtol 1e-7, not 1e-15: sqrt of the rounded near-zero eigenvalues of a rank-deficient Σ
    # is ~sqrt(eps) ≈ 1e-8 relative, whichever side it is on.
    np.testing.assert_allclose(ev.frechet_distance(mu1, s1, mu2, s2), ev.frechet_distance(mu2, s2, mu1, s1), rtol=1e-7)


def test_frechet_distance_1d_closed_form():
    # N(m1, σ1²) vs N(m2, σ2²): (m1 − m2)² + (σ1 − σ2)²
    m1, sd1, m2, sd2 = 0.3, 2.0, -1.2, 0.5
    got = ev.frechet_distance([m1], [[sd1**2]], [m2], [[sd2**2]])
    assert got == pytest.approx((m1 - m2) ** 2 + (sd1 - sd2) ** 2, rel=1e-12)


def test_feature_statistics_match_numpy(rng):
    f = rng.normal(size=(50, 6)).astype(np.float32) * 3 + 1
    mu, sigma = ev.feature_statistics(f)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (6, 6)
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False), rtol=1e-10)
    assert ev.feature_statistics(f[:, :1])[1].shape == (1, 1)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: ev.feature_statistics(np.zeros(5)), "features"),
        (lambda: ev.feature_statistics(np.zeros((1, 3))), "features"),
        (lambda: ev.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4)), "sigma2"),
        (lambda: ev.frechet_distance(np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), "mu1"),
        (lambda: ev.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2)), "mu2"),
        (lambda: ev.frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2)), "sigma1"),
        (lambda: ev.classifier_score(np.ones(4) / 4), "probs"),
        (lambda: ev.classifier_score(np.ones((3, 4))), "probs"),
        (lambda: ev.classifier_score(np.ones((3, 4)) / 4, num_splits=4), "num_splits"),
    ],
)
def test_bad_arguments_raise_naming_them(call, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be .*; got "):
        call()


# --------------------------------------------------------------------------- #
# Classifier score
# --------------------------------------------------------------------------- #


def test_classifier_score_extremes():
    k = 7
    confident_spread = np.eye(k)[np.arange(70) % k]  # one-hot, each class equally often
    assert ev.classifier_score(confident_spread) == pytest.approx(k, rel=1e-12)
    assert ev.classifier_score(confident_spread, num_splits=10) == pytest.approx(k, rel=1e-12)
    same = np.tile([0.1, 0.6, 0.3, 0.0], (20, 1))  # identical predictions, with a zero
    assert ev.classifier_score(same) == pytest.approx(1.0, rel=1e-12)


def direct_score(p):
    py = p.mean(0)
    return np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1)))


def test_classifier_score_matches_direct_formula(rng):
    logits = rng.normal(size=(30, 5)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert ev.classifier_score(p.astype(np.float32)) == pytest.approx(direct_score(p), rel=1e-6)
    want = np.mean([direct_score(part) for part in (p[:10], p[10:20], p[20:])])
    assert ev.classifier_score(p, num_splits=3) == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------------- #
# Reference classifier, cache, and metrics on images
# --------------------------------------------------------------------------- #

TINY = {"steps": 30, "batch_size": 32, "train_limit": 500, "seed": 0}


def _no_network(*args, **kwargs):
    raise RuntimeError(f"tests must not touch the network (attempted: {args[:2]!r})")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A reference trained on 500 mnist_5k digits for 30 steps, built twice from one cache."""
    root = tmp_path_factory.mktemp("gan_eval")
    data_dir, cache_dir = root / "tfds", root / "cache"
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        # conftest's no_network is function-scoped and not yet active for a module fixture
        for target, name in ((socket, "create_connection"), (socket, "getaddrinfo"), (socket.socket, "connect")):
            mp.setattr(target, name, _no_network)
        train = ev.train_classifier
        mp.setattr(ev, "train_classifier", lambda *a, **k: calls.append(k) or train(*a, **k))
        first = ev.get_reference("mnist_5k", data_dir, cache_dir=cache_dir, **TINY)
        second = ev.get_reference("mnist_5k", data_dir, cache_dir=cache_dir, **TINY)
    return {"first": first, "second": second, "calls": calls, "data_dir": data_dir, "cache_dir": cache_dir}


def test_reference_is_trained_once_then_read_from_cache(tiny):
    first, second = tiny["first"], tiny["second"]
    assert len(tiny["calls"]) == 1 and tiny["calls"][0]["steps"] == 30
    files = sorted(p.name for p in tiny["cache_dir"].rglob("*"))
    assert len(files) == 1 and files[0].startswith("mnist_5k-") and files[0].endswith(".npz")  # no tmp left behind
    assert second.dataset == "mnist_5k" and second.num_test == first.num_test == 500
    assert second.test_accuracy == first.test_accuracy > 0.5  # 30 steps already beat chance (0.1) by far
    np.testing.assert_array_equal(second.mu, first.mu)
    np.testing.assert_array_equal(second.sigma, first.sigma)
    np.testing.assert_array_equal(second.params["conv2"]["kernel"], first.params["conv2"]["kernel"])
    assert first.mu.shape == (128,) and first.sigma.shape == (128, 128)


def test_default_budget_caps_epochs(tiny, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ev, "train_classifier", lambda *a, **k: calls.append(k) or tiny["first"].params)
    ref = ev.get_reference("mnist_5k", tiny["data_dir"], cache_dir=tmp_path, batch_size=32, train_limit=500)
    assert calls[0]["steps"] == 10 * 500 // 32  # 10 epochs < 1,500 steps
    assert ref.test_accuracy == tiny["first"].test_accuracy


def test_train_classifier_is_deterministic_for_a_seed(tiny):
    images, labels = load_images("mnist_5k", "train", data_dir=tiny["data_dir"], limit=TINY["train_limit"])
    settings = {"num_classes": 10, "steps": TINY["steps"], "batch_size": TINY["batch_size"]}  # compiled by the fixture
    again = ev.train_classifier(images, labels, seed=TINY["seed"], **settings)
    for name in ("conv1", "conv2", "hidden", "logits"):
        np.testing.assert_array_equal(again[name]["kernel"], tiny["first"].params[name]["kernel"])
    with pytest.raises(ValueError, match="`labels` must be in"):
        ev.train_classifier(images, labels + 1, **settings)


def test_cache_key_and_unreadable_file(tmp_path):
    a = ev._cache_path(tmp_path, {"dataset": "tfds:mnist", "steps": 1})
    assert a != ev._cache_path(tmp_path, {"dataset": "tfds:mnist", "steps": 2}) and ":" not in a.name
    a.write_bytes(b"not a zip")
    assert ev._load_reference(a, {"dataset": "tfds:mnist", "steps": 1}) is None


def test_real_images_score_far_better_than_noise(tiny, rng):
    ref = tiny["second"]
    test_x, _ = load_images("mnist_5k", "test", data_dir=tiny["data_dir"])
    train_x, _ = load_images("mnist_5k", "train", data_dir=tiny["data_dir"], limit=1000)
    unseen = train_x[500:]  # real digits the classifier was not trained on (it saw the first 500)
    own = ev.evaluate_samples(ref, ev.to_model_range(test_x))
    real = ev.evaluate_samples(ref, ev.to_model_range(unseen))
    noise = ev.evaluate_samples(ref, rng.uniform(-1, 1, unseen.shape).astype(np.float32))
    assert own["fid_classifier"] == pytest.approx(0.0, abs=1e-6)
    assert real["fid_classifier"] < 0.1 * noise["fid_classifier"]
    # 30 steps leave the softmax unconfident (score ~2 of at most 10), noise is one class (~1)
    assert real["classifier_score"] > 1.5 * noise["classifier_score"]
    assert 1.0 <= noise["classifier_score"] and real["classifier_score"] <= 10.0
    assert ev.real_data_fid(ref, unseen) == pytest.approx(real["fid_classifier"], rel=1e-9)


def test_evaluate_samples_rejects_bad_samples(tiny):
    ref = tiny["first"]
    good = np.zeros((4, 28, 28, 1), np.float32)
    with pytest.raises(ValueError, match="`samples` must be images of shape"):
        ev.evaluate_samples(ref, good[0])
    with pytest.raises(ValueError, match="`samples` must be images of the reference's size"):
        ev.evaluate_samples(ref, np.zeros((4, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match="`samples` must be finite"):
        ev.evaluate_samples(ref, np.where(np.arange(28)[:, None] == 3, np.nan, good))
    with pytest.raises(ValueError, match=r"`samples` must be in \[-1, 1\]"):
        ev.evaluate_samples(ref, good + 255.0)
    with pytest.raises(ValueError, match="`images_uint8` must be uint8"):
        ev.real_data_fid(ref, good)


def test_metric_names_say_which_classifier():
    names = ev.metric_names("fashion_mnist")
    assert names["fid_classifier"] == "FID (Fashion-MNIST classifier)"
    assert names["classifier_score"] == "classifier score (Fashion-MNIST classifier)"
    assert ev.metric_names("mnist_5k")["fid_classifier"] == "FID (MNIST-5k classifier)"


def test_save_sample_grid_writes_png(tmp_path):
    samples = np.linspace(-1, 1, 10 * 28 * 28).reshape(10, 28, 28, 1)
    path = ev.save_sample_grid(samples, tmp_path / "samples.png", columns=5, scale=2)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * (2 * 29 + 1), 2 * (5 * 29 + 1)) and img.max() == 255
