"""Final-answer extraction from reference solutions and model outputs.

Gold answers (`read_gold`, `extract_gold`): the last `\\boxed{...}` (kept whole as LaTeX), else
the value after the last `####`, else a bare answer (number, fraction, expression, LaTeX, one
word) taken whole, else "the answer is ...", else text holding exactly one number (rule
`single_number`, counted by `problems.LoadStats`); anything else, and an unclosed box, raises
GoldError. The table of docs/answers.md is checked against these functions.

Predictions (`extract_answer`), rule by rule. Each rule looks at its last occurrence, and a rule
whose capture holds no answer falls through to the next one:

1. the last non-empty `\\boxed{...}` / `\\fbox{...}`, whole (nested braces balanced); `\\boxed 5`
   boxes one token; a box that never closes gives no answer at all (the answer was cut);
2. the last `#### x` line whose value starts with an answer (a markdown heading such as
   `#### Step 2` is not one);
3. the last "the answer is ...", "the final answer is ...", "Final answer: ...", "Answer: ..."
   (at a line start): the first complete number or expression of that sentence. "The answer is
   7, since 3+4." -> `7`; "... is 3 + 4 = 7" -> `7`; "$x = \\frac{1}{2}$" -> `\\frac{1}{2}`;
   "(1, 2)" and intervals whole; "the answer is wrong." holds none and falls through;
4. when `fallback_last_number`, the last number anywhere in the text.

Roots (`x = 2 or x = 3`) are one set answer `\\{2, 3\\}` in every rule (`alternatives`).

A number keeps its sign, fraction and percent (`-3/4`, `50%`); thousands separators between
groups of three digits (comma, thin space U+2009, narrow no-break space U+202F, no-break or
plain space, LaTeX `\\,` and `{,}`) and currency signs are dropped; a unit after it is not read
("5 apples" -> `5`). A digit glued to a letter is not a number ("x2", the "2" of "100m2"),
except after Chinese, Japanese or Korean characters, which need no space ("答案是42").

Why not math-verify's own extraction everywhere (`math_verify.parse` with
`LatexExtractionConfig` and `ExprExtractionConfig`)? Its source (math_verify/parser.py, 0.9.0)
anchors on the word "answer" within 50 characters and otherwise takes the rightmost match; tried
on the traps of tests/test_answers.py it reads "the answer is wrong. Let me redo: 3+4=7" as 3,
"1\\u2009000" as 1 and "(1, 2)" as 2, finds nothing in "The answer is \\sqrt{2}" (LaTeX outside
`$...$`), and returns sympy objects whose printed form loses what was written (`50%` ->
`50*(1/100)`): 38 of the 59 traps right, against all 59 here. It also parses every candidate
with sympy (more than 10 times slower than this module: bench/results/answers.md) under
`signal.alarm`, which works only in a main thread. So extraction stays here as regular
expressions that return the answer's text (cheap, thread-safe, and the text is what `answer_key`
votes on), and math-verify does what it is good at: reading that text as math with
`LatexExtractionConfig` / `ExprExtractionConfig` and deciding whether it equals the gold
(`verify.check_answers`, `verify.group_equivalent`). tests/test_answer_rules.py keeps the cases
math-verify's extraction reads wrong (an unclosed box, roots in prose, "the answer is wrong",
thin-space thousands).

    extract_gold("... #### 1,234")                        -> "1234"
    extract_answer("so \\boxed{\\frac{1}{2}}.")            -> "\\frac{1}{2}"
    extract_answer("The answer is 5 apples, not 3.")       -> "5"
    extract_answer("no answer here", fallback_last_number=False) -> None
"""

from cotdistill.answers.equivalence import (
    Verdict,
    VerifyStats,
    answer_key,
    fast_verdict,
    plain_number,
    verify_one,
)
from cotdistill.answers.extract import (
    FALLBACK_LAST_NUMBER,
    Box,
    alternatives,
    extract_answer,
    final_box,
    last_boxed,
    last_number,
)
from cotdistill.answers.gold import (
    Gold,
    GoldError,
    GoldRule,
    extract_gold,
    is_bare_answer,
    read_gold,
)
from cotdistill.answers.workers import (
    CHUNK,
    HARD_LIMIT_GRACE_S,
    check_answers,
    group_equivalent,
    group_equivalent_many,
)

__all__ = [
    "Box", "CHUNK", "FALLBACK_LAST_NUMBER", "Gold", "GoldError", "GoldRule",
    "HARD_LIMIT_GRACE_S", "Verdict", "VerifyStats", "alternatives", "answer_key",
    "check_answers", "extract_answer", "extract_gold", "fast_verdict", "final_box",
    "group_equivalent", "group_equivalent_many", "is_bare_answer", "last_boxed", "last_number",
    "plain_number", "read_gold", "verify_one",
]
