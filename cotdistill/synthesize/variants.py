"""The `numbers` strategy: new numbers in a seed's question, the gold recomputed where the seed
carries equations.

A seed with a program (cotdistill/synthesize/equations.py) gets new values only for the
question numbers its equations read (others may be used in prose the equations do not show,
so they stay), and a draw is kept only when every step's new result is of the seed's kind
(`equations.same_kind`): its answer is then exact (`label_source: equation`). A seed without
one gets new values for all its numbers and is labelled by the teacher's votes later.

    made = number_variants(seed, count=3, rng_seed=0)
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from fractions import Fraction

from cotdistill.synthesize.arithmetic import EquationError
from cotdistill.synthesize.equations import Program, compile_program, same_kind
from cotdistill.synthesize.numbers import NumberSpan, draw, format_answer, spans, write_number

DRAWS_PER_VARIANT = 50


@dataclass
class Seed:
    id: str
    question: str
    gold: str | None
    equations: list[str] = field(default_factory=list)


@dataclass
class Candidate:
    """A made problem before its label: `answer` is set when it is exact (from equations)."""

    id: str
    question: str
    synthetic_from: str
    strategy: str
    answer: str | None = None
    label_source: str | None = None
    note: str | None = None  # why a seed with equations gave no exact label
    reject: str | None = None  # set aside before labelling, and why


def rng_for(*parts: object) -> random.Random:
    """A generator that depends on the seed id and the variant only, so a resumed run makes
    the very same problems (crc32: str hashes change between processes)."""
    return random.Random(zlib.crc32("\x1f".join(map(str, parts)).encode()))


def rewrite(question: str, numbers: list[NumberSpan], new: dict[Fraction, Fraction]) -> str:
    pieces, at = [], 0
    for span in numbers:
        pieces += [question[at : span.start], write_number(new.get(span.value, span.value), span)]
        at = span.end
    return "".join(pieces) + question[at:]


def program_of(seed: Seed, numbers: list[NumberSpan]) -> tuple[Program | None, str | None]:
    try:
        return compile_program(seed.equations, numbers, seed.gold), None
    except (EquationError, ZeroDivisionError, OverflowError) as exc:
        return None, str(exc)


# When one value is written twice with different kinds (`60 ridges`, `60% full`), the new
# value must suit the strictest.
_STRICTNESS = {"percent": 0, "money": 1, "decimal": 2, "integer": 3}


def _draw_values(numbers: list[NumberSpan], which: set[Fraction],
                 rng: random.Random) -> dict[Fraction, Fraction]:
    strictest: dict[Fraction, NumberSpan] = {}
    for span in numbers:
        held = strictest.get(span.value)
        if span.value in which and (held is None or
                                    _STRICTNESS[span.kind] < _STRICTNESS[held.kind]):
            strictest[span.value] = span
    return {value: draw(span, rng) for value, span in strictest.items()}


def _exact_draw(program: Program, numbers: list[NumberSpan], rng: random.Random
                ) -> tuple[dict[Fraction, Fraction], Fraction] | str:
    """New values whose every step keeps its kind, and the new answer; else the last reason."""
    old = program.run({})
    used = {program.values[i] for i in program.used}
    reason = "no draw changed a number"
    for _ in range(DRAWS_PER_VARIANT):
        new = _draw_values(numbers, used, rng)
        if all(new[v] == v for v in new):
            continue
        after = {new.get(v, v) for v in program.values}
        if len(after) < len(program.values):
            reason = "two different numbers of the question became equal"
            continue
        try:
            results = program.run(new)
        except (EquationError, ZeroDivisionError, OverflowError) as exc:
            reason = str(exc)
            continue
        why = next((f"step {i + 1} result {r} is {w}"
                    for i, (o, r) in enumerate(zip(old, results, strict=True))
                    if (w := same_kind(o, r))), None)
        if why is None:
            return new, results[program.answer_step]
        reason = why
    return reason


def number_variants(seed: Seed, count: int, rng_seed: int = 0) -> list[Candidate]:
    """`count` new problems from one seed (some set aside, with their reason)."""
    numbers = spans(seed.question)
    program, why_not = program_of(seed, numbers) if seed.equations else (None, None)
    made = []
    for k in range(count):
        candidate = Candidate(f"{seed.id}~numbers-{k}", "", seed.id, "numbers")
        rng = rng_for(rng_seed, seed.id, "numbers", k)
        if not numbers:
            candidate.question, candidate.reject = seed.question, "no numbers in the question"
        elif program is not None:
            found = _exact_draw(program, numbers, rng)
            if isinstance(found, str):
                candidate.question = seed.question
                candidate.reject = f"no new numbers keep the equations' kinds ({found})"
            else:
                new, answer = found
                candidate.question = rewrite(seed.question, numbers, new)
                candidate.answer, candidate.label_source = format_answer(answer), "equation"
        else:
            new = _draw_values(numbers, {s.value for s in numbers}, rng)
            candidate.question = rewrite(seed.question, numbers, new)
            candidate.note = why_not
        made.append(candidate)
    return made
