"""Span extraction and exact-span F1."""

import pytest

from zoo.crf.spans import chunks, span_f1


def test_bmes_chunks():
    tags = ["O", "B-PER", "M-PER", "E-PER", "S-LOC", "O", "B-ORG", "E-ORG"]
    assert chunks(tags, "BMES") == {(1, 4, "PER"), (4, 5, "LOC"), (6, 8, "ORG")}


def test_bio_chunks_and_lenient_invalid_sequences():
    assert chunks(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC"], "BIO") == {
        (0, 2, "PER"), (3, 5, "LOC"), (5, 6, "LOC"),
    }  # fmt: skip
    # A continuation of another type opens a new chunk (conlleval's rule).
    assert chunks(["B-PER", "E-LOC"], "BMES") == {(0, 1, "PER"), (1, 2, "LOC")}


def test_segmentation_tags_give_words():
    assert chunks(list("bmesbe"), "BMES") == {(0, 3, ""), (3, 4, ""), (4, 6, "")}


def test_span_f1_counts_exact_matches_only():
    gold = [{(0, 2, "PER"), (3, 5, "LOC")}, {(1, 2, "ORG")}]
    pred = [{(0, 2, "PER"), (3, 4, "LOC")}, {(1, 2, "ORG"), (0, 1, "ORG")}]
    scores = span_f1(gold, pred)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert span_f1([set()], [set()]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_unknown_tag_is_an_error():
    with pytest.raises(ValueError, match="tag 'X-PER' does not belong to scheme 'BIO'"):
        chunks(["X-PER"], "BIO")
