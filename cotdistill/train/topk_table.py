"""Aligning stored top-K teacher logprobs with the student's tokenised examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cotdistill.topk_store import Key, TopkStore


@dataclass
class AlignStats:
    examples: int = 0
    aligned: int = 0
    mismatched: int = 0
    missing: int = 0
    kd_tokens: int = 0
    lost_tokens: int = 0  # teacher rows unused: after a token that differs
    skipped: list[str] = field(default_factory=list)  # a few keys, for the message


@dataclass
class TopkTable:
    """Per training example, where its teacher rows are; `batch` builds them for a batch.

    Each example contributes one row per label token (completion token), in order: the first
    `kd_len` of them come from the store, the rest (a template's end-of-turn suffix, or all of
    them when the example failed alignment) are marked invalid and get CE only.
    """

    store: TopkStore
    entries: list[tuple[Key | None, int, int]]  # key (None: no KD), kd_len, completion tokens
    k: int

    def batch(self, rows: Sequence[int]) -> tuple[Any, Any, Any]:
        import numpy as np
        import torch

        total = sum(self.entries[r][2] for r in rows)
        ids = np.zeros((total, self.k), dtype=np.int32)
        logprobs = np.zeros((total, self.k), dtype=np.float32)
        valid = np.zeros(total, dtype=bool)
        at = 0
        for r in rows:
            key, kd_len, count = self.entries[r]
            if key is not None and kd_len:
                data = self.store.get(key)
                assert data is not None
                ids[at:at + kd_len] = data["ids"][:kd_len]
                logprobs[at:at + kd_len] = data["logprobs"][:kd_len]
                valid[at:at + kd_len] = True
            at += count
        return torch.from_numpy(ids), torch.from_numpy(logprobs), torch.from_numpy(valid)


def align(input_ids: Sequence[int], completion_mask: Sequence[int], sampled: Sequence[int]
          ) -> tuple[int, bool]:
    """(completion tokens that carry the teacher's rows, whether all of them could).

    The student's tokens of the assistant turn must begin with the teacher's sampled ids
    (cut where max_length cut the example); what follows (the template's end of turn) has no
    teacher row. Re-tokenizing sampled text can differ from the sampled ids (a sampler may
    pick a non-canonical split, a stop string is cut from the text): rows are used only up to
    the first token that differs, where the student's context is still the teacher's, and the
    example is counted; never trained against shifted rows.
    """
    start = next((i for i, m in enumerate(completion_mask) if m), len(completion_mask))
    student = list(input_ids[start:])
    n = min(len(sampled), len(student))
    same = 0
    while same < n and int(sampled[same]) == student[same]:
        same += 1
    return same, same == n


def build_table(store: TopkStore, examples: Sequence[tuple[Key | None, Sequence[int],
                                                           Sequence[int]]]
                ) -> tuple[TopkTable, AlignStats]:
    """One entry per (key, input_ids, completion_mask); counts what could not be aligned."""
    stats = AlignStats()
    entries: list[tuple[Key | None, int, int]] = []
    for key, input_ids, mask in examples:
        stats.examples += 1
        # Row count of this example in a batch: its label tokens (the first is never one).
        count = sum(mask[1:])
        data = store.get(key) if key is not None else None
        if data is None:
            stats.missing += 1
            entries.append((None, 0, count))
            stats.skipped.append(f"{key[0]}#{key[1]}" if key else "(no sample_index)")
            continue
        n, whole = align(input_ids, mask, data["sampled"])
        if whole:
            stats.aligned += 1
        else:
            stats.mismatched += 1
            stats.lost_tokens += min(len(data["sampled"]), count) - n
            stats.skipped.append(f"{key[0]}#{key[1]} (from token {n})")
        stats.kd_tokens += n
        entries.append((key, n, count) if n else (None, 0, count))
    return TopkTable(store, entries, int(store.meta["k"])), stats
