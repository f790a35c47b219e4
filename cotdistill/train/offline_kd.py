"""Distilling from stored top-K teacher logprobs (no teacher in memory)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass



# ---------------------------------------------------------------- offline top-k: data side


@dataclass
class OfflineKD:
    """The teacher's stored top-K rows aligned to the training examples (no weights loaded).

    Dataset row i (train rows first, then eval rows) carries `kd_row = i`, the index of its
    entry in `table`.
    """

    table: Any  # cotdistill.topk.TopkTable
    stats: Any  # cotdistill.topk.AlignStats
    meta: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {"k": self.meta.get("k"), "teacher": self.meta.get("teacher"),
                "teacher_tokenizer": self.meta.get("tokenizer"),
                "examples": s.examples, "aligned": s.aligned, "token_mismatch": s.mismatched,
                "no_topk_rows": s.missing, "kd_tokens": s.kd_tokens,
                "kd_tokens_lost_to_mismatch": s.lost_tokens}


def prepare_offline(sources: Any, tokenizer: Any, rows: Any, on_mismatch: str = "skip"
                    ) -> OfflineKD:
    """Open the top-k store, refuse another vocabulary, align every example (see topk.align).

    `rows`: the Tokenized train rows then eval rows. An example whose student tokens differ
    from the teacher's sampled ids gets KD up to the first differing token and CE after it;
    one without stored rows gets CE only; both are counted (with `on_mismatch="error"` they
    stop the run, naming a few).
    """
    from cotdistill.errors import InputError
    from cotdistill.topk_store import TopkStore, check_vocabulary
    from cotdistill.train.topk_table import build_table

    store = TopkStore.open(list(sources))
    check_vocabulary(store.meta, tokenizer, ", ".join(map(str, sources)))
    table, stats = build_table(store, [
        ((r.problem_id, r.sample_index) if r.sample_index is not None else None,
         r.input_ids, r.completion_mask) for r in rows])
    skipped = stats.mismatched + stats.missing
    if skipped:
        detail = (f"{stats.mismatched} whose tokens differ from the teacher's sampled ids "
                  f"(KD up to the first difference; {stats.lost_tokens} teacher rows unused), "
                  f"{stats.missing} without stored top-k rows (e.g. "
                  f"{', '.join(stats.skipped[:3])})")
        if on_mismatch == "error":
            raise InputError(f"offline top-k KD cannot use {skipped} of {stats.examples} "
                             f"examples: {detail}", field="topk_on_mismatch")
        print(f"train: offline top-k KD on {stats.aligned} of {stats.examples} examples "
              f"whole; {detail}")
    return OfflineKD(table, stats, store.meta)
