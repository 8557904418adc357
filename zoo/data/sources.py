"""Opening and reading tfds data sources; shared by the tagging and image data sets."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable

import tensorflow_datasets as tfds


def default_data_dir() -> Path:
    return Path(os.environ.get("ZOO_DATA_DIR", Path.home() / ".cache" / "zoo" / "tensorflow_datasets"))


def open_source(name: str, builder: type | None, split: str, data_dir, manual_dir: Callable[[], Path]):
    """A ``data_source`` for ``split``: the tfds catalog's (``builder`` None, ``name`` is
    ``tfds:<catalog name>``) or our own builder's, prepared from ``manual_dir()`` on first use."""
    data_dir = str(data_dir or default_data_dir())
    if builder is None:
        return tfds.data_source(name.removeprefix("tfds:"), split=split, data_dir=data_dir)
    prepared = builder(data_dir=data_dir, file_format="array_record")
    if not prepared.is_prepared():
        # One preparer at a time (parallel test workers, two runs started together):
        # the others wait on the lock, then find the set prepared.
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(data_dir) / f".{builder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            prepared = builder(data_dir=data_dir, file_format="array_record")
            if not prepared.is_prepared():
                config = tfds.download.DownloadConfig(manual_dir=str(manual_dir()))
                prepared.download_and_prepare(download_config=config)
    return prepared.as_data_source(split=split)


def read_all(source, limit: int = 0) -> list:
    """The first ``limit`` examples of a source (all when ``limit`` <= 0), in one batched read."""
    n = len(source) if limit <= 0 else min(limit, len(source))
    if n == 0:
        return []
    try:
        return source.__getitems__(list(range(n)))
    except TypeError:  # tfds.testing.mock_data patches the source without __getitems__
        return [source[i] for i in range(n)]
