"""Problems the teacher writes (`rephrase`, `similar`, `backward`): prompts, and reading the
new problem out of the reply.

The prompts are data (`prompts/synth_<strategy>.yaml`, cotdistill/prompts.py); `backward` (FOBAR)
shows the seed with its answer. A reply is read from after its last "New problem:" (or whole),
up to a line that starts the solution ("Answer", "Solution", "Step"); a reply that holds no
question with a number in it is set aside with that reason. These problems are labelled by
votes, never by the seed's answer (the teacher may have changed what is asked).

    conversations = writing_prompts(seeds, "similar", count=2)
    question, reason = read_written(reply)
"""

from __future__ import annotations

import re

from cotdistill.prompts import load_template
from cotdistill.records import Message
from cotdistill.synthesize.variants import Candidate, Seed

_MARKER = re.compile(r"(?:new\s+)?problem\s*:\s*", re.IGNORECASE)
_SOLUTION = re.compile(r"^\s*(?:\**\s*)(?:answer|solution|step\s*\d|let'?s|to solve)\b",
                       re.IGNORECASE | re.MULTILINE)
MIN_WORDS = 6


def prompt_input(seed: Seed, strategy: str) -> str:
    if strategy == "backward":
        return f"Problem: {seed.question}\nAnswer: {seed.gold}"
    return seed.question


def writing_prompts(seeds: list[Seed], strategy: str, count: int
                    ) -> list[tuple[Candidate, list[Message] | None]]:
    """One empty candidate and the conversation that asks for it, per seed and count (None,
    and the candidate set aside, where `backward` meets a seed without a gold answer)."""
    template = load_template(f"synth_{strategy}")
    asked: list[tuple[Candidate, list[Message] | None]] = []
    for seed in seeds:
        for k in range(count):
            candidate = Candidate(f"{seed.id}~{strategy}-{k}", seed.question, seed.id, strategy)
            if strategy == "backward" and seed.gold is None:
                candidate.reject = "backward needs the seed's gold answer; it has none"
                asked.append((candidate, None))
            else:
                asked.append((candidate, template.render(prompt_input(seed, strategy))))
    return asked


def read_written(reply: str) -> tuple[str, str | None]:
    """(the new problem, None) or (what was read, why it is set aside)."""
    text = reply.strip()
    markers = list(_MARKER.finditer(text))
    if markers:
        text = text[markers[-1].end():]
    cut = _SOLUTION.search(text)
    if cut is not None:
        text = text[: cut.start()]
    text = " ".join(text.split()).strip('"').strip()
    if len(text.split()) < MIN_WORDS:
        return text, f"the teacher wrote no problem ({len(text.split())} words)"
    if not re.search(r"\d", text):
        return text, "the written problem has no number"
    if "?" not in text:
        return text, "the written problem asks no question"
    return text, None
