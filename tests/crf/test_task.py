"""The CRF family end to end on a small synthetic corpus: train, resume, eval, predict."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import cli, data
from zoo.core import load_config
from zoo.crf import task as crf_task

PEOPLE = ["张三", "李四", "王小明", "赵六"]
PLACES = ["北京", "上海", "广州市", "南京"]
ORGS = ["新华社", "人民银行", "中央电视台"]
TEMPLATES = ["{p}在{l}工作", "{o}的{p}去了{l}", "今天{p}到{l}看{o}", "{l}有{o}"]


def bmes(text, kind):
    if len(text) == 1:
        return [f"S-{kind}"]
    return [f"B-{kind}"] + [f"M-{kind}"] * (len(text) - 2) + [f"E-{kind}"]


def synthetic_msra(rng, n):
    lines = []
    for _ in range(n):
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        fills = {"p": (PEOPLE, "PER"), "l": (PLACES, "LOC"), "o": (ORGS, "ORG")}
        chars, tags, i = [], [], 0
        while i < len(template):
            if template[i] == "{":
                words, kind = fills[template[i + 1]]
                word = words[rng.integers(len(words))]
                chars += list(word)
                tags += bmes(word, kind)
                i += 3
            else:
                chars.append(template[i])
                tags.append("O")
                i += 1
        lines.append("\n".join(f"{c} {t}" for c, t in zip(chars, tags)))
    return "\n\n".join(lines) + "\n"


@pytest.fixture
def data_dir(tmp_path, rng):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "msra_train.txt").write_text(synthetic_msra(rng, 300), encoding="utf-8")
    (raw / "msra_test.txt").write_text(synthetic_msra(rng, 40), encoding="utf-8")
    prepared = tmp_path / "tfds"
    data.load("msra_ner", "train", data_dir=prepared, manual_dir=raw)
    return prepared


def test_cli_train_resume_eval_predict(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    args = ["train", "crf_ner", "--config", "smoke", "--workdir", str(run), f"--config.data.data_dir={data_dir}",
            "--config.train.progress=false", "--config.train.num_steps=60", "--config.optim.learning_rate=0.01"]  # fmt: skip
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    trained = json.loads(first.split("evaluation: ")[1])
    assert trained["f1"] > 0.5  # a 60-step smoke model already finds most synthetic entities

    # Rerunning the finished command resumes at step 60 and trains nothing more.
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out.split("evaluation: ")[1]) == trained

    assert cli.main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "at step 60" in out and json.loads(out.split("evaluation: ")[1]) == trained

    assert cli.main(["predict", str(run), "张三在北京工作"]) == 0
    out = capsys.readouterr().out
    assert "tags:" in out and len(out.splitlines()[1].split()) == 1 + 7


def test_weight_ema_run_reports_both_and_zoo_eval_restores_it(tmp_path, data_dir, capsys):
    """``train.ema_decay`` on the CRF family: both evaluations at the end of training, and
    ``zoo eval`` restores the checkpoint (which holds the average) and reports the params'."""
    run = tmp_path / "run"
    args = ["train", "crf_ner", "--config", "smoke", "--workdir", str(run), f"--config.data.data_dir={data_dir}",
            "--config.train.progress=false", "--config.train.num_steps=8", "--config.train.ema_decay=0.9"]  # fmt: skip
    assert cli.main(args) == 0
    trained = json.loads(capsys.readouterr().out.split("evaluation: ")[1])
    assert "f1" in trained and "f1_ema" in trained
    assert cli.main(["eval", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out.split("evaluation: ")[1])
    assert evaluated == {k: v for k, v in trained.items() if not k.endswith("_ema")}


def test_cli_list_and_errors(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "crf_ner" in out and "msra_ner" in out and "peoples_daily_seg" in out
    with pytest.raises(ValueError, match="unknown model 'crf_xyz'"):
        cli.main(["train", "crf_xyz"])


def test_transitions_learning_rate_multiplier(data_dir):
    """Adam's first step is lr·sign(g) per weight; ×m on the transitions gives m× the step."""
    config = load_config("zoo.crf.configs.msra_ner:smoke")
    config.optim.warmup_steps = 0
    grads = {"crf_transitions": jnp.ones((3, 3)), "embed": {"embedding": jnp.ones((4, 2))}}
    params = jax.tree.map(jnp.zeros_like, grads)

    def first_update(multiplier):
        config.optim.transitions_lr_multiplier = multiplier
        tx = crf_task.make_optimizer(config)
        updates, _ = tx.update(grads, tx.init(params), params)
        return updates

    base, boosted = first_update(1.0), first_update(1000.0)
    np.testing.assert_allclose(boosted["crf_transitions"], 1000.0 * base["crf_transitions"], rtol=1e-5)
    np.testing.assert_allclose(boosted["embed"]["embedding"], base["embed"]["embedding"])


def test_split_long_cuts_at_chunk_boundaries():
    labels = ["s", "b", "m", "e"]
    tags = [1, 2, 3, 0, 1, 3, 1, 2, 2, 3]  # words: bme s be bmme
    tokens = list("abcdefghij")
    pieces = crf_task.split_long([(tokens, tags)], labels, "BMES", max_len=5)
    assert [p[1] for p in pieces] == [[1, 2, 3, 0], [1, 3], [1, 2, 2, 3]]
    assert "".join(t for p in pieces for t in p[0]) == "abcdefghij"
    # No boundary inside the window: a hard cut.
    assert [len(p[0]) for p in crf_task.split_long([(list("abcdefg"), [1] + [2] * 5 + [3])], labels, "BMES", 3)] == [3, 3, 1]
