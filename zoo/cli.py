"""The ``zoo`` command line (also ``python -m zoo``).

    zoo list
    zoo train <model> [--config smoke | --config path.py:arg] [--config.x.y=v ...] [--workdir DIR]
    zoo eval <run-dir>                     (any family)
    zoo predict <run-dir> "text to tag"    (CRF taggers)
    zoo compare <run-dir>[:ema] <run-dir>[:ema]   (capsule-family runs: McNemar's paired test)
    zoo bench <suite> [suite flags]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_list(args) -> int:
    from zoo import data, registry

    print("models:")
    for name, s in registry.MODELS.items():
        print(f"  {name:<12} family={s.family:<8} data={s.dataset:<18} {s.description}")
    print("families:", ", ".join(sorted({s.family for s in registry.MODELS.values()})))
    print("data sets:")
    from zoo.data.images import IMAGE_DATASETS
    from benchmarks.run import SUITES

    for name, d in [*data.DATASETS.items(), *IMAGE_DATASETS.items()]:
        print(f"  {name:<18} {d.description}")
    text_sets = {
        "poetry_quatrains": "14,263 5-character quatrains with titles, npm chinese-poetry@2.0.1 (committed extract)",
        "poetry_couplets": "27,214 / 1,312 10-character couplets from the same quatrains",
    }
    for name, description in text_sets.items():
        print(f"  {name:<18} {description}")
    print("benchmark suites:", ", ".join(SUITES))
    return 0


def _resolve_config(model: str, spec: str | None):
    from zoo import registry
    from zoo.core.config import load_config

    default = registry.spec(model).config
    if spec is None:
        return load_config(default), ""
    if spec.endswith(".py") or ".py:" in spec or "." in spec.partition(":")[0]:
        return load_config(spec), spec.partition(":")[2]
    return load_config(f"{default}:{spec}"), spec  # a variant of the model's own config


def _cmd_train(args, overrides) -> int:
    from zoo.core.config import apply_overrides
    from zoo.core.train import NonFiniteLossError, train_and_evaluate

    config, variant = _resolve_config(args.model, args.config)
    config.model_name = args.model
    apply_overrides(config, overrides)
    workdir = Path(args.workdir or Path("runs") / (args.model + (f"-{variant}" if variant else "")))
    print(f"training {args.model} in {workdir} (rerun the same command to resume)")
    try:
        _, metrics = train_and_evaluate(config, workdir)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _print_metrics(metrics)
    return 0


def _print_metrics(metrics):
    print("evaluation: " + json.dumps({k: round(v, 4) for k, v in metrics.items()}))


def _load_run(run_dir: Path):
    from zoo.crf import task as crf_task

    try:
        return crf_task.restore_run(run_dir)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None


def _family(run_dir: Path) -> str:
    from zoo import registry
    from zoo.core.config import read_config

    path = run_dir / "config.json"
    if not path.exists():
        raise SystemExit(f"error: {run_dir} is not a run directory (no config.json)")
    return registry.spec(read_config(path).model_name).family


def _cmd_eval(args) -> int:
    from zoo.crf import task as crf_task

    if _family(Path(args.run_dir)) != "crf":
        from zoo import registry

        try:
            config, t, params, step = registry.restore_run(Path(args.run_dir))
        except FileNotFoundError as err:
            raise SystemExit(f"error: {err}") from None
        print(f"evaluating {config.model_name} at step {step} on the {config.data.name} test split")
        _print_metrics(t.evaluate(params))
        return 0

    config, vocab, model, params, step = _load_run(Path(args.run_dir))
    examples, _ = crf_task.load_split(config, "test")
    print(f"evaluating {config.model_name} at step {step} on {len(examples)} test examples")
    _print_metrics(crf_task.evaluate_examples(config, model, params, vocab, examples))
    return 0


def _cmd_predict(args) -> int:
    from zoo.crf import task as crf_task

    if _family(Path(args.run_dir)) != "crf":
        raise SystemExit("error: `zoo predict` tags text, so it needs a CRF run; use `zoo eval` for image models")

    config, vocab, model, params, _ = _load_run(Path(args.run_dir))
    for text in args.text:
        tags, spans = crf_task.tag_text(config, model, params, vocab, text)
        print(text)
        print("  tags: " + " ".join(tags))
        for span_text, s, e, kind in spans:
            print(f"  [{s}:{e}] {span_text} {kind or 'WORD'}")
    return 0


def _cmd_compare(args) -> int:
    from zoo.capsules.task import classified_correctly
    from zoo.core.checkpoint import saved_steps
    from zoo.core.config import read_config
    from zoo.core.stats import paired_accuracy

    specs = [spec.rpartition(":")[::2] if spec.endswith(":ema") else (spec, "") for spec in (args.run_a, args.run_b)]
    test_sets = []
    for path, _ in specs:  # checked before the (slow) evaluations
        if (Path(path) / "config.json").exists():
            d = read_config(Path(path) / "config.json").data
            test_sets.append((d.name, d.get("test_limit", 0), d.get("resize", 0)))
    if len(test_sets) == 2 and test_sets[0] != test_sets[1]:
        raise SystemExit(
            f"error: the runs score different test sets (data name, test_limit, resize): {test_sets[0]} vs {test_sets[1]}"
        )
    runs = []
    for spec, (path, suffix) in zip((args.run_a, args.run_b), specs):
        try:
            correct, step = classified_correctly(Path(path), ema=bool(suffix))
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"error: {err}") from None
        source = "checkpoint" if saved_steps(Path(path) / "checkpoints") else "saved record (no checkpoint)"
        print(f"{'AB'[len(runs)]}: {spec} at step {step}, from its {source}")
        runs.append(correct)
    try:
        r = paired_accuracy(*runs)
    except ValueError as err:  # test splits of different sizes despite equal data settings
        raise SystemExit(f"error: {err}") from None
    print(
        f"test accuracy A {r['accuracy_a']:.2%}, B {r['accuracy_b']:.2%} on {r['n']} images; "
        f"only A right: {r['only_a']}, only B right: {r['only_b']}"
    )
    print(
        f"A − B = {100 * r['difference']:+.2f} ± {100 * r['difference_se']:.2f} points (paired standard error); "
        f"exact McNemar p = {r['p_value']:.3g}"
    )
    print("evaluation: " + json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()}))
    return 0


def _cmd_bench(args, rest) -> int:
    from benchmarks import run

    return run.main([args.suite, *rest])


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program (not from Python): huge pages for the step's buffers
        from zoo.hugepages import reexec_with_huge_pages

        reexec_with_huge_pages()
    parser = argparse.ArgumentParser(prog="zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="models, families, data sets")
    p = sub.add_parser("train", help="train a model and print its evaluation")
    p.add_argument("model")
    p.add_argument("--config", default=None, help="variant (e.g. smoke) or path.py[:arg] / module[:arg]")
    p.add_argument("--workdir", default=None, help="run directory (default runs/<model>[-<variant>])")
    p = sub.add_parser("eval", help="evaluate the latest checkpoint of a run")
    p.add_argument("run_dir")
    p = sub.add_parser("predict", help="tag raw text with a trained run")
    p.add_argument("run_dir")
    p.add_argument("text", nargs="+")
    p = sub.add_parser("compare", help="McNemar's paired test of two capsule-family runs on their test split")
    p.add_argument("run_a", help="run directory; a trailing :ema scores its weight EMA")
    p.add_argument("run_b")
    p = sub.add_parser("bench", help="run a benchmark suite")
    p.add_argument("suite")

    argv = list(sys.argv[1:] if argv is None else argv)
    # --config.x=v overrides are not argparse options: collect them first.
    overrides = [a for a in argv if a.startswith("--config.")]
    argv = [a for a in argv if not a.startswith("--config.")]
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return _cmd_bench(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "list":
        return _cmd_list(args)
    if args.command == "train":
        return _cmd_train(args, overrides)
    if overrides:
        parser.error("--config.* overrides only apply to `zoo train`")
    if args.command == "eval":
        return _cmd_eval(args)
    if args.command == "compare":
        return _cmd_compare(args)
    return _cmd_predict(args)


if __name__ == "__main__":
    sys.exit(main())
