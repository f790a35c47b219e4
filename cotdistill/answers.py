"""Final-answer extraction from reference solutions and model outputs.

Gold answers (`extract_gold`): the last `\\boxed{...}` (MATH style, kept whole as LaTeX), else
the value after the last `####` (GSM8K reference; a plain number is normalised, anything else
kept whole), else the text as it is.

Predictions (`extract_answer`), rule by rule. Each rule looks at its last occurrence, and a rule
whose capture holds no answer falls through to the next one:

1. the last non-empty `\\boxed{...}` / `\\fbox{...}`, whole (nested braces balanced);
2. the last `#### x` line whose value starts with an answer (a markdown heading such as
   `#### Step 2` is not one);
3. the last "the answer is ...", "the final answer is ...", "Final answer: ...", "Answer: ..."
   (at a line start): the first complete number or expression of that sentence. "The answer is
   7, since 3+4." -> `7`; "... is 3 + 4 = 7" -> `7`; "$x = \\frac{1}{2}$" -> `\\frac{1}{2}`;
   "(1, 2)" and intervals whole; "the answer is wrong." holds none and falls through;
4. when `fallback_last_number`, the last number anywhere in the text.

A number keeps its sign, fraction and percent (`-3/4`, `50%`); thousands separators between
groups of three digits (comma, thin space U+2009, narrow no-break space U+202F, no-break or
plain space, LaTeX `\\,` and `{,}`) and currency signs are dropped; a unit after it is not read
("5 apples" -> `5`). A digit glued to a letter is not a number ("x2", the "2" of "100m2").

Why not math-verify's own extraction (`math_verify.parse` with `LatexExtractionConfig` and
`ExprExtractionConfig`)? Its source (math_verify/parser.py, 0.9.0) anchors on the word "answer"
within 50 characters and otherwise takes the rightmost match; tried on the traps of
tests/test_answers.py it reads "the answer is wrong. Let me redo: 3+4=7" as 3, "1\\u2009000" as
1 and "(1, 2)" as 2, finds nothing in "The answer is \\sqrt{2}" (LaTeX outside `$...$`), and
returns sympy objects whose printed form loses what was written (`50%` -> `50*(1/100)`): 38 of
the 59 traps right, against all 59 here. It also parses every candidate with sympy (more than 10
times slower than this module: bench/results/answers.md) under `signal.alarm`, which works only
in a main thread. So extraction stays here as regular expressions that return the answer's
text (cheap, thread-safe, and the text is what `answer_key` votes on), and
math-verify does what it is good at: deciding whether that text equals the gold answer
(`verify.check_answers`).

    extract_gold("... #### 1,234")                        -> "1234"
    extract_answer("so \\boxed{\\frac{1}{2}}.")            -> "\\frac{1}{2}"
    extract_answer("The answer is 5 apples, not 3.")       -> "5"
    extract_answer("no answer here", fallback_last_number=False) -> None
"""

from __future__ import annotations

import re

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
_NUMBER = re.compile(
    r"(?<![\w.])"  # not the tail of a word or of another number ("x2", "1.2.3")
    r"(?P<sign>[-+\u2212])?(?:(?:\\?\$|[\u20ac\u00a3\u00a5\u20b9])\s?)?(?P<sign2>[-\u2212])?"
    rf"(?P<num>{_DIGITS})"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?)(?![\d/]))?"
    r"(?P<percent>\s?(?:\\?%|percent\b))?"
)
# Inline and display math. A `$` that opens has no space after it and one that closes none
# before it and no digit after it (TeX's rule), so "$5 and $6" is money, not math.
_MATH = re.compile(
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
_PHRASE = re.compile(
    r"(?:\bthe\s+(?:(?:final|correct|right)\s+)?answer|\bfinal\s+answer|^[\W_]*answer)"
    r"\s*\**\s*(?:\bis\b|\bwas\b|\bwould\s+be\b|\bwill\s+be\b|[:=])\s*\**\s*:?\s*\**",
    re.IGNORECASE | re.MULTILINE,
)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        # `\boxed 5` form
        match = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", text[start:])
        return match.group(1) if match else None
    depth = 0
    for pos in range(brace, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : pos].strip()
    return None


def _number_text(match: re.Match[str]) -> str:
    """A number as the answer's text: sign, digits without separators, fraction, percent."""
    negative = match["sign"] in _MINUS or match["sign2"] in _MINUS
    text = ("-" if negative else "") + _SEPARATORS.sub("", match["num"])
    if match["den"]:
        text += "/" + match["den"]
    if match["percent"]:
        text += "%"
    return text


def _math_content(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group is not None).strip()


def _from_math(content: str) -> str | None:
    """The answer inside a math span: after the last `=` of `x = ...`, a number normalised."""
    content = content.strip().rstrip(".").strip()
    if "=" in content and not re.search(r"[,;]", content):  # "a=1, b=2" is the answer itself
        content = content.rsplit("=", 1)[1].strip()
    number = _NUMBER.fullmatch(content)
    if number is not None:
        return _number_text(number)
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
    current = _number_text(first)
    pos = first.end()
    while (operator := _OPERATOR.match(text, pos)) is not None:
        following = _NUMBER.match(text, operator.end())
        if following is None:
            break
        if operator.group(1) == "=":
            current = _number_text(following)
        else:
            current += _OPERATOR_TEXT.get(operator.group(1), operator.group(1))
            current += _number_text(following)
        pos = following.end()
    return current


def _first_answer(text: str, at_start: bool = False) -> str | None:
    """The first complete number or expression in `text` (with `at_start`, only at its start)."""
    text = text.strip().lstrip("*").strip()
    candidates: list[tuple[int, int, str, re.Match[str] | None]] = []
    if (math := _MATH.search(text)) is not None:
        candidates.append((math.start(), 0, "math", math))
    brackets = [m.start() for m in re.finditer(r"\\\{|[(\[]", text)]
    for position in brackets:
        if _bracket_group(text, position) is not None:
            candidates.append((position, 1, "group", None))
            break
    if (command := _COMMAND.search(text)) is not None:
        candidates.append((command.start(), 2, "latex", command))
    if (number := _NUMBER.search(text)) is not None:
        candidates.append((number.start(), 3, "number", number))
    if not candidates:
        return None
    start, _, kind, match = min(candidates, key=lambda c: (c[0], c[1]))
    if at_start and start > 0:
        return None
    if kind == "math":
        return _from_math(_math_content(match))  # type: ignore[arg-type]
    if kind == "group":
        return _bracket_group(text, start)
    if kind == "number" and not _LATEX_AFTER_NUMBER.match(text, match.end()):  # type: ignore[union-attr]
        return _equation_value(text, match)  # type: ignore[arg-type]
    return _latex_at(text, start) or None


def _sentence(text: str) -> str:
    """`text` up to the end of its first sentence, never cut inside a math span."""
    masked = _MATH.sub(lambda m: "x" * len(m.group()), text)
    end = _SENTENCE_END.search(masked)
    return text[: end.start()] if end else text


def last_number(text: str) -> str | None:
    """The last number in the text (sign, fraction and percent kept), or None."""
    last = None
    for last in _NUMBER.finditer(text):  # noqa: B007 - only the last one is wanted
        pass
    return None if last is None else _number_text(last)


def extract_gold(solution: str, answer_format: str = "auto") -> str:
    """The gold answer from a reference solution; LaTeX answers are kept whole."""
    solution = solution.strip()
    if answer_format in ("boxed", "auto"):
        boxed = last_boxed(solution)
        if boxed is not None:
            return boxed
    if answer_format in ("gsm8k", "auto") and "####" in solution:
        value = solution.rsplit("####", 1)[1].strip().strip("*").strip()
        number = _NUMBER.fullmatch(value.rstrip("."))
        if number is not None:
            return _number_text(number)
        math = _MATH.fullmatch(value.rstrip("."))
        return (_from_math(_math_content(math)) or value) if math else value
    return solution


def extract_answer(text: str, fallback_last_number: bool = True) -> str | None:
    """The model's final answer, or None when nothing answer-like is found (rules: module doc)."""
    boxed = last_boxed(text)
    if boxed:
        return boxed
    for value in reversed(_HASHES.findall(text)):
        found = _first_answer(value, at_start=True)
        if found:
            return found
    phrases = list(_PHRASE.finditer(text))
    if phrases:
        found = _first_answer(_sentence(text[phrases[-1].end() :].lstrip()))
        if found:
            return found
    if fallback_last_number:
        return last_number(text)
    return None
