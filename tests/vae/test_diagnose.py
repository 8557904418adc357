"""``python -m zoo.vae.diagnose`` on a short Gaussian-VAE run."""

import json

import numpy as np
import pytest

from zoo.vae.configs import vae
from zoo.core import train_and_evaluate
from zoo.vae import diagnose


@pytest.mark.parametrize("clamp", ["hard", "soft"])
def test_diagnose_prints_one_line_per_checkpoint(tmp_path, data_dir, capsys, clamp):
    config = vae.get_config("gaussian_smoke")
    config.model.clamp = clamp
    config.train.update(num_steps=4, ckpt_every=2, eval_every=4, progress=False)
    config.data.test_limit = 40
    train_and_evaluate(config, tmp_path)
    capsys.readouterr()
    assert diagnose.main([str(tmp_path), "--examples", "16"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    with pytest.raises(ValueError, match=r"`--steps` must be checkpoints the run kept, \[2, 4\]; got \[3\]"):
        diagnose.main([str(tmp_path), "--steps", "3"])
    bound = config.model.logvar_bound
    for r in lines:
        raw, clamped = r["encoder_raw_logvar"], r["encoder_logvar"]
        # min and max are order statistics, so they go through the (monotone) clamp exactly
        expected = np.clip(raw, -bound, bound) if clamp == "hard" else bound * np.tanh(np.asarray(raw) / bound)
        for i in (0, -1):
            assert clamped[i] == pytest.approx(float(expected[i]), abs=2e-3)
        assert raw == sorted(raw) and len(r["decoder_log_scale"]) == 5
        nll = r["test_recon_nll"]
        assert nll["top5"] == sorted(nll["top5"], reverse=True) and nll["top5"][0] >= nll["median"]
        assert nll["mean_without_top10"] <= nll["mean"]
        assert set(r["param_norms"]) >= {"['encoder']['logvar']['kernel']", "['decoder']['out']['kernel']"}


def test_diagnose_rejects_other_models(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "glow"}))
    with pytest.raises(ValueError, match="`run_dir` must hold a `zoo train vae` run; got model 'glow'"):
        diagnose.main([str(tmp_path)])
