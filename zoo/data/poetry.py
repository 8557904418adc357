"""Chinese 5-character quatrains with their titles, from the npm package ``chinese-poetry@2.0.1``.

The corpus (MIT, © 2016 JackeyGao; traditional characters) ships 57,607 Tang and 254,248 Song
poems as JSON. The zoo uses the **strict 5-character quatrains**: exactly two paragraphs, each
``XXXXX，XXXXX。`` with ``X`` a CJK ideograph (U+4E00–U+9FFF). Their titles are kept when, after
removing spaces, they are 1–:data:`MAX_TITLE` ideographs (titles with punctuation, digits or
Latin letters are dropped with their poem); repeated bodies are kept once (first occurrence in
the package's file order: all Tang files, then all Song files, each in numeric order).

The extract is committed as ``zoo/data/poetry/quatrains.tsv.gz`` (``title<TAB>body`` per line,
with the package's licence beside it), so no command needs npm; it is rebuilt from the package by::

    bash scripts/get_data.sh chinese_poetry        # npm pack into ~/.cache/zoo/raw
    python -m zoo.data.poetry --rebuild             # rewrites the committed extract

**Split.** Deterministic by content: a poem is held out when the first 8 hex digits of the MD5
of its body, as an integer, fall below ``TEST_FRACTION · 16⁸`` (5 %); the rest is ``train``.
Adding or removing poems never moves another poem between the splits.

**Vocabulary.** Character ids: ``0`` pad, ``1`` unk, ``2`` start (``[CLS]``), ``3`` end
(``[SEP]``), then the characters of the *training* split (titles and bodies) seen at least
``min_count`` times, most frequent first (ties by code point). ``，`` and ``。`` are characters
like any other.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

PAD, UNK, START, END = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<start>", "<end>")
PACKAGE = "chinese-poetry@2.0.1"
MAX_TITLE = 12
BODY_LENGTH = 24  # 2 × "XXXXX，XXXXX。"
TEST_FRACTION = 0.05
EXTRACT = Path(__file__).resolve().parent / "poetry" / "quatrains.tsv.gz"
_LINE = re.compile(r"^[\u4e00-\u9fff]{5}，[\u4e00-\u9fff]{5}。$")
_TITLE = re.compile(rf"^[\u4e00-\u9fff]{{1,{MAX_TITLE}}}$")


class Poem(NamedTuple):
    title: str
    body: str  # 24 characters: two "XXXXX，XXXXX。" lines


# --------------------------------------------------------------------------- #
# Extraction from the npm package
# --------------------------------------------------------------------------- #


def _poem_files(package_dir: Path) -> list[Path]:
    folder = Path(package_dir) / "dist" / "quantangshi"
    number = lambda p: int(p.name.split(".")[2])  # noqa: E731  poet.<dynasty>.<n>.json
    tang = sorted(folder.glob("poet.tang.*.json"), key=number)
    song = sorted(folder.glob("poet.song.*.json"), key=number)
    if not tang or not song:
        raise FileNotFoundError(f"no poet.tang/song.*.json under {folder}; is {PACKAGE} unpacked at {package_dir}?")
    return tang + song


def extract_quatrains(package_dir) -> list[Poem]:
    """The strict 5-character quatrains with a clean title, first occurrence of each body."""
    poems, seen = [], set()
    for path in _poem_files(package_dir):
        for record in json.loads(path.read_text(encoding="utf-8")):
            paragraphs = record.get("paragraphs") or []
            if len(paragraphs) != 2 or not all(_LINE.match(p) for p in paragraphs):
                continue
            title = (record.get("title") or "").replace(" ", "").replace("\u3000", "")
            body = "".join(paragraphs)
            if not _TITLE.match(title) or body in seen:
                continue
            seen.add(body)
            poems.append(Poem(title, body))
    return poems


def write_extract(poems: list[Poem], path: Path = EXTRACT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{p.title}\t{p.body}\n" for p in poems)
    # mtime=0: the same poems give the same bytes (a reproducible committed file).
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(text.encode("utf-8"))


# --------------------------------------------------------------------------- #
# Loading, split and vocabulary
# --------------------------------------------------------------------------- #


def load_quatrains(path: Path = EXTRACT) -> list[Poem]:
    """Every poem of the extract, in file order."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        poems = [Poem(*line.rstrip("\n").split("\t")) for line in f]
    for p in poems:
        if len(p.body) != BODY_LENGTH:
            raise ValueError(f"{path}: body {p.body!r} is not {BODY_LENGTH} characters")
    return poems


def is_test(body: str) -> bool:
    digest = int(hashlib.md5(body.encode("utf-8")).hexdigest()[:8], 16)
    return digest < TEST_FRACTION * 16**8


def load_split(split: str, limit: int = 0) -> list[Poem]:
    """``split`` in ``("train", "test")``; the first ``limit`` poems of it when ``limit > 0``."""
    if split not in ("train", "test"):
        raise ValueError(f"load_split: `split` must be 'train' or 'test'; got {split!r}")
    poems = [p for p in load_quatrains() if is_test(p.body) == (split == "test")]
    return poems[:limit] if limit > 0 else poems


class Vocab(NamedTuple):
    chars: tuple[str, ...]  # id -> character; ids 0..3 are SPECIALS

    @classmethod
    def build(cls, texts, min_count: int = 1) -> "Vocab":
        counts = Counter(c for t in texts for c in t)
        kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        return cls(SPECIALS + tuple(kept))

    @property
    def size(self) -> int:
        return len(self.chars)

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str, index: dict[str, int] | None = None) -> list[int]:
        index = index or self.index()
        return [index.get(c, UNK) for c in text]

    def decode(self, ids) -> str:
        """Characters up to the first ``END`` (exclusive); pad and start skipped, unk as ``□``."""
        out = []
        for i in np.asarray(ids).tolist():
            if i == END:
                break
            if i in (PAD, START):
                continue
            out.append("□" if i == UNK else self.chars[i])
        return "".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="rewrite the committed extract from the npm package")
    parser.add_argument("--package-dir", default=str(Path.home() / ".cache/zoo/raw/npm/node_modules/chinese-poetry"))
    args = parser.parse_args(argv)
    if args.rebuild:
        poems = extract_quatrains(args.package_dir)
        write_extract(poems)
        print(f"wrote {len(poems)} quatrains to {EXTRACT}")
    poems = load_quatrains()
    test = sum(is_test(p.body) for p in poems)
    print(f"{len(poems)} quatrains: {len(poems) - test} train, {test} test")


if __name__ == "__main__":
    main()
