"""Data builders work offline on tiny raw files; the tfds catalog path works on mock data."""

import itertools
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from zoo import data
from zoo.data.batching import epoch_batches, epoch_permutation, shuffled_batches, step_batches

MSRA_RAW = {
    "msra_train.txt": "我 O\n在 O\n北 B-LOC\n京 E-LOC\n\n张 B-PER\n三 E-PER\n来 O\n了 O\n\n中 B-ORG\n央 M-ORG\n台 E-ORG\n",
    "msra_test.txt": "上 B-LOC\n海 E-LOC\n好 O\n\n",
}
SEG_RAW = "\n".join(
    ["迈/b 向/e 新/s 世/b 纪/e", "中/b 共/m 中/m 央/e", "你/s 好/s", "今/b 天/e 晴/s"] * 3
) + "\n"


def write_files(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def msra(tmp_path):
    raw = write_files(tmp_path / "raw", MSRA_RAW)
    return tmp_path / "tfds", raw


def test_msra_builder_round_trips_characters_and_tags(msra):
    data_dir, raw = msra
    train = data.load("msra_ner", "train", data_dir=data_dir, manual_dir=raw)
    examples = sorted(data.read_examples(train, "msra_ner"), key=lambda e: e[0])
    names = data.tag_names(train, "msra_ner")
    assert names == list(data.MSRA_TAGS)
    assert [("".join(t), [names[i] for i in y]) for t, y in examples] == [
        ("中央台", ["B-ORG", "M-ORG", "E-ORG"]),
        ("张三来了", ["B-PER", "E-PER", "O", "O"]),
        ("我在北京", ["O", "O", "B-LOC", "E-LOC"]),
    ]
    assert len(data.load("msra_ner", "test", data_dir=data_dir)) == 1  # reuses the prepared data


def test_peoples_daily_seg_builder_splits_every_tenth_line(tmp_path):
    raw = write_files(tmp_path / "raw", {"data.txt": SEG_RAW})
    train = data.load("peoples_daily_seg", "train", data_dir=tmp_path / "tfds", manual_dir=raw)
    test = data.load("peoples_daily_seg", "test", data_dir=tmp_path / "tfds")
    assert (len(train), len(test)) == (10, 2)  # lines 0 and 10 are test
    examples = {"".join(tokens): [data.SEG_TAGS[t] for t in tags] for tokens, tags in data.read_examples(test, "peoples_daily_seg")}
    assert examples == {"迈向新世纪": ["b", "e", "s", "b", "e"], "你好": ["s", "s"]}


def test_malformed_raw_file_is_a_clear_error(tmp_path):
    raw = write_files(tmp_path / "raw", {"msra_train.txt": "我 O extra\n", "msra_test.txt": ""})
    with pytest.raises(Exception, match="expected 'char tag'"):
        data.load("msra_ner", "train", data_dir=tmp_path / "tfds", manual_dir=raw)


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown data set 'msra'; known: \["):
        data.load("msra", "train")


def test_catalog_name_works_on_tfds_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=5, data_dir=str(tmp_path)):
        source = data.load("tfds:conll2003", "train", data_dir=tmp_path)
        examples = data.read_examples(source, "tfds:conll2003")
        names = data.tag_names(source, "tfds:conll2003")
    assert len(examples) == 5 and "B-PER" in names
    # Mock sequences have independent random lengths, so only types and ranges are checked.
    assert all(isinstance(tok, str) for tokens, _ in examples for tok in tokens)
    assert all(0 <= t < len(names) for _, tags in examples for t in tags)


def test_network_is_blocked_in_tests():
    with pytest.raises(RuntimeError, match="must not touch the network"):
        socket.create_connection(("example.com", 80), timeout=1)


def test_step_batches_are_a_function_of_the_step():
    lengths = np.random.default_rng(0).integers(1, 50, size=103)
    full = list(zip(range(30), step_batches(lengths, 8, seed=1)))
    resumed = list(zip(range(30 - 17), step_batches(lengths, 8, seed=1, start_step=17)))
    for (_, a), (_, b) in zip(full[17:], resumed):
        np.testing.assert_array_equal(a, b)
    epoch = epoch_batches(lengths, 8, seed=1, epoch=0)
    assert len(epoch) == 12 and len(np.unique(np.concatenate(epoch))) == 96


def test_shuffled_batches_are_a_function_of_the_step():
    """Epoch e is default_rng([seed, e]).permutation(n) cut into full batches; resuming at any
    step yields exactly the uninterrupted sequence."""
    n, size, seed = 23, 5, 3  # 4 batches per epoch, 3 examples dropped
    full = list(itertools.islice(shuffled_batches(n, size, seed), 13))
    for step, idx in full:
        epoch, b = divmod(step, 4)
        want = np.random.default_rng([seed, epoch]).permutation(n)[b * size : (b + 1) * size]
        assert full[step][0] == step
        np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(epoch_permutation(n, seed, 1), np.random.default_rng([seed, 1]).permutation(n))
    resumed = list(itertools.islice(shuffled_batches(n, size, seed, start_step=7), 6))
    for (s, idx), (fs, fidx) in zip(resumed, full[7:]):
        assert s == fs
        np.testing.assert_array_equal(idx, fidx)
    with pytest.raises(ValueError, match="batch_size 30 exceeds the number of examples"):
        next(shuffled_batches(n, 30, seed))
