"""Benchmark entry point: ``python -m benchmarks.run SUITE [suite flags]``.

Suites are listed explicitly (no discovery by file name) so that a typo is an error
rather than a silently empty run. Each suite module exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import sys

# Suite name -> module with ``main(argv)``. Add one line per new model family.
SUITES = {
    "crf": "benchmarks.bench_crf",
    "capsules": "benchmarks.bench_capsules",
    "flows": "benchmarks.bench_flows",
    "gan": "benchmarks.bench_gan",
    "decode": "benchmarks.bench_decode",
    "attention": "benchmarks.bench_attention",
    "gmm": "benchmarks.bench_gmm",
    "vae": "benchmarks.bench_vae",
    "vae_table": "benchmarks.bench_vae_table",
    "xla_options": "benchmarks.bench_xla_options",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatches ``argv[0]`` to its suite with the remaining flags; returns an exit code."""
    if argv is None:  # run as a program: the same malloc set-up as `zoo` (zoo/hugepages.py)
        from zoo.hugepages import reexec_with_huge_pages

        reexec_with_huge_pages()
    argv = list(sys.argv[1:] if argv is None else argv)
    valid = ", ".join(sorted(SUITES))
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m benchmarks.run SUITE [flags]  (suites: {valid}; SUITE --help for flags)")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUITES:
        print(f"error: unknown benchmark suite {name!r}; valid suites: {valid}", file=sys.stderr)
        return 2
    return int(importlib.import_module(SUITES[name]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
