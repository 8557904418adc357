"""Transparent huge pages for the large buffers of a CPU train step.

Why. XLA:CPU (and PyTorch) take every large intermediate from glibc's ``malloc``, which
maps each buffer over 32 MB fresh from the kernel and unmaps it when freed. Each step then
writes its big buffers into never-touched memory, page-faulting one 4 KiB page at a time:
on the project's 2-core CPU, writing a 180 MB buffer took 67 ms that way and 15 ms with
huge pages (2 MiB), and CapsNet's whole train step went from 1,000 to 672 ms (its PyTorch
peer's from 2,294 to 1,637 ms; ad hoc, one process each).

glibc (2.35+) asks the kernel for transparent huge pages on its mapped chunks when the
tunable ``glibc.malloc.hugetlb=1`` is set, where the kernel's THP mode is ``madvise`` (in
mode ``always`` every mapping gets them anyway; in ``never``, none can). glibc reads
``GLIBC_TUNABLES`` only at process start, so the ``zoo`` and ``python -m benchmarks``
entry points call :func:`reexec_with_huge_pages` first: where the tunable would help and is
not set, they re-execute the same command line once with it added. ``ZOO_HUGEPAGES=0``
turns this off. Library code and tests never re-execute anything.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = _THP_MODE_FILE) -> str | None:
    """The kernel's THP mode (``always``, ``madvise`` or ``never``: the bracketed word of
    ``path``), or ``None`` where it cannot be read (not Linux, no THP)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def _glibc_version() -> tuple[int, ...] | None:
    lib, version = platform.libc_ver()
    if lib != "glibc" or not version:
        return None
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


def wants_reexec(env: dict[str, str], mode: str | None, glibc: tuple[int, ...] | None) -> bool:
    """Whether a process with environment ``env`` should re-execute with :data:`TUNABLE`:
    glibc >= 2.35 (the tunable's first release), THP mode ``madvise``, the tunable not
    already in ``GLIBC_TUNABLES`` (which also stops a second re-execution), and
    ``ZOO_HUGEPAGES`` not ``0``."""
    if env.get("ZOO_HUGEPAGES", "1") == "0" or glibc is None or glibc < (2, 35) or mode != "madvise":
        return False
    return "glibc.malloc.hugetlb" not in env.get("GLIBC_TUNABLES", "")


def with_tunable(env: dict[str, str]) -> dict[str, str]:
    """``env`` with :data:`TUNABLE` appended to ``GLIBC_TUNABLES`` (colon-separated)."""
    current = env.get("GLIBC_TUNABLES", "")
    return {**env, "GLIBC_TUNABLES": f"{current}:{TUNABLE}" if current else TUNABLE}


def reexec_with_huge_pages() -> None:
    """Re-executes this process's command line (``sys.orig_argv``) with :data:`TUNABLE` set,
    when :func:`wants_reexec` says so; otherwise returns. Call it before anything else runs
    (no threads, no output): ``os.execve`` replaces the process."""
    env = dict(os.environ)
    if not wants_reexec(env, thp_mode(), _glibc_version()):
        return
    argv = list(getattr(sys, "orig_argv", []))
    if not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], with_tunable(env))
