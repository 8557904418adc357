"""The huge-page re-execution of the entry points (zoo/hugepages.py)."""

import json
import os
import subprocess
import sys

import pytest

from zoo import hugepages

GLIBC = (2, 36)


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert hugepages.thp_mode(str(path)) == "always"
    assert hugepages.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    ("env", "mode", "glibc", "expected"),
    [
        ({}, "madvise", GLIBC, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", GLIBC, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "madvise", GLIBC, False),  # set: no second exec
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", GLIBC, False),  # the user's choice stands
        ({"ZOO_HUGEPAGES": "0"}, "madvise", GLIBC, False),
        ({}, "always", GLIBC, False),  # every mapping gets huge pages already
        ({}, "never", GLIBC, False),
        ({}, None, GLIBC, False),
        ({}, "madvise", (2, 34), False),  # no such tunable before glibc 2.35
        ({}, "madvise", None, False),  # musl, macOS
    ],
)
def test_wants_reexec(env, mode, glibc, expected):
    assert hugepages.wants_reexec(env, mode, glibc) is expected


def test_with_tunable_appends_to_other_tunables():
    assert hugepages.with_tunable({})["GLIBC_TUNABLES"] == hugepages.TUNABLE
    env = hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{hugepages.TUNABLE}", "X": "1"}


def test_reexec_runs_the_same_command_once_with_the_tunable(tmp_path):
    # A child that re-executes itself: it prints its environment's tunables after the (one) exec.
    script = tmp_path / "child.py"
    script.write_text(
        "import json, os, sys\n"
        "from zoo import hugepages\n"
        "hugepages.reexec_with_huge_pages()\n"
        "print(json.dumps([os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:]]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ZOO_HUGEPAGES")}
    out = subprocess.run([sys.executable, str(script), "a", "b"], env=env, capture_output=True, text=True, check=True)
    would = hugepages.wants_reexec(env, hugepages.thp_mode(), hugepages._glibc_version())
    assert json.loads(out.stdout) == [hugepages.TUNABLE if would else "", ["a", "b"]]
    off = subprocess.run([sys.executable, str(script)], env={**env, "ZOO_HUGEPAGES": "0"}, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert json.loads(off.stdout) == ["", []]
