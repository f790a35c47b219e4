"""The vote label: the largest equivalence group, when it has the votes and the margin."""

from __future__ import annotations

import pytest

from cotdistill.synthesize.votes import vote


@pytest.mark.parametrize(("answers", "groups", "votes", "margin", "label", "reason"), [
    (["4", "4", "4", "5"], [[0, 1, 2], [3]], 3, 2, "4", None),
    (["4", "4", "5", "5"], [[0, 1], [2, 3]], 2, 0, None, "the majority leads by 0"),
    (["4", "5", "6", None], [[0], [1], [2]], 1, 0, None, "only 1 of 4 samples agree"),
    ([None, None], [], 0, 0, None, "no answer in 2 samples"),
    # groups come from math equivalence: 1/2 and 0.5 are one group
    (["1/2", "0.5", "3", "0.5"], [[0, 1, 3], [2]], 3, 2, "1/2", None),
])
def test_vote(answers: list, groups: list, votes: int, margin: int, label: str | None,
              reason: str | None) -> None:
    result = vote(answers, groups, min_votes=2, min_margin=1)
    assert (result.votes, result.margin, result.label) == (votes, margin, label)
    assert (result.reason or "").startswith(reason or "")
    if label is not None:
        assert result.members == groups[0]
