"""Text units and n-gram helpers shared by the filter (decontamination, near-duplicates,
rejecting degenerate traces) and the evaluation (counting samples that repeated themselves),
kept below both stages so neither imports the other.

Text in any language: `words` are Unicode letters and digits (casefolded, NFKC-normalised, so
`Привет` stays a word instead of vanishing and a decomposed `é` equals a composed one), and
in scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer,
Myanmar, Tibetan) every character is a unit of its own, so n-grams there are character
n-grams. `units` keeps everything but whitespace, for checks where symbols matter.

    words("Сколько будет 2 + 3?")        -> ['сколько', 'будет', '2', '3']
    words("小明有3个苹果")                -> ['小', '明', '有', '3', '个', '苹', '果']
    repeat_share("a b c a b c a b c", 3)  -> 4 / 7
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from functools import cache

# Blocks of scripts written without spaces between words (and their punctuation: `。`, `，`),
# where a whitespace-free run is a whole sentence, not a word. Hangul is spaced: not here.
_UNSPACED = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u2e80-\u2fdf"  # CJK radicals
    "\u3001-\u303f"  # CJK punctuation (not U+3000, the ideographic space)
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f\u3190-\u31ff"  # Bopomofo, kanbun, Katakana extensions
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK ideographs
    "\ua000-\ua4cf"  # Yi
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff01-\uff60"  # full-width punctuation (full-width letters fold to ASCII under NFKC)
    "\U00020000-\U0003134f"  # CJK extensions B-H
)
_UNITS = re.compile(rf"[{_UNSPACED}]|[^\s{_UNSPACED}]+")


@cache
def _word_pattern() -> re.Pattern[str]:
    """Letters and digits of any script. Python's `\\w` leaves out combining marks (Arabic
    harakat, Devanagari vowel signs, decomposed accents), which would cut words apart at every
    vowel, so the marks are added; built on first use to keep imports instant."""
    marks, start = [], None
    for code in range(sys.maxunicode + 2):
        is_mark = code <= sys.maxunicode and unicodedata.category(chr(code)).startswith("M")
        if is_mark and start is None:
            start = code
        elif not is_mark and start is not None:
            marks.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
            start = None
    letter = rf"[^\W_{_UNSPACED}]|[{''.join(marks)}]"
    # One unit per character in unspaced scripts, punctuation (`。`) left out like elsewhere.
    return re.compile(rf"(?=\w|[{''.join(marks)}])[{_UNSPACED}]|(?:{letter})+")


def words(text: str) -> list[str]:
    """Casefolded words (letters and digits, punctuation dropped); one unit per character in
    scripts written without spaces."""
    return _word_pattern().findall(unicodedata.normalize("NFKC", text).casefold())


def units(text: str) -> list[str]:
    """Whitespace-separated pieces, symbols kept (`\\boxed{5}` is one), except that scripts
    written without spaces give one unit per character (a Chinese sentence is not one word)."""
    return _UNITS.findall(text)


def ngrams(words: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def repeat_share(text: str, n: int) -> float:
    """Share of n-grams of `units` that repeat an earlier one (0 for text shorter than n)."""
    grams = list(ngrams(units(text), n))
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
