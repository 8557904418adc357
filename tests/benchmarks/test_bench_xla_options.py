"""The XLA:CPU options A/B suite: registered, runs a smoke model, rejects bad input."""

import pytest

from benchmarks import bench_xla_options, run


def test_suite_is_registered():
    assert run.SUITES["xla_options"] == "benchmarks.bench_xla_options"


def test_quick_run_prints_a_row_per_model(capsys, tmp_path):
    out_file = tmp_path / "xla.md"
    assert bench_xla_options.main(["vae", "--quick", "--set", "config.data.binarize=fixed", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "| model | default | no_reduce | dots_only |" in out
    row = next(line for line in out.splitlines() if line.startswith("| vae --variant smoke --set config.data.binarize=fixed |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert len(cells) == 5 and all(" ms (" in c for c in cells[:3])
    assert cells[0].endswith("(1.00x)")  # the default setting is the reference
    text = out_file.read_text()
    assert text.startswith("# XLA:CPU YNNPACK settings") and text.endswith(row + "\n")


def test_unknown_model_and_bad_override_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown model 'nope'"):
        bench_xla_options.main(["nope", "--quick"])
    with pytest.raises(KeyError, match=r"no field 'bogus'"):
        bench_xla_options.main(["vae", "--quick", "--set", "config.data.bogus=1"])
