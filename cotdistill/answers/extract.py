"""Reading the final answer out of a model's text (boxes, markers, the last number, roots)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import Field

# One setting for every stage that reads answers (filter, evaluate), documented once here, so the
# filter and the evaluation of one run cannot disagree about what counts as an answer.
FALLBACK_LAST_NUMBER = Field(
    True, description="Take the last number as the answer when no explicit answer is found."
)


# Between groups of three digits: comma, `{,}`, `\,`, plain / no-break / thin / narrow space.
_SEPARATOR = r"(?:,|\{,\}|\\,|[\x20\u00a0\u2009\u202f])"


_SEPARATORS = re.compile(r"\{,\}|\\,|[,\x20\u00a0\u2009\u202f]")


_DIGITS = rf"(?:\d{{1,3}}(?:{_SEPARATOR}\d{{3}})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"


_MINUS = ("-", "\u2212")


NUMBER = re.compile(
    # Not the tail of a word or of another number ("x2", "1.2.3"). Only alphabets that put
    # spaces between words count: in Chinese or Japanese a number follows a character directly.
    r"(?<![^\W\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff])(?<!\.)"
    r"(?P<sign>[-+\u2212])?(?:(?:\\?\$|[\u20ac\u00a3\u00a5\u20b9])\s?)?(?P<sign2>[-\u2212])?"
    rf"(?P<num>{_DIGITS})"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?)(?![\d/]))?"
    r"(?P<percent>\s?(?:\\?%|percent\b))?"
)


# Inline and display math. A `$` that opens has no space after it and one that closes none
# before it and no digit after it (TeX's rule), so "$5 and $6" is money, not math.
MATH = re.compile(
    r"\$\$(?P<display>.+?)\$\$|\\\[(?P<bracket>.+?)\\\]|\\\((?P<paren>.+?)\\\)"
    r"|(?<![\\$])\$(?P<inline>[^\s$][^$\n]*?(?<![\s\\])|[^\s$\\])\$(?!\d)",
    re.DOTALL,
)


_COMMAND = re.compile(r"-?\\[A-Za-z]+")


_LATEX_AFTER_NUMBER = re.compile(r"\\[A-Za-z]|\^\{|_|\{")


_OPERATOR = re.compile(r"\s*(=|[-+*/^\u00d7\u00f7]|\\times|\\cdot|\\div)\s*")


_OPERATOR_TEXT = {"\u00d7": "*", "\\times": "*", "\\cdot": "*", "\u00f7": "/", "\\div": "/"}


_WORD_AHEAD = re.compile(r"\s*[A-Za-z]{2,}")


_PLAIN_WORD = re.compile(r"(?<!\\)\b[A-Za-z]{2,}")


_SENTENCE_END = re.compile(r"\n|[.!?](?=\s|$)")


_HASHES = re.compile(r"^[ \t]*####[ \t]*(.*?)\s*$", re.MULTILINE)


PHRASE = re.compile(
    r"(?:\bthe\s+(?:(?:final|correct|right)\s+)?answer|\bfinal\s+answer|^[\W_]*answer)"
    r"\s*\**\s*(?:\bis\b|\bwas\b|\bwould\s+be\b|\bwill\s+be\b|[:=])\s*\**\s*:?\s*\**",
    re.IGNORECASE | re.MULTILINE,
)


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")


# `\boxed 5` (no braces): TeX boxes one token; a trailing full stop is the sentence's.
_BOX_TOKEN = re.compile(r"[^\s${}]+")


@dataclass(frozen=True)
class Box:
    """One `\\boxed`: its content, and whether its braces closed before the text ended."""

    content: str
    closed: bool


def _box_at(text: str, match: re.Match[str]) -> Box:
    """The box opened by `match`: `{...}` with nested braces balanced, or one bare token.

    The brace must follow `\\boxed` directly: searching further would read the next group of
    the text (`\\boxed 5. Check: \\frac{10}{2}` is 5, not 10).
    """
    pos = match.end()
    if not text.startswith("{", pos):
        token = _BOX_TOKEN.match(text, pos)
        return Box(token.group().rstrip(".,;:") if token else "", True)
    depth = 0
    for end in range(pos, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                return Box(text[pos + 1 : end].strip(), True)
    return Box(text[pos + 1 :].strip(), False)


def final_box(text: str) -> Box | None:
    """The last non-empty box, or the last box when it never closed; None without a box.

    An unclosed box runs to the end of the text, so it is the last one: an answer cut there
    (or written with a missing brace) must not fall back to some number inside it.
    """
    boxes = [_box_at(text, m) for m in _BOX_OPEN.finditer(text)]
    if boxes and not boxes[-1].closed:
        return boxes[-1]
    return next((box for box in reversed(boxes) if box.content), None)


def last_boxed(text: str) -> str | None:
    """Content of the last closed, non-empty \\boxed{...} (or \\fbox{...}), else None."""
    box = final_box(text)
    return box.content if box is not None and box.closed else None


def number_text(match: re.Match[str]) -> str:
    """A number as the answer's text: sign, digits without separators, fraction, percent."""
    negative = match["sign"] in _MINUS or match["sign2"] in _MINUS
    text = ("-" if negative else "") + _SEPARATORS.sub("", match["num"])
    if match["den"]:
        text += "/" + match["den"]
    if match["percent"]:
        text += "%"
    return text


def math_content(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group is not None).strip()


def from_math(content: str) -> str | None:
    """The answer inside a math span: after the last `=` of `x = ...`, a number normalised."""
    content = content.strip().rstrip(".").strip()
    if "=" in content and not re.search(r"[,;]", content):  # "a=1, b=2" is the answer itself
        content = content.rsplit("=", 1)[1].strip()
    number = NUMBER.fullmatch(content)
    if number is not None:
        return number_text(number)
    return content or None


def _latex_at(text: str, start: int) -> str:
    """A LaTeX expression from `start`, ending where plain words or the sentence resume."""
    depth, pos, end = 0, start, start
    while pos < len(text):
        char = text[pos]
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0:
            if char == "$":
                break
            if char in ",;" and _WORD_AHEAD.match(text, pos + 1):  # "\frac{3}{4}, which ..."
                break
            if char.isspace() and _WORD_AHEAD.match(text, pos):  # "\sqrt{2} units"
                break
        pos += 1
        if not char.isspace():
            end = pos
    return text[start:end].rstrip(".,;:")


def _bracket_group(text: str, start: int) -> str | None:
    """A tuple, interval or set (`(1, 2)`, `[0, 1)`, `\\{1, 2\\}`) opening at `start`, else None."""
    if text.startswith("\\{", start):
        close = text.find("\\}", start)
        inner = text[start + 2 : close]
        return text[start : close + 2] if close > 0 and re.search(r"[\d\\]", inner) else None
    depth = 0
    for pos in range(start, len(text)):
        if text[pos] in "([":
            depth += 1
        elif text[pos] in ")]":
            depth -= 1
            if depth == 0:
                group = text[start : pos + 1]
                inner = group[1:-1]
                if "," in inner and re.search(r"[\d\\]", inner) and not _PLAIN_WORD.search(inner):
                    return group
                return None
    return None


def _equation_value(text: str, first: re.Match[str]) -> str:
    """The number at `first`, or the value its arithmetic comes to: `3 + 4 = 7` -> `7`."""
    current = number_text(first)
    pos = first.end()
    while (operator := _OPERATOR.match(text, pos)) is not None:
        following = NUMBER.match(text, operator.end())
        if following is None:
            break
        if operator.group(1) == "=":
            current = number_text(following)
        else:
            current += _OPERATOR_TEXT.get(operator.group(1), operator.group(1))
            current += number_text(following)
        pos = following.end()
    return current


def first_answer(text: str, at_start: bool = False) -> str | None:
    """The first complete number or expression in `text` (with `at_start`, only at its start)."""
    text = text.strip().lstrip("*").strip()
    candidates: list[tuple[int, int, str, re.Match[str] | None]] = []
    if (math := MATH.search(text)) is not None:
        candidates.append((math.start(), 0, "math", math))
    brackets = [m.start() for m in re.finditer(r"\\\{|[(\[]", text)]
    for position in brackets:
        if _bracket_group(text, position) is not None:
            candidates.append((position, 1, "group", None))
            break
    if (command := _COMMAND.search(text)) is not None:
        candidates.append((command.start(), 2, "latex", command))
    if (number := NUMBER.search(text)) is not None:
        candidates.append((number.start(), 3, "number", number))
    if not candidates:
        return None
    start, _, kind, match = min(candidates, key=lambda c: (c[0], c[1]))
    if at_start and start > 0:
        return None
    if kind == "math":
        return from_math(math_content(match))  # type: ignore[arg-type]
    if kind == "group":
        return _bracket_group(text, start)
    if kind == "number" and not _LATEX_AFTER_NUMBER.match(text, match.end()):  # type: ignore[union-attr]
        return _equation_value(text, match)  # type: ignore[arg-type]
    return _latex_at(text, start) or None


def first_sentence(text: str) -> str:
    """`text` up to the end of its first sentence, never cut inside a math span."""
    masked = MATH.sub(lambda m: "x" * len(m.group()), text)
    end = _SENTENCE_END.search(masked)
    return text[: end.start()] if end else text


def last_number(text: str) -> str | None:
    """The last number in the text (sign, fraction and percent kept), or None."""
    last = None
    for last in NUMBER.finditer(text):  # noqa: B007 - only the last one is wanted
        pass
    return None if last is None else number_text(last)


# --- several roots: "x = 2 or x = 3" -----------------------------------------------------------
# Words that join alternatives, also inside LaTeX (`\text{ or }`); `\quad` separates like a comma.
_JOIN_WORDS = re.compile(r"\\(?:text|mbox|textrm|mathrm)\{\s*(or|and)\s*\}|\\q?quad\b")


_DELIMITERS = re.compile(r"\$|\\[()\[\]]")


_LIST_SEPARATOR = re.compile(r"\s*(?:,|;|\s(or|and)\s)\s*", re.IGNORECASE)


_VARIABLE = re.compile(r"^(?P<var>[A-Za-z](?:_\{?\w+\}?)?)\s*=\s*(?P<value>[^=]+)$")


def _top_level_pieces(text: str) -> list[tuple[str, str]]:
    """(piece, separator before it) for `text` split at `,`, `;`, ` or `, ` and `, outside
    brackets, braces and numbers (`1,234` stays one piece)."""
    numbers = [m.span() for m in NUMBER.finditer(text)]
    pieces: list[tuple[str, str]] = []
    depth, start, separator, pos = 0, 0, "", 0
    while pos < len(text):
        char = text[pos]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        inside_number = any(a < pos < b for a, b in numbers)
        found = _LIST_SEPARATOR.match(text, pos) if depth == 0 and not inside_number else None
        if found is not None and found.end() > pos and (found.group(1) or char in ",;"):
            pieces.append((text[start:pos], separator))
            separator = (found.group(1) or char).lower()
            start = pos = found.end()
            continue
        pos += 1
    pieces.append((text[start:], separator))
    return pieces


def _value(piece: str) -> str | None:
    """A piece that is one bare value (number or LaTeX, no words), normalised; else None."""
    piece = piece.strip().rstrip(".").strip()
    if not piece or "=" in piece or has_words(piece):
        return None
    number = NUMBER.fullmatch(piece)
    return number_text(number) if number is not None else piece


def alternatives(text: str) -> tuple[str, bool] | None:
    """Several roots at the start of `text` as one set answer, and whether all of `text` was used.

    `x = 2 or x = 3` and `x = 2, x = 3` -> `\\{2, 3\\}` (math-verify compares sets, so the order of
    the roots does not matter). A list is read as roots only when it names one variable or joins
    with "or": `3, 4 and 5 apples` is not a set, and `x = 1, y = 2` (a point) is left to the
    other rules. math-verify's own extraction reads "x = 2 or x = 3" outside `$...$` as 3.
    """
    clean = _DELIMITERS.sub(" ", _JOIN_WORDS.sub(lambda m: f" {m.group(1) or ','} ", text))
    values: list[str] = []
    variables: set[str] = set()
    joined_by_or = False
    pieces = _top_level_pieces(clean)
    used = 0
    for piece, separator in pieces:
        named = _VARIABLE.match(piece.strip())
        value = _value(named["value"] if named else piece)
        if value is None:
            break
        if named is not None:
            variables.add(named["var"])
        joined_by_or |= separator == "or"
        values.append(value)
        used += 1
    if len(values) < 2 or len(variables) > 1 or not (variables or joined_by_or):
        return None
    unique = list(dict.fromkeys(values))
    answer = unique[0] if len(unique) == 1 else "\\{" + ", ".join(unique) + "\\}"
    return answer, used == len(pieces)


# Names of functions and constants: letters in an expression that are not words of a sentence.
_MATH_NAMES = frozenset((
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh",
    "tanh", "log", "ln", "lg", "exp", "sqrt", "pi", "inf", "oo", "infty", "max", "min", "gcd",
    "lcm", "mod", "deg", "det", "dim", "ker",
))


_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textrm|mbox|operatorname|textbf|mathbf)\s*\{[^{}]*\}")


_LETTER_RUN = re.compile(r"[^\W\d_]{2,}")


def has_words(text: str) -> bool:
    """Whether `text` holds words of a sentence (any script), not just math.

    Units and labels inside `\\text{...}` and LaTeX commands are math; so are function names.
    """
    text = _COMMAND.sub(" ", _LATEX_TEXT.sub(" ", text))
    return any(w.lower() not in _MATH_NAMES for w in _LETTER_RUN.findall(text))


def with_roots(answer: str) -> str:
    """A boxed or marked answer that lists roots (`x = 2 \\text{ or } x = 3`) as one set."""
    roots = alternatives(answer)
    return roots[0] if roots is not None and roots[1] else answer


def _marked_answer(text: str) -> str | None:
    """The answer after the last "the answer is ..." marker, roots read as one set."""
    phrases = list(PHRASE.finditer(text))
    if not phrases:
        return None
    sentence = first_sentence(text[phrases[-1].end() :].lstrip())
    roots = alternatives(sentence)
    return roots[0] if roots is not None else first_answer(sentence)


def _last_number_or_roots(text: str) -> str | None:
    """The last number, or the set of roots it closes (`... so x = 2 or x = 3.`)."""
    numbers = list(NUMBER.finditer(text))
    if not numbers:
        return None
    last = numbers[-1]
    sentence_start = 0
    for end in _SENTENCE_END.finditer(text, 0, last.start()):
        sentence_start = end.end()
    tail = text[last.end() :].strip().rstrip(".!?").strip()
    for start in re.finditer(r"[A-Za-z]\s*=|[-+\u2212$\\\d]", text[sentence_start : last.start()]):
        roots = alternatives(text[sentence_start + start.start() : last.end()])
        if roots is not None and roots[1] and not tail:
            return roots[0]
    return number_text(last)


def extract_answer(text: str, fallback_last_number: bool = True) -> str | None:
    """The model's final answer, or None when nothing answer-like is found (rules: module doc).

    With `fallback_last_number=False` only a closed box, a `####` line or an answer marker
    counts (evaluation reads outputs cut at max_tokens this way).
    """
    box = final_box(text)
    if box is not None:
        # An unclosed box is an answer cut off (or mistyped): no number inside it is the answer.
        return with_roots(box.content) if box.closed else None
    for value in reversed(_HASHES.findall(text)):
        roots = alternatives(value)
        found = roots[0] if roots is not None else first_answer(value, at_start=True)
        if found:
            return found
    found = _marked_answer(text)
    if found:
        return found
    if fallback_last_number:
        return _last_number_or_roots(text)
    return None
