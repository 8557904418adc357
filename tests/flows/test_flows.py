"""The flow family: every bijector layer and whole model round-trips, its log-det equals
``slogdet`` of the dense Jacobian, and training, sampling and the CLI work on smoke configs."""

import functools
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import flows as F
from tests.helpers import count_compilations
from zoo import cli
from zoo.core import parallel
from zoo.core.train import init_state, make_train_step
from zoo.flows import layers, task
from zoo.flows.configs import glow, nice, realnvp
from zoo.flows.model import NICE, MultiScaleFlow

SHAPE = (8, 8, 1)
MODELS = {
    "glow": dict(actnorm="data", permutation="lu", coupling="affine"),
    "glow_author": dict(actnorm="zero", permutation="random", coupling="additive", final_actnorm=True, learn_top=False),
}
FIXED = ("perm", "sign_s", "permutation")  # held by stop_gradient: perturbing them breaks the bijection


def perturb(variables, key, scale=0.05):
    """Moves every trainable parameter off its (often identity) initial value."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(key, len(leaves))
    out = [
        leaf if any(getattr(k, "key", None) in FIXED for k in path) else leaf + scale * jax.random.normal(k, leaf.shape)
        for (path, leaf), k in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def make(name):
    if name == "nice":
        return NICE(SHAPE, num_couplings=4, hidden=16, num_hidden_layers=2)
    if name == "glow_options":  # Glow's exp(3·logs) zero convs and top prior, PyTorch's init
        return MultiScaleFlow(SHAPE, levels=2, depth=2, width=8, coupling_init="torch", logscale_factor=3.0)
    if name == "glow_per_channel_priors":  # normflows' priors, with the exp(3·logs) scaling
        return MultiScaleFlow(SHAPE, levels=2, depth=2, width=8, priors="per_channel", logscale_factor=3.0)
    return MultiScaleFlow(SHAPE, levels=2, depth=2, width=8, **MODELS[name])


def images(rng, n=4):
    return (rng.uniform(size=(n, *SHAPE)) - 0.5).astype(np.float32)


@functools.lru_cache(maxsize=None)
def initialised(name):
    """``(model, x, variables at init, perturbed variables)``, built once per test session:
    XLA compile time of ``init`` dominates these tests."""
    model = make(name)
    x = images(np.random.default_rng(zlib.crc32(name.encode())))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    return model, x, variables, perturb(variables, jax.random.key(1))


# slogdet 1x1 / actnorm="none" / unrolled: layer and scan tests
@pytest.mark.parametrize("name", [*MODELS, "nice", "glow_options", "glow_per_channel_priors"])
def test_model_round_trips_and_log_det_equals_slogdet_of_the_jacobian(name):
    model, x, _, variables = initialised(name)
    apply = jax.jit(model.apply, static_argnames="inverse")
    z, log_det = apply(variables, x)
    assert z.shape == (4, 64) and log_det.shape == (4,)
    x_back, inv_log_det = apply(variables, z, inverse=True)
    np.testing.assert_allclose(x_back, x, atol=1e-4)
    np.testing.assert_allclose(inv_log_det, -log_det, rtol=1e-5, atol=1e-5)
    jac = jax.jit(jax.jacfwd(lambda v: apply(variables, v.reshape(1, *SHAPE))[0][0]))
    for n in range(2):
        want = jnp.linalg.slogdet(jac(x[n].reshape(-1)))[1]
        np.testing.assert_allclose(float(log_det[n]), float(want), rtol=1e-5, atol=1e-5)


def test_layers_round_trip_with_exact_log_dets(rng):
    x = rng.normal(size=(3, 4, 4, 4)).astype(np.float32)
    for layer in (layers.InvConv1x1(lu=False), layers.Permute("reverse"), layers.Coupling(8, "additive", sign=-1.0),
                  layers.FlowStep(8, actnorm="none", permutation="random")):  # fmt: skip
        variables = perturb(layer.init(jax.random.key(0), x), jax.random.key(2))
        y, log_det = layer.forward_and_log_det(variables, x)
        x_back, inv = layer.inverse_and_log_det(variables, y)
        np.testing.assert_allclose(x_back, x, atol=1e-4, err_msg=type(layer).__name__)
        np.testing.assert_allclose(inv, -log_det, rtol=1e-5, atol=1e-5)
        jac = jax.jacfwd(lambda v: layer.forward_and_log_det(variables, v.reshape(1, 4, 4, 4))[0].reshape(-1))
        want = jnp.linalg.slogdet(jac(x[0].reshape(-1)))[1]
        np.testing.assert_allclose(float(log_det[0]), float(want), rtol=1e-5, atol=1e-5, err_msg=type(layer).__name__)


def test_actnorm_data_init_gives_zero_mean_unit_variance_on_the_init_batch(rng):
    x = (2.0 + 3.0 * rng.normal(size=(32, 4, 4, 2))).astype(np.float32)
    layer = layers.ActNorm("data")
    y, _ = layer.apply(layer.init(jax.random.key(0), x), x)
    flat = np.asarray(y).reshape(-1, 2)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-4)
    zero = layers.ActNorm("zero")
    np.testing.assert_array_equal(zero.apply(zero.init(jax.random.key(0), x), x)[0], x)  # the author's: identity at start
    # In a whole Glow the first actnorm sees the squeezed input: its output is standardised too.
    _, image, variables, _ = initialised("glow")
    first = jax.tree.map(lambda p: p[0], variables["params"]["steps_0"]["layers_0"])
    want_loc, want_log_scale = F.actnorm_data_init(F.squeeze(image))
    np.testing.assert_allclose(first["loc"], want_loc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first["log_scale"], want_log_scale, rtol=1e-5, atol=1e-6)
    # and each scanned step initialises from its own input: step 1's actnorm from step 0's output
    level0 = jax.tree.map(lambda p: p[0], variables["params"]["steps_0"])
    out0, _ = layers.FlowStep(8, **{k: MODELS["glow"][k] for k in ("actnorm", "permutation", "coupling")}).apply(
        {"params": level0}, F.squeeze(image)
    )
    second = jax.tree.map(lambda p: p[1], variables["params"]["steps_0"]["layers_0"])
    want_loc, want_log_scale = F.actnorm_data_init(out0)
    np.testing.assert_allclose(second["loc"], want_loc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(second["log_scale"], want_log_scale, rtol=1e-4, atol=1e-5)


def test_fixed_arrays_get_zero_gradients():
    for name in ("glow", "glow_author"):
        m, x, _, v = initialised(name)
        g = jax.jit(jax.grad(lambda v: jnp.sum(m.apply(v, x, method="log_prob"))))(v)
        for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
            if any(getattr(k, "key", None) in FIXED for k in path):
                np.testing.assert_array_equal(leaf, 0.0)


def test_jit_and_vmap_agree_with_one_example_at_a_time():
    model, x, _, variables = initialised("glow")
    log_prob = jax.jit(lambda v: model.apply(variables, v, method="log_prob"))
    singles = np.concatenate([log_prob(x[i : i + 1]) for i in range(len(x))])  # examples are independent
    np.testing.assert_allclose(log_prob(x), singles, rtol=1e-5, atol=1e-4)
    grouped = jax.jit(jax.vmap(log_prob))(x.reshape(2, 2, *SHAPE))  # vmap over groups of examples
    np.testing.assert_allclose(grouped.reshape(-1), singles, rtol=1e-5, atol=1e-4)


def test_sample_is_the_inverse_of_temperature_scaled_latents():
    model, _, _, variables = initialised("glow")
    sample = jax.jit(lambda k, t: model.apply(variables, k, 5, t, method="sample"))
    a, b = sample(jax.random.key(3), 0.7), sample(jax.random.key(3), 0.7)
    assert a.shape == (5, *SHAPE)
    np.testing.assert_array_equal(a, b)
    # Glow's temperature: every latent (split priors, top) is mean + std·T·eps, i.e. the
    # standardised latent of the sample is exactly T·eps.
    eps = jax.random.normal(jax.random.key(3), (5, 64))
    z, _ = jax.jit(model.apply)(variables, a)
    np.testing.assert_allclose(z, 0.7 * eps, atol=2e-4)
    cold = sample(jax.random.key(3), 0.0)  # T = 0: every latent at its prior mean, one image
    np.testing.assert_allclose(cold, jnp.broadcast_to(cold[:1], cold.shape), atol=1e-5)


def test_scanned_and_unrolled_levels_compute_the_same_flow():
    model, x, _, variables = initialised("glow")
    unrolled = MultiScaleFlow(SHAPE, levels=2, depth=2, width=8, **dict(MODELS["glow"], scan=False))
    params = dict(variables["params"])
    for level in range(2):  # stacked [depth, ...] parameters -> one subtree per step
        stacked = params.pop(f"steps_{level}")
        for k in range(2):
            params[f"steps_{level}_{k}"] = jax.tree.map(lambda p, k=k: p[k], stacked)
    want = jax.jit(lambda v, x: model.apply(v, x, method="log_prob"))(variables, x)
    got = jax.jit(lambda v, x: unrolled.apply(v, x, method="log_prob"))({"params": params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_remat_leaves_log_prob_and_gradients_unchanged_and_drops_the_stacked_intermediates():
    model, x, _, variables = initialised("glow")
    variables = perturb(variables, jax.random.key(5))
    results, temp_bytes = {}, {}
    for mode in ("on", "off"):
        m = model.clone(remat=mode)
        loss = lambda v, m=m: -jnp.mean(m.apply(v, x, method="log_prob"))  # noqa: E731
        compiled = jax.jit(jax.value_and_grad(loss)).lower(variables).compile()
        results[mode] = compiled(variables)
        temp_bytes[mode] = compiled.memory_analysis().temp_size_in_bytes
    assert temp_bytes["on"] < 0.75 * temp_bytes["off"]  # depth-stacked intermediates: 50 vs 108 kB here
    (v_on, g_on), (v_off, g_off) = results["on"], results["off"]
    np.testing.assert_allclose(v_on, v_off, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_off)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(jnp.max(jnp.abs(b)))))


def test_bad_model_input_raises_clear_errors():
    with pytest.raises(ValueError, match=r"`image_shape` \(12, 12, 1\) needs H and W divisible by 2\^levels = 8"):
        MultiScaleFlow((12, 12, 1), levels=3).init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)))
    model, _, variables, _ = initialised("glow")
    with pytest.raises(ValueError, match=r"`x` must have shape \[B, H, W, C\] = \[B, 8, 8, 1\]; got shape \(2, 64\)"):
        model.init(jax.random.key(0), jnp.zeros((2, 64)))
    with pytest.raises(ValueError, match=r"even channel count; got C = 3"):
        layers.Coupling(4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match=r"`permutation` must be one of"):
        MultiScaleFlow(SHAPE, permutation="shuffle").init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    with pytest.raises(ValueError, match=r"CouplingNet: `init_scheme` must be one of \('lecun', 'torch'\); got 'xavier'"):
        MultiScaleFlow(SHAPE, coupling_init="xavier").init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    with pytest.raises(ValueError, match=r"`priors` must be one of \('split2d', 'per_channel'\); got 'gaussian'"):
        MultiScaleFlow(SHAPE, priors="gaussian").init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    with pytest.raises(ValueError, match=r"`remat` must be one of \('auto', 'on', 'off'\); got True"):
        MultiScaleFlow(SHAPE, remat=True).init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    with pytest.raises(ValueError, match=r"`z` must have shape \[B, D\] = \[B, 64\]; got shape \(2, 63\)"):
        model.apply(variables, jnp.zeros((2, 63)), inverse=True)


def test_scan_compiles_one_body_for_any_depth(rng):
    """The scanned level's HLO does not grow with depth; the unrolled one does."""
    x = images(rng, 2)

    def hlo_size(depth, scan):
        m = MultiScaleFlow(SHAPE, levels=1, depth=depth, width=8, scan=scan)
        v = jax.eval_shape(m.init, jax.random.key(0), x)
        return len(jax.jit(m.apply).lower(v, x).as_text())

    assert hlo_size(2, True) == hlo_size(6, True)
    assert hlo_size(6, False) > 2 * hlo_size(2, False)


# --------------------------------------------------------------------------- #
# training
# --------------------------------------------------------------------------- #


def test_round_trip_holds_after_training_steps_and_no_recompile(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "tfds"))
    config = glow.get_config("smoke")
    config.data.name = "mnist_5k"
    t = task.get_task(config, None)
    mesh = parallel.data_mesh(1)
    state = init_state(t, jax.random.key(0), mesh)
    step = make_train_step(t, mesh)
    batches = t.train_batches(0)
    fixed_before = {jax.tree_util.keystr(p): np.array(v) for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0]
                    if any(getattr(k, "key", None) in FIXED for k in p)}  # fmt: skip
    assert fixed_before  # the LU permutation matrices and signs
    state, first = step(state, parallel.shard_batch(next(batches), mesh), jax.random.key(1))
    with count_compilations() as compiled:
        for _ in range(3):
            state, metrics = step(state, parallel.shard_batch(next(batches), mesh), jax.random.key(1))
        jax.block_until_ready(metrics)
    assert compiled == []
    for path, value in jax.tree_util.tree_flatten_with_path(state.params)[0]:  # Adam leaves them alone
        if jax.tree_util.keystr(path) in fixed_before:
            np.testing.assert_array_equal(value, fixed_before[jax.tree_util.keystr(path)])
    model = task.make_model(config, (28, 28, 1))
    x = task.dequantize(jax.random.key(5), next(batches)["images"])
    apply = jax.jit(model.apply, static_argnames="inverse")
    variables = {"params": state.params}
    z, log_det = apply(variables, x)
    x_back, inv = apply(variables, z, inverse=True)
    np.testing.assert_allclose(x_back, x, atol=1e-4)
    np.testing.assert_allclose(inv, -log_det, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,variant", [("glow", "author_smoke")])
def test_flows_train_evaluate_and_write_sample_grids(model, variant, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "tfds"))
    workdir = tmp_path / model
    args = ["train", model, "--config", variant, "--workdir", str(workdir), "--config.data.name=mnist_5k"]
    assert cli.main(args) == 0
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["split"] == "train"]
    ev = [r for r in lines if r["split"] == "eval"][-1]
    assert train and all(np.isfinite(r["bpd"]) for r in train)
    assert 0 < ev["test_bpd"] < 16
    assert (workdir / "samples_T0.7.png").stat().st_size > 0 and (workdir / "samples_T1.png").exists()
    if model == "glow":  # `zoo eval` restores the checkpoint and reproduces the final evaluation
        capsys.readouterr()
        assert cli.main(["eval", str(workdir)]) == 0
        printed = json.loads(capsys.readouterr().out.split("evaluation: ")[1])
        assert printed == {"test_bpd": round(ev["test_bpd"], 4)}


def test_configs_describe_the_three_models():
    assert nice.get_config("").model.kind == "nice"
    r = realnvp.get_config("").model
    assert (r.actnorm, r.permutation, r.coupling) == ("data", "reverse", "affine")
    g = glow.get_config("").model
    assert (g.actnorm, g.permutation, g.coupling) == ("data", "lu", "affine")
    a = glow.get_config("author").model
    assert (a.actnorm, a.permutation, a.coupling, a.final_actnorm) == ("zero", "random", "additive", True)
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        glow.get_config("big")


def test_image_grid_layout():
    imgs = np.stack([np.full((2, 3, 1), i, np.uint8) for i in range(1, 6)])
    grid = task.image_grid(imgs, columns=2)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1, 1, 0] == 1 and grid[1, 5, 0] == 2 and grid[7, 1, 0] == 5 and grid[7, 5, 0] == 0


def test_to_uint8_maps_the_model_range_and_survives_diverged_samples():
    import warnings

    x = np.array([np.nan, -np.inf, np.inf, 3e38, -3e38, -0.5, 0.0, 0.4999], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning on huge finite values
        got = task.to_uint8(x)
    np.testing.assert_array_equal(got, [0, 0, 255, 255, 0, 0, 128, 255])
