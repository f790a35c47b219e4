"""Decontamination and near-duplicates: Unicode-aware word and character sketches."""

from __future__ import annotations

import heapq
import zlib
from array import array
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from cotdistill.filter.config import SKETCH_SIZE, FilterConfig
from cotdistill.textstats import ngrams, units, words

# ---------------------------------------------------------------------------------------------
# Pure checks


# Decontamination matches words of any script (cotdistill/textstats.py), not just ASCII.
words_of = words


def text_sketch(text: str, size: int = SKETCH_SIZE) -> bytes:
    """Bottom-k MinHash of the 3-grams of `units` (words; characters in scripts without
    spaces, so two Chinese traces are compared by their text, not as one giant word each):
    a few hundred bytes, whatever the text length."""
    pieces = units(text.casefold())
    # crc32, not hash(): str hashes change between processes, and runs must be reproducible.
    grams = {zlib.crc32(" ".join(g).encode()) for g in ngrams(pieces, 3)}
    grams = grams or {zlib.crc32(" ".join(pieces).encode())}
    return array("q", sorted(heapq.nsmallest(size, grams))).tobytes()


def similarity(a: bytes, b: bytes, size: int = SKETCH_SIZE) -> float:
    """Estimated Jaccard similarity of two sketches (exact when both texts are short)."""
    first, second = set(array("q", a)), set(array("q", b))
    union = heapq.nsmallest(size, first | second)
    if not union:
        return 1.0
    return sum(1 for h in union if h in first and h in second) / len(union)


class Contamination:
    """Word n-gram index of evaluation questions: `index(question)` is True on a leak.

    Words of any script (`textstats.words`); in Chinese, Japanese, Thai... a "word" is one
    character, so a question copied verbatim shares its character n-grams."""

    def __init__(self, questions: Iterable[str], n: int) -> None:
        self.grams: dict[int, set[tuple[str, ...]]] = defaultdict(set)
        for question in questions:
            words = words_of(question)
            size = min(n, len(words))
            if size:
                self.grams[size].update(ngrams(words, size))

    def __call__(self, question: str) -> bool:
        words = words_of(question)
        return any(
            gram in grams for size, grams in self.grams.items() for gram in ngrams(words, size)
        )


def load_contamination(config: FilterConfig) -> Contamination | None:
    from cotdistill.problems import load_problems

    if not config.decontaminate:
        return None
    questions = [p.question for path in config.decontaminate for p in load_problems(Path(path))]
    return Contamination(questions, config.decontaminate_ngram)
