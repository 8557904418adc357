"""The committed quatrain extract: format, split and vocabulary."""

import re

import pytest

from zoo.data import poetry as P


@pytest.fixture(scope="module")
def poems():
    return P.load_quatrains()


def test_extract_is_strict_quatrains_with_clean_titles(poems):
    assert len(poems) == 14263
    line = re.compile(r"^([\u4e00-\u9fff]{5}，[\u4e00-\u9fff]{5}。){2}$")
    assert all(line.match(p.body) for p in poems)
    assert all(re.match(r"^[\u4e00-\u9fff]{1,12}$", p.title) for p in poems)
    assert len({p.body for p in poems}) == len(poems)


def test_split_is_by_content_and_disjoint(poems):
    train, test = P.load_split("train"), P.load_split("test")
    assert len(train) + len(test) == len(poems)
    assert not {p.body for p in train} & {p.body for p in test}
    assert 0.04 < len(test) / len(poems) < 0.06
    assert all(P.is_test(p.body) for p in test)
    with pytest.raises(ValueError, match="`split` must be 'train' or 'test'"):
        P.load_split("valid")


def test_vocab_round_trip_and_specials():
    vocab = P.Vocab.build(["春眠不覺曉", "春曉"], min_count=1)
    assert vocab.chars[:4] == P.SPECIALS and vocab.chars[4] == "春"  # most frequent first
    ids = vocab.encode("春眠X曉")
    assert ids[2] == P.UNK
    assert vocab.decode([P.START] + ids + [P.END, 5, 6]) == "春眠□曉"
    assert P.Vocab.build(["春眠不覺曉", "春曉"], min_count=2).chars[4:] == ("春", "曉")
