"""Timing, environment capture and result writing shared by every benchmark suite.

What is measured:

* :func:`time_jax`: the one-off cost of tracing/lowering and of XLA compilation, each
  timed on its own, then the steady state of the compiled executable: ``warmup``
  untimed calls, then ``repeats`` calls timed one by one, each ending in
  :func:`jax.block_until_ready` so that asynchronous dispatch cannot hide work.
* :func:`time_callable`: the same steady-state protocol for any Python callable
  (PyTorch peers on CPU run synchronously, so no barrier is needed).
* :func:`time_interleaved`: the same for several callables whose times are compared (the
  zoo's step and its peer's), timed in turn in blocks, round by round, so that a slow spell
  of a shared machine falls on each of them alike.

Both report the median (robust to the odd scheduler hiccup) and the 90th percentile
(how bad the tail is) in milliseconds, plus the raw samples' count.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = ["summarize", "time_jax", "time_callable", "time_interleaved", "OtherCpuLoad", "environment", "machine_lines", "write_jsonl", "markdown_table", "markdown_report",
           "torch_peer", "timing_notes", "write_results", "RESULTS_DIR", "output_dir", "command_line"]

# Where the suites write their tracked results (``<suite>-<platform>.jsonl`` and ``.md``).
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"

# Distributions whose versions matter to a result; absent ones are reported as None.
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "pytorch-crf", "torch-struct", "torchvision", "pytorch-fid")


def summarize(samples_s: Sequence[float]) -> dict:
    """Median / p90 / min in ms of per-call wall times given in seconds."""
    ms = np.asarray(samples_s, np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(np.min(ms)),
        "repeats": int(ms.size),
    }


def _timed_calls(call: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Runs ``call`` ``warmup`` times untimed, then returns ``repeats`` wall times (s)."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return samples


def time_jax(fn: Callable, *args, warmup: int = 5, repeats: int = 30) -> dict:
    """Times a JAX function: trace+lower, compile, and steady-state execution.

    Args:
      fn: a function of JAX arrays (jitted or not; it is wrapped in ``jax.jit``).
      *args: its arguments, already on device (transfers are not what we measure).
      warmup: untimed calls before measuring (caches, allocator, thread pools).
      repeats: timed calls; each is followed by ``jax.block_until_ready``.

    Returns:
      dict with ``lower_ms``, ``compile_ms`` (one-off costs), ``median_ms``, ``p90_ms``,
      ``min_ms``, ``repeats``, and ``output``: the last call's result (for checks).
    """
    import jax

    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    # Calling the compiled executable directly measures the kernel plus the minimal
    # dispatch, not jit's cache look-up or a second compilation.
    samples = _timed_calls(lambda: jax.block_until_ready(compiled(*args)), warmup, repeats)
    result = {"lower_ms": (t1 - t0) * 1e3, "compile_ms": (t2 - t1) * 1e3, **summarize(samples)}
    result["output"] = jax.block_until_ready(compiled(*args))
    return result


def time_callable(fn: Callable[[], Any], *, warmup: int = 5, repeats: int = 30) -> dict:
    """Steady-state wall time of a zero-argument callable (e.g. a PyTorch step).

    Returns:
      dict with ``median_ms``, ``p90_ms``, ``min_ms``, ``repeats`` and ``output``
      (the result of one more call, for checks).
    """
    samples = _timed_calls(fn, warmup, repeats)
    return {**summarize(samples), "output": fn()}


def time_interleaved(calls: dict[str, Callable[[], Any]], *, rounds: int = 3, per_round: int = 2,
                     settle: int = 1) -> dict[str, dict]:
    """:func:`time_callable` for several callables whose times are compared, in interleaved
    blocks: ``rounds`` rounds, in each of which every callable (in ``calls``' order) runs
    ``settle`` untimed calls and then ``per_round`` timed ones.

    Why: this project's 2-core CPU runs 20% slower or faster for minutes at a time, so two
    steps timed one after the other can fall in different spells. Alternating single calls
    is no cure: a step that follows another program's step is itself off (CapsNet, ad hoc:
    the zoo's first step after PyTorch's took ~780 ms against ~530, PyTorch's first after
    the zoo's was faster than its own steady state), as caches and the allocator's free
    lists hold the other program's buffers. The untimed ``settle`` calls absorb that.

    Returns:
      ``{name: dict}`` with :func:`time_callable`'s keys (``repeats`` = ``rounds ·
      per_round``; ``output``: the result of the callable's last call).
    """
    if not calls:
        raise ValueError("time_interleaved: `calls` must name at least one callable; got none")
    for name, value in (("rounds", rounds), ("per_round", per_round)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"time_interleaved: `{name}` must be an int >= 1; got {value!r}")
    if not isinstance(settle, int) or settle < 0:
        raise ValueError(f"time_interleaved: `settle` must be an int >= 0; got {settle!r}")
    samples = {name: [] for name in calls}
    outputs = {}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(settle):
                call()
            for _ in range(per_round):
                t0 = time.perf_counter()
                outputs[name] = call()
                samples[name].append(time.perf_counter() - t0)
    return {name: {**summarize(samples[name]), "output": outputs[name]} for name in calls}


class OtherCpuLoad:
    """Context manager: how many cores *other* processes kept busy while it was open.

    Linux only (``/proc/stat``); ``cores`` stays None elsewhere. Tick resolution is
    10 ms, so the figure is meaningful over blocks of a second or more. A value well
    above 0 means the timings inside the block competed for the CPUs (on a 2-core
    machine even one busy neighbour makes multi-threaded PyTorch ~100x slower).
    """

    cores: float | None = None

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as f:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        except (OSError, ValueError):
            return None
        own = os.times()
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        return time.perf_counter(), busy, own.user + own.system

    def __enter__(self):
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc):
        end = self._snapshot()
        if self._start and end and end[0] > self._start[0]:
            wall, busy, own = (b - a for a, b in zip(self._start, end))
            self.cores = round(max(busy - own, 0.0) / wall, 2)
        return False


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """Short hash of HEAD (``+dirty`` if the tree has changes), or ``"unknown"``."""
    cwd = cwd or pathlib.Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}+dirty" if dirty else rev


def environment() -> dict:
    """What a result depends on: device, versions, CPUs and their load, Python, git revision."""
    import jax

    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_description(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _VERSIONED},
        "git_rev": git_revision(),
        "load_avg_1m": load_average(),
        "huge_pages": huge_pages(),
    }


# Instruction-set features that decide which kernels a library runs (oneDNN, MKL, YNNPACK,
# Eigen): the same CPU model name can come with different ones under a hypervisor.
_CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name, its features among ``_CPU_FEATURES`` and its L2/L3 sizes, from
    ``cpuinfo`` (default: ``/proc/cpuinfo``; ``"unknown"`` where that cannot be read) and
    ``/sys/devices/system/cpu/cpu0/cache`` (left out where absent).

    Why: a ratio against a PyTorch peer moves with the host. The torch CapsNet step took
    1.54 s in the capsules run recorded at 341b7d1 and 0.93 s on the 2-core machine of
    2026-12-06, the zoo's 0.53 and 0.47 s; the header did not say which CPU ran the first."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    family = re.search(r"^cpu family\s*:\s*(\d+)$", cpuinfo, re.MULTILINE)
    number = re.search(r"^model\s*:\s*(\d+)$", cpuinfo, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    present = set(flags.group(1).split()) if flags else set()
    parts = [model.group(1).strip() if model else "unknown model"]
    if family and number:
        parts[0] += f" (family {family.group(1)}, model {number.group(1)})"
    parts.append("features " + (" ".join(f for f in _CPU_FEATURES if f in present) or "none of " + "/".join(_CPU_FEATURES)))
    caches = []
    for index in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            if kind != "Instruction" and level in ("2", "3"):
                caches.append(f"L{level} {(index / 'size').read_text().strip()}")
        except OSError:
            continue
    if caches:
        parts.append(", ".join(caches))
    return "; ".join(parts)


def huge_pages() -> str:
    """How large buffers get their memory (zoo/hugepages.py): both sides of a comparison
    run in one process, so they share it, but absolute times move with it."""
    from zoo import hugepages

    setting = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t.startswith("glibc.malloc.hugetlb=")]
    malloc = f"malloc {setting[-1]}" if setting else "malloc without glibc.malloc.hugetlb"
    return f"{malloc}, THP mode {hugepages.thp_mode()}"


def load_average() -> float | None:
    """1-minute load average: other processes competing for the CPUs skew timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> pathlib.Path:
    """Writes one JSON object per line, replacing the file; creates parent folders."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record, default=_json_default) + "\n")
    return path


def _json_default(value):
    # numpy scalars and arrays show up in records; JSON has no such types.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if abs(value) >= 1e3:
            return f"{value:,.0f}"  # times in ms and throughputs: digits past the point are noise
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def markdown_table(records: Sequence[dict], columns: Sequence[str | tuple[str, str]]) -> str:
    """GitHub Markdown table; a column is a key or ``(key, header)``; missing keys stay blank."""
    cols = [(c, c) if isinstance(c, str) else c for c in columns]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for record in records:
        lines.append("| " + " | ".join(_cell(record.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def machine_lines(env: dict) -> list[str]:
    """The results header's ``- device:`` and ``- cpu:`` lines, shared by every suite's page."""
    return [f"- device: {env['device_kind']} ({env['platform']}), {env['cpu_count']} CPUs, {env['machine']}, "
            f"Python {env['python']}", f"- cpu: {env.get('cpu', 'not recorded')}"]


def markdown_report(title: str, env: dict, command: str, protocol: str, sections: dict, records: list[dict],
                    notes: Sequence[str] = ()) -> str:
    """A suite's Markdown page: the command, machine, versions, revision and load, then one
    table per section (``sections``: ``key -> (heading, columns)`` over the records whose
    ``"section"`` is ``key``; empty sections are left out), then the notes."""
    out = [f"# {title}", "", f"- command: `{command}`", *machine_lines(env),
           "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
           f"- git revision: {env['git_rev']}; torch threads: {env.get('torch_threads')}; 1-min load average "
           f"{env['load_avg_1m']} at start, {env.get('load_avg_1m_end')} at end",
           f"- memory: {env.get('huge_pages')}",
           f"- protocol: {protocol}", ""]  # fmt: skip
    for key, (heading, columns) in sections.items():
        rows = [r for r in records if r["section"] == key]
        if rows:
            out += [f"## {heading}", "", markdown_table(rows, columns), ""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def torch_peer(module: str) -> tuple[bool, int | None]:
    """``(importable, torch threads)`` for a PyTorch peer module (e.g. ``benchmarks.peers.gan_torch``);
    prints how to install the peers when it is not."""
    try:
        import importlib

        import torch

        importlib.import_module(module)
        return True, torch.get_num_threads()
    except ImportError as exc:
        print(f"peer unavailable ({exc}); zoo rows only (bash scripts/setup.sh peers)", flush=True)
        return False, None


def parse_subset(flag: str, text: str, valid: Sequence[str]) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; exits with an error naming ``flag`` on a name not in ``valid``."""
    chosen = [s for s in text.split(",") if s]
    unknown = sorted(set(chosen) - set(valid))
    if unknown:
        raise SystemExit(f"error: {flag}: unknown {unknown}; valid: {','.join(valid)}")
    return chosen


def timing_notes(records: Sequence[dict]) -> list[str]:
    """A warning naming the rows timed while other processes kept > 0.2 cores busy."""
    busy = [f"{r['task']} {r['impl']}" for r in records if (r.get("other_cpu_cores") or 0) > 0.2]
    return ["WARNING: other processes kept > 0.2 cores busy while timing " + "; ".join(busy)] if busy else []


def output_dir(out: pathlib.Path | None, quick: bool, prefix: str) -> pathlib.Path:
    """Where a suite writes: ``out`` (``--out``) when given; else, for a ``--quick`` (CI) run, a
    fresh temporary folder named ``prefix…``, so that smoke runs never overwrite the recorded
    results; else :data:`RESULTS_DIR`."""
    if out is not None:
        return out
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix)) if quick else RESULTS_DIR


def command_line() -> str:
    """The command as it was typed (``sys.orig_argv``), for the results' header."""
    return shlex.join(getattr(sys, "orig_argv", sys.argv))


def write_results(stem: pathlib.Path, env: dict, command: str, records: list[dict], markdown: str) -> None:
    """``<stem>.jsonl`` (the environment record, then the results) and ``<stem>.md``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(stem.with_suffix(".jsonl"), [{"record": "environment", "command": command, **env}] + records)
    stem.with_suffix(".md").write_text(markdown)
    print(f"wrote {stem}.jsonl and {stem}.md")
