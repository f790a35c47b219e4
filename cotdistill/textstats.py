"""Word n-gram helpers shared by the filter (rejecting degenerate traces) and the evaluation
(counting samples that repeated themselves), kept below both stages so neither imports the other.

    repeat_share("a b c a b c a b c", 3)  -> 4 / 7
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def ngrams(words: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def repeat_share(text: str, n: int) -> float:
    """Share of word n-grams that repeat an earlier one (0 for text shorter than n words)."""
    grams = list(ngrams(text.split(), n))
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
