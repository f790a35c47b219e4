"""Whether the prompt opened the teacher's thinking (so completions start inside it)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cotdistill.filter.config import FilterConfig
from cotdistill.reasoning import (
    Markers,
    template_opening,
    thinking_evidence,
)
from cotdistill.records import Trace


@dataclass
class PromptOpening:
    """Whether the prompt opened the thinking, per teacher, for traces that do not store their
    split (other tools' traces, older ones); cotdistill's own traces say it themselves.

    It matters only for a trace with no markers at all: with an opened prompt it was cut
    inside its thinking (unfinished_thinking), otherwise it has no thinking. auto decides from
    the chat template when one can be rendered, else from the teacher's other traces: a
    trace that closes a thinking it never opened means the prompt opened it.
    """

    setting: Literal["auto", "yes", "no"] = "auto"
    markers: Markers = field(default_factory=Markers)
    template: bool | None = None  # what think_template's chat template says
    # Per teacher: traces that opened their thinking themselves ("text") or did not ("prompt").
    evidence: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    # Per teacher: traces without markers read while nothing told (read as without thinking).
    unsure: Counter[str] = field(default_factory=Counter)
    frozen: bool = False  # evidence complete (a second reading must not count it again)
    notes: list[str] = field(default_factory=list)
    _folders: dict[str, bool | None] = field(default_factory=dict)

    @classmethod
    def of(cls, config: FilterConfig) -> PromptOpening:
        markers = Markers(config.think_start, config.think_end)
        opening = cls(config.think_in_prompt, markers)
        if config.think_in_prompt == "auto" and config.think_template:
            opening.template = _render_template(config.think_template, markers)
            if opening.template is None:
                opening.notes.append(
                    f"think_template {config.think_template!r} could not be rendered (not a "
                    "model folder or cached hub id with a chat template): whether the prompt "
                    "opened the thinking is read from the traces instead")
        return opening

    def observe(self, trace: Trace) -> None:
        """Count what this trace says about its teacher's prompt."""
        if self.setting != "auto" or self.frozen or _self_described(trace):
            return
        seen = thinking_evidence(trace.completion, self.markers)
        if seen is not None:
            self.evidence[_group(trace)][seen] += 1

    def opened(self, trace: Trace) -> bool:
        """`opened` for `trace_reasoning` of this trace."""
        if _self_described(trace):
            return False
        if self.setting != "auto":
            return self.setting == "yes"
        if thinking_evidence(trace.completion, self.markers) is not None:
            return False  # its own markers say where the thinking is
        group = _group(trace)
        decision = self.decide(group)
        if decision is None:
            self.unsure[group] += 1
        return bool(decision)

    def decide(self, group: str) -> bool | None:
        if self.template is not None:
            return self.template
        if group not in self._folders:  # once per teacher, not once per trace
            # A teacher named by a local model folder: its own template tells.
            self._folders[group] = (_render_template(group, self.markers)
                                    if Path(group).is_dir() else None)
        if self._folders[group] is not None:
            return self._folders[group]
        seen = self.evidence.get(group, Counter())
        if seen["prompt"] and not seen["text"]:
            return True
        if seen["text"] and not seen["prompt"]:
            return False
        return None  # no marker anywhere, or both kinds: cannot tell

    def stale(self) -> bool:
        """Some traces were read as without thinking before their teacher's other traces
        showed that the prompt opened it: they must be read again."""
        return any(self.decide(group) for group in self.unsure)

    def restart(self) -> None:
        self.frozen = True
        self.unsure.clear()

    def report(self) -> dict[str, Any]:
        groups = sorted(set(self.evidence) | set(self.unsure))
        return {"setting": self.setting, "template": self.template,
                "by_teacher": {g: self.decide(g) for g in groups} if self.setting == "auto"
                else {}}

    def cannot_tell(self) -> list[str]:
        """One sentence per teacher whose traces without markers could be either."""
        notes = list(self.notes)
        for group, count in sorted(self.unsure.items()):
            if self.decide(group) is None:
                notes.append(
                    f"{count} traces of {group} have no thinking markers and nothing tells "
                    "whether their prompt opened the thinking (no think_template, and its "
                    "traces do not show it): they were read as having no thinking; if their "
                    "chat template opened it (R1 distills), set think_in_prompt: yes and "
                    "those cut inside it are rejected as unfinished_thinking (no: silences "
                    "this)")
        return notes


def _self_described(trace: Trace) -> bool:
    """cotdistill's generate decided with the template in hand: it stored the split of a
    reasoning trace, and its prompt hash marks a trace it wrote (no split: no thinking)."""
    return trace.answer_text is not None or trace.prompt_hash is not None


def _group(trace: Trace) -> str:
    """Traces that share a prompt format: one teacher's, else one file's."""
    source = getattr(trace, "source", None)
    file = source.rsplit(":", 1)[0] if isinstance(source, str) and source else "unknown"
    return trace.teacher or file


def _render_template(model: str, markers: Markers) -> bool | None:
    return template_opening(model, [{"role": "user", "content": "1 + 1"}], markers,
                            local_only=True)
