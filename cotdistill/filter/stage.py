"""The filter stage: traces in memory (`filter_traces`) and on disk (`run_filter`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cotdistill.answers.equivalence import VerifyStats
from cotdistill.errors import InputError
from cotdistill.filter.config import FilterConfig
from cotdistill.filter.contamination import Contamination, load_contamination
from cotdistill.filter.decide import annotate, decide, sft_row
from cotdistill.filter.opening import PromptOpening
from cotdistill.filter.plots import plot_confidence, plot_reasoning_lengths, plot_yield
from cotdistill.filter.report import build_report, funnel_table, report_markdown
from cotdistill.filter.shards import merge_filtered, shard_traces
from cotdistill.filter.summary import (
    Summary,
    check_logprobs_present,
    invalid_summary,
    summarize,
)
from cotdistill.infra.files import dump_line, sha256_file, write_manifest
from cotdistill.infra.locking import locks_output
from cotdistill.infra.progress import progress_bar
from cotdistill.infra.slurm import resolve_shard
from cotdistill.records import Trace
from cotdistill.traces import ReadStats, TraceFields, checks_not_run, read_traces

# ---------------------------------------------------------------------------------------------
# In memory (tests, notebooks)


def filter_traces(
    traces: Iterable[Trace], config: FilterConfig, eval_questions: Iterable[str] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(kept rows, rejected rows, report) for records in memory; same rules as `run_filter`."""
    questions = list(eval_questions)
    index = Contamination(questions, config.decontaminate_ngram) if questions else None
    traces = list(traces)
    opening = PromptOpening.of(config)
    for t in traces:
        opening.observe(t)
    opening.restart()
    summaries = [summarize(t, config, index, opening.opened(t)) for t in traces]
    for s in summaries:
        check_logprobs_present(s, config)
    stats = VerifyStats()
    decide(summaries, config, stats)
    kept, rejected = [], []
    for trace, s in zip(traces, summaries, strict=True):
        row = annotate(trace.model_dump(mode="json"), s)
        (rejected if s.reasons else kept).append(row)
    report = build_report(summaries, stats)
    report["thinking_opened_in_prompt"] = opening.report()
    report["checks_not_run"] = opening.cannot_tell()
    return kept, rejected, report


def _lines(
    paths: Sequence[Path], fields: TraceFields | None = None
) -> Iterator[tuple[Path, int, str]]:
    """(file, line number, text) of every trace, in the same order on every pass.

    The text is the line as written for cotdistill's own traces; a foreign record becomes one
    normalised trace line per completion (see `traces_in`).
    """
    for item in read_traces(paths, fields or TraceFields(), validate=False):
        yield item.path, item.line, item.text


def _check_inputs(config: FilterConfig) -> None:
    if not config.traces:
        raise InputError("filter needs --traces FILE [FILE ...]", field="traces")
    if config.out is None and not config.dry_run:
        raise InputError("filter needs --out DIR (or --dry-run)", field="out")
    for path in [*config.traces, *config.decontaminate]:
        if not Path(path).is_file():
            raise InputError("file not found", file=path)


def check_lengths_present(
    trace: Trace, config: FilterConfig, file: Path | str | None = None, line: int | None = None
) -> None:
    """A length threshold on traces without `num_tokens` is a configuration error."""
    asked = config.min_tokens > 0 or config.max_tokens is not None
    if asked and trace.num_tokens is None:
        raise InputError(
            "min_tokens / max_tokens is set but this trace has no num_tokens (drop the "
            "threshold for traces from other tools)",
            file=file, line=line, field="num_tokens",
        )


def first_pass(
    config: FilterConfig, index: Contamination | None, stats: ReadStats | None = None,
    opening: PromptOpening | None = None,
) -> list[Summary]:
    """Read every trace once, keeping only its summary; bad input stops here, before writing.

    `stats` (if given) counts the traces that lack what some checks need; `opening` learns
    from the traces whether their prompt opened the thinking (see `PromptOpening`).
    """
    opening = PromptOpening.of(config) if opening is None else opening
    summaries: list[Summary] = []
    contaminated: dict[str, bool] = {}

    def leak(question: str) -> bool:
        if question not in contaminated:
            contaminated[question] = index(question)  # type: ignore[misc]
        return contaminated[question]

    total = sum(Path(p).stat().st_size for p in config.traces)
    bar = progress_bar(total, "filter: read", unit="B", scale=True, leave=False)
    try:
        for item in shard_traces(config, stats=stats):
            bar.update(item.size)  # characters: close enough to bytes
            if item.trace is None:
                if not config.skip_invalid:
                    raise item.error  # type: ignore[misc]
                summaries.append(invalid_summary(str(item.error)))
                continue
            opening.observe(item.trace)
            summary = summarize(item.trace, config, leak if index is not None else None,
                                opening.opened(item.trace))
            check_logprobs_present(summary, config, item.path, item.line)
            check_lengths_present(item.trace, config, item.path, item.line)
            summaries.append(summary)
    finally:
        bar.close()
    if not summaries:
        raise InputError("no traces found", file=config.traces[0])
    return summaries


def _write_outputs(config: FilterConfig, summaries: list[Summary], out: Path) -> dict[str, int]:
    names = ("kept.jsonl", "rejected.jsonl", "sft.jsonl")
    tmp = {name: out / (name + ".tmp") for name in names}
    counts = dict.fromkeys(names, 0)
    handles = {name: open(tmp[name], "w", encoding="utf-8") for name in names}  # noqa: SIM115
    bar = progress_bar(len(summaries), "filter: write", unit="trace", leave=False)
    changed = "traces files changed while filtering; run again"
    complete = False
    try:
        for position, (path, lineno, line) in enumerate(
            (item.path, item.line, item.text) for item in shard_traces(config, validate=False)
        ):
            if position >= len(summaries):  # a shard still being written grew since pass 1
                raise InputError(changed, file=path, line=lineno)
            s = summaries[position]
            if s.problem_id is None:
                row = {"source": f"{path}:{lineno}", "raw": line.rstrip("\n"),
                       "error": s.error, "reasons": list(s.reasons)}
                handles["rejected.jsonl"].write(dump_line(row))
                counts["rejected.jsonl"] += 1
            else:
                data = json.loads(line)
                target = "rejected.jsonl" if s.reasons else "kept.jsonl"
                handles[target].write(dump_line(annotate(data, s)))
                counts[target] += 1
                if not s.reasons:
                    handles["sft.jsonl"].write(dump_line(sft_row(data)))
                    counts["sft.jsonl"] += 1
            if position % 512 == 0:
                bar.update(min(512, len(summaries) - bar.n))
        bar.update(len(summaries) - bar.n)
        if sum(counts[n] for n in ("kept.jsonl", "rejected.jsonl")) != len(summaries):
            raise InputError(changed, file=config.traces[-1])
        complete = True
    finally:
        bar.close()
        for fh in handles.values():
            fh.close()
        if not complete:  # no half-written outputs left beside the old ones
            for path in tmp.values():
                path.unlink(missing_ok=True)
    for name in names:
        os.replace(tmp[name], out / name)
    return counts


@locks_output("filter")
def run_filter(config: FilterConfig) -> dict[str, Any]:
    """Filter `config.traces` into `config.out`; returns the manifest (the report on dry runs)."""
    started = time.time()
    if config.merge:
        return merge_filtered(config)
    if config.shard == "auto":  # a Slurm array task: which shard it is comes from Slurm
        config = config.model_copy(update={"shard": resolve_shard(config.shard)})
    _check_inputs(config)
    index = load_contamination(config)
    read_stats = ReadStats()
    opening = PromptOpening.of(config)
    summaries = first_pass(config, index, read_stats, opening)
    if opening.stale():
        # Traces without markers came before the ones showing that their prompt opened the
        # thinking: read once more, now knowing (rare: one extra pass over R1-style traces).
        opening.restart()
        read_stats = ReadStats()
        summaries = first_pass(config, index, read_stats, opening)
    stats = VerifyStats()
    need = sum(1 for s in summaries if s.gold is not None and s.predicted is not None)
    bar = progress_bar(need, "filter: verify", unit="trace", leave=False)
    try:
        decide(summaries, config, stats, on_verified=bar.update)
    finally:
        bar.close()
    report = build_report(summaries, stats)
    # Traces from other tools lack some fields: say once which checks could not run.
    report["checks_not_run"] = checks_not_run(read_stats) + opening.cannot_tell()
    report["thinking_opened_in_prompt"] = opening.report()
    report["traces_from_other_tools"] = read_stats.foreign
    for note in report["checks_not_run"]:
        print(f"filter: {note}")
    if config.dry_run:
        f = report["funnel"]
        print(funnel_table(report))
        print(f"filter (dry run): {f['traces_in']} traces, {f['kept']} would be kept, "
              f"{f['rejected']} rejected; nothing written")
        return {"dry_run": True, **report}

    out = Path(config.out)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until this run finishes
    counts = _write_outputs(config, summaries, out)
    plot = "confidence.png" if plot_confidence(summaries, out / "confidence.png") else None
    report["yield"]["plot"] = plot_yield(report["yield"], out / "yield.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lengths_plot = out / "reasoning_lengths.png"
    lengths = lengths_plot.name if plot_reasoning_lengths(summaries, lengths_plot) else None
    (out / "report.md").write_text(report_markdown(report, plot, lengths))
    from cotdistill.cards import write_dataset_card  # README.md: the Hub dataset card

    write_dataset_card(out, config, report, counts)
    inputs = {str(p): sha256_file(Path(p)) for p in [*config.traces, *config.decontaminate]}
    f = report["funnel"]
    manifest = write_manifest(
        out,
        stage="filter",
        config=config,
        inputs=inputs,
        counts={"traces_in": f["traces_in"], "kept": f["kept"], "rejected": f["rejected"],
                "sft": counts["sft.jsonl"], "problems": report["problems"],
                "problems_covered": report["coverage"]["problems_with_kept_trace"]},
        started=started,
        extra={"funnel": f["steps"]},
    )
    print(f"filter: {f['traces_in']} traces, {f['kept']} kept, {f['rejected']} rejected, "
          f"coverage {report['coverage']['share']} -> {out}")
    return manifest
