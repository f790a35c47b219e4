"""Labels by agreement: the majority answer of n teacher samples, when it is clear enough.

Answers are read with `answers.extract_answer` and grouped by math equivalence
(`answers.group_equivalent_many`, the filter's rule: `0.5`, `1/2` and `\\frac{1}{2}` are one
group). The largest group is the label when it holds at least `min_votes` samples and beats
the next one by at least `min_margin`; otherwise the problem is set aside, and why.

    vote(["4", "4", "5", None], [[0, 1], [2]], min_votes=2, min_margin=1)
      -> Vote(label="4", votes=2, margin=1, members=[0, 1], reason=None)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Vote:
    label: str | None
    votes: int
    margin: int
    members: list[int] = field(default_factory=list)  # samples that agree with the label
    reason: str | None = None  # why there is no label


def vote(answers: Sequence[str | None], groups: list[list[int]], min_votes: int,
         min_margin: int) -> Vote:
    """The label of one problem from its samples' answers and their equivalence groups."""
    if not groups:
        return Vote(None, 0, 0, reason=f"no answer in {len(answers)} samples")
    ranked = sorted(groups, key=lambda g: (-len(g), g[0]))  # ties: the answer seen first
    top = ranked[0]
    second = len(ranked[1]) if len(ranked) > 1 else 0
    votes, margin = len(top), len(top) - second
    label = answers[top[0]]
    if votes < min_votes:
        return Vote(None, votes, margin, top, f"only {votes} of {len(answers)} samples agree "
                    f"(min_votes {min_votes})")
    if margin < min_margin:
        return Vote(None, votes, margin, top, f"the majority leads by {margin} "
                    f"(min_margin {min_margin})")
    return Vote(label, votes, margin, top)
