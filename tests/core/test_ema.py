"""The weight EMA (``train.ema_decay``): the average itself, an unchanged trajectory, exact
resumption, both evaluations, the registry's wiring and the errors."""

import jax
import numpy as np
import pytest

from tests.core.test_train import leaves, toy_config, toy_task
from zoo.core import parallel, train_and_evaluate
from zoo.core.ema import apply_config, with_weight_ema
from zoo.core.train import init_state, make_train_step

DECAY = 0.8


def test_average_follows_the_params_of_the_unchanged_trajectory():
    """Step by step: the params equal those of the task without the EMA, and the average is
    ``d · ema + (1 − d) · params`` from the initial params, computed here in float64."""
    mesh = parallel.data_mesh(1)
    plain, averaged = toy_task(), with_weight_ema(toy_task(), DECAY)
    key, loop_key = jax.random.split(jax.random.key(0))
    state_p, state_a = init_state(plain, key, mesh), init_state(averaged, key, mesh)
    step_p, step_a = make_train_step(plain, mesh), make_train_step(averaged, mesh)
    expected = [np.asarray(x, np.float64) for x in leaves(state_a.params)]
    for a, b in zip(leaves(state_a.model_state), expected, strict=True):
        np.testing.assert_array_equal(a, b)  # starts at the initial params
    batches = plain.train_batches(0)
    for _ in range(6):
        batch = next(batches)
        state_p, metrics_p = step_p(state_p, batch, loop_key)
        state_a, metrics_a = step_a(state_a, batch, loop_key)
        np.testing.assert_allclose(float(metrics_a["loss"]), float(metrics_p["loss"]), rtol=1e-6)
        for a, b in zip(leaves(state_a.params), leaves(state_p.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        expected = [DECAY * e + (1 - DECAY) * p for e, p in zip(expected, leaves(state_a.params), strict=True)]
        for a, b in zip(leaves(state_a.model_state), expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(leaves(state_a.model_state)[0], leaves(state_a.params)[0])


def test_evaluation_reports_params_and_average_and_resumption_is_exact(tmp_path):
    full, metrics = train_and_evaluate(toy_config(), tmp_path / "full", with_weight_ema(toy_task(), DECAY))
    assert set(metrics) == {"w_error", "w_error_ema"}
    w_error_of = toy_task().evaluate
    assert metrics["w_error"] == pytest.approx(w_error_of(full.params)["w_error"])
    assert metrics["w_error_ema"] == pytest.approx(w_error_of(full.model_state)["w_error"])
    assert metrics["w_error"] != metrics["w_error_ema"]

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(toy_config(), tmp_path / "resumed", with_weight_ema(toy_task(interrupt_after=7), DECAY))
    resumed, _ = train_and_evaluate(toy_config(), tmp_path / "resumed", with_weight_ema(toy_task(), DECAY))
    for a, b in zip(leaves(full), leaves(resumed), strict=True):  # params, Adam moments and the average
        np.testing.assert_array_equal(a, b)


def test_config_switches_it_on_and_bad_settings_are_named():
    task = toy_task()
    assert apply_config(task, toy_config().train) is task  # no key (old run dirs): off
    assert apply_config(task, toy_config(ema_decay=0.0).train) is task
    assert apply_config(task, toy_config(ema_decay=0.99).train).update is not None
    for bad in (1.0, -0.5, 0.0, "0.9"):
        with pytest.raises(ValueError, match=r"decay must be a number in \(0, 1\), got " + repr(bad).replace(".", r"\.")):
            with_weight_ema(task, bad)
    wrapped = with_weight_ema(task, 0.9)
    for name in ("update", "init_model_state", "eval_variables"):
        others = {other: None for other in ("update", "init_model_state", "eval_variables") if other != name}
        with pytest.raises(ValueError, match=f"default update, no model_state.*{name}=True"):
            with_weight_ema(wrapped._replace(**others), 0.9)


def test_capsnet_smoke_run_with_ema_evaluates_both_and_zoo_eval_restores_it(tmp_path, capsys):
    """Through the registry: ``--config.train.ema_decay`` on a real family, then ``zoo eval``."""
    import json

    import tensorflow_datasets as tfds

    from zoo import cli

    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=64, data_dir=str(tmp_path / "mock")):
        args = ["train", "capsnet", "--config", "smoke", "--workdir", str(workdir)]
        assert cli.main([*args, "--config.data.name=tfds:fashion_mnist", "--config.train.ema_decay=0.5"]) == 0
        final = json.loads(capsys.readouterr().out.split("evaluation: ")[1])
        assert {"test_accuracy", "test_accuracy_ema"} <= set(final)
        assert cli.main(["eval", str(workdir)]) == 0
        assert json.loads(capsys.readouterr().out.split("evaluation: ")[1]) == final


def test_resuming_a_run_without_the_average_names_the_mismatch(tmp_path):
    train_and_evaluate(toy_config(num_steps=4), tmp_path, toy_task())
    with pytest.raises(ValueError, match=r"checkpoint of step 4 in .* another structure.*train\.ema_decay"):
        train_and_evaluate(toy_config(num_steps=8), tmp_path, with_weight_ema(toy_task(), DECAY))
