"""The shared loop: exact resumption, the NaN guard, data parallelism, configs."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from zoo.core import NonFiniteLossError, Task, apply_overrides, load_config, train_and_evaluate
from zoo.core import parallel
from zoo.core.checkpoint import Checkpointer
from zoo.core.train import cpu_compiler_options

DIM = 6


def toy_config(**train):
    c = ml_collections.ConfigDict()
    c.model_name = "toy"
    c.seed = 3
    c.train = dict(num_steps=12, log_every=2, eval_every=0, ckpt_every=4, num_devices=1, progress=False, inject_nan_at_step=-1)
    c.train.update(train)
    return c


def toy_task(batch_size=8, interrupt_after=None):
    """Noisy linear regression whose batch of step s is a function of s alone.

    The loss uses the step key (dropout-style noise), so resumption must also
    reproduce the keys. ``interrupt_after`` makes the batch iterator raise
    KeyboardInterrupt, as Ctrl-C would, after that many batches.
    """
    true_w = np.linspace(-1, 1, DIM).astype(np.float32)

    def init(key):
        return {"w": jax.random.normal(key, (DIM,)), "b": jnp.zeros(())}

    def loss_fn(params, batch, key):
        keep = jax.random.bernoulli(key, 0.8, batch["x"].shape)
        pred = (batch["x"] * keep / 0.8) @ params["w"] + params["b"]
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return loss, {"abs_b": jnp.abs(params["b"])}

    def train_batches(start_step):
        for i, step in enumerate(range(start_step, 10**9)):
            if interrupt_after is not None and i == interrupt_after:
                raise KeyboardInterrupt
            rng = np.random.default_rng(step)
            x = rng.normal(size=(batch_size, DIM)).astype(np.float32)
            yield {"x": x, "y": (x @ true_w + 0.5).astype(np.float32)}

    def evaluate(params):
        return {"w_error": float(jnp.linalg.norm(params["w"] - true_w))}

    return Task(init, optax.adam(0.05), loss_fn, train_batches, evaluate)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_training_reduces_loss_and_writes_metrics_plot_and_config(tmp_path):
    state, metrics = train_and_evaluate(toy_config(num_steps=40), tmp_path, toy_task())
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert {"loss", "abs_b", "steps_per_sec"} <= set(train[0])
    assert records[-1]["split"] == "eval" and records[-1]["w_error"] == pytest.approx(metrics["w_error"])
    assert (tmp_path / "metrics.png").stat().st_size > 0
    assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 40
    assert int(state.step) == 40


def test_resume_after_interrupt_reproduces_uninterrupted_run_exactly(tmp_path):
    full, _ = train_and_evaluate(toy_config(), tmp_path / "full", toy_task())

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(toy_config(), tmp_path / "resumed", toy_task(interrupt_after=7))
    assert Checkpointer(tmp_path / "resumed" / "checkpoints").latest_step() == 4
    resumed, _ = train_and_evaluate(toy_config(), tmp_path / "resumed", toy_task())

    assert int(resumed.step) == 12
    for a, b in zip(leaves(full), leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_forced_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    good, _ = train_and_evaluate(toy_config(num_steps=4), tmp_path / "good", toy_task())
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 6.*last good checkpoint is step 4"):
        train_and_evaluate(toy_config(inject_nan_at_step=6), tmp_path / "nan", toy_task())
    ckpt = Checkpointer(tmp_path / "nan" / "checkpoints")
    assert ckpt.latest_step() == 4
    restored = ckpt.restore(good)
    for a, b in zip(leaves(good.params), leaves(restored.params), strict=True):
        assert np.all(np.isfinite(b))
        np.testing.assert_array_equal(a, b)


def test_data_parallel_over_four_devices_matches_one_device(tmp_path):
    assert len(jax.devices()) >= 4, "conftest forces 4 CPU devices"
    one, _ = train_and_evaluate(toy_config(num_devices=1), tmp_path / "one", toy_task())
    four, _ = train_and_evaluate(toy_config(num_devices=4), tmp_path / "four", toy_task())
    assert len(four.params["w"].sharding.device_set) == 4
    for a, b in zip(leaves(one.params), leaves(four.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    loss = lambda d: [json.loads(l)["loss"] for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines() if '"train"' in l]  # noqa: E731
    np.testing.assert_allclose(loss("one"), loss("four"), rtol=1e-5)


OPTION = "xla_cpu_experimental_ynn_fusion_type"  # which library fusions XLA:CPU hands to YNNPACK


def test_cpu_compiler_options_reach_the_train_steps_compile(tmp_path):
    """``train.cpu_compiler_options`` are passed to XLA (a bad value is XLA's error), and a
    real one changes how the step compiles, not what it computes."""
    mesh = parallel.data_mesh(1)
    assert cpu_compiler_options(toy_config(), mesh) is None  # the key is optional (old run dirs)
    assert cpu_compiler_options(toy_config(cpu_compiler_options={}), mesh) is None
    with pytest.raises(Exception, match=r"xla_cpu_experimental_ynn_fusion_type.*'BOGUS' is not a valid"):
        train_and_evaluate(toy_config(cpu_compiler_options={OPTION: "BOGUS"}), tmp_path / "bad", toy_task())
    plain, _ = train_and_evaluate(toy_config(), tmp_path / "plain", toy_task())
    dots, _ = train_and_evaluate(toy_config(cpu_compiler_options={OPTION: "LIBRARY_FUSION_TYPE_DOT"}), tmp_path / "dots", toy_task())
    for a, b in zip(leaves(plain.params), leaves(dots.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ynnpack_no_reduce_keeps_dots_and_moves_reductions_out():
    """``YNNPACK_NO_REDUCE`` is a valid option value (jaxlib renames would fail here) and does
    what the VAE configs set it for: the dot stays a YNNPACK fusion, the row sum leaves."""
    from zoo.core.config import YNNPACK_NO_REDUCE

    def fn(x, w):
        return x @ w, jnp.sum(x * x, axis=1)

    x, w = jnp.ones((100, 784)), jnp.ones((784, 256))

    def ynn_fusions(options):
        return jax.jit(fn, compiler_options=options).lower(x, w).compile().as_text().count('"kind":"__ynn_fusion"')

    assert (ynn_fusions(None), ynn_fusions(YNNPACK_NO_REDUCE)) == (2, 1)


def test_step_batch_feeds_a_sharded_jit_like_shard_batch(monkeypatch):
    """One process: the numpy batch itself, which the jit places per its in_shardings; the
    several-process branch builds global arrays from each process's rows."""
    mesh = parallel.data_mesh(4)
    sharded = parallel.batch_sharded(mesh)
    double = jax.jit(lambda b: b["x"] * 2, in_shardings=(sharded,))
    batch = {"x": np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)}
    assert parallel.step_batch(batch, mesh) is batch
    via_step, via_put = double(parallel.step_batch(batch, mesh)), double(parallel.shard_batch(batch, mesh))
    assert via_step.sharding.is_equivalent_to(sharded, 2)
    np.testing.assert_array_equal(via_step, 2 * batch["x"])
    np.testing.assert_array_equal(via_step, via_put)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    global_batch = parallel.step_batch(batch, mesh)
    assert global_batch["x"].sharding.is_equivalent_to(sharded, 2)
    np.testing.assert_array_equal(double(global_batch), 2 * batch["x"])
    for place in (parallel.step_batch, parallel.shard_batch):
        with pytest.raises(ValueError, match=r"field 'x' has leading size 6, which must be divisible by .* \(4\)"):
            place({"x": np.ones((6, 3))}, mesh)


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"leading size 6, which must be divisible by the number of devices \(4\)"):
        train_and_evaluate(toy_config(num_devices=4), tmp_path, toy_task(batch_size=6))


def test_config_variants_and_overrides():
    c = load_config("zoo.crf.configs.msra_ner:smoke")
    assert c.train.num_steps == 20
    apply_overrides(c, ["--config.train.num_steps=7", "--config.model.encoder=bilstm", "--config.model.dilations=(1,2)", "--config.model.residual=false", "--config.optim.learning_rate=0.5"])
    assert (c.train.num_steps, c.model.encoder, tuple(c.model.dilations), c.model.residual, c.optim.learning_rate) == (7, "bilstm", (1, 2), False, 0.5)
    with pytest.raises(KeyError, match="no field 'num_stepz'"):
        apply_overrides(c, ["--config.train.num_stepz=1"])
    with pytest.raises(ValueError, match="invalid literal for int"):
        apply_overrides(c, ["--config.train.num_steps=many"])
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        load_config("zoo.crf.configs.msra_ner:huge")
