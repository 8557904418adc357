"""Chunks (entities, words) from tag sequences, and exact-span precision/recall/F1."""

from __future__ import annotations

from typing import Iterable, Sequence

Span = tuple[int, int, str]  # [start, end) and type


def _split(tag: str) -> tuple[str, str]:
    prefix, _, kind = tag.partition("-")
    return prefix.upper(), kind


def chunks(tags: Sequence[str], scheme: str) -> set[Span]:
    """Spans encoded by ``tags`` under BIO, BIOES or BMES.

    Lenient like conlleval on invalid sequences: a continuation tag (I/M/E) that does
    not continue an open chunk of its type opens a new one.
    """
    scheme = scheme.upper()
    inside = "I" if scheme in ("BIO", "BIOES") else "M"
    spans: set[Span] = set()
    begin, kind_open = None, None

    def close(end):
        nonlocal begin, kind_open
        if begin is not None:
            spans.add((begin, end, kind_open))
        begin, kind_open = None, None

    for i, tag in enumerate(tags):
        prefix, kind = _split(tag)
        if prefix == "O":
            close(i)
        elif prefix == "S":
            close(i)
            spans.add((i, i + 1, kind))
        elif prefix == "B":
            close(i)
            begin, kind_open = i, kind
        elif prefix in (inside, "E"):
            if begin is None or kind != kind_open:
                close(i)
                begin, kind_open = i, kind
            if prefix == "E":
                close(i + 1)
        else:
            raise ValueError(f"chunks: tag {tag!r} does not belong to scheme {scheme!r}")
    close(len(tags))
    return spans


def span_f1(gold: Iterable[set[Span]], predicted: Iterable[set[Span]]) -> dict[str, float]:
    """Micro precision, recall and F1 over exactly matching spans."""
    n_gold = n_pred = n_correct = 0
    for g, p in zip(gold, predicted, strict=True):
        n_gold += len(g)
        n_pred += len(p)
        n_correct += len(g & p)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
