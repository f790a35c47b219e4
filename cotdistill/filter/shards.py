"""Filtering in shards: split the traces by problem, then merge the reports and outputs."""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.filter.config import ORDER, FilterConfig, trace_fields
from cotdistill.filter.report import (
    quantiles_of,
    reasoning_report,
    report_markdown,
)
from cotdistill.filter.summary import Summary
from cotdistill.infra.files import sha256_file, write_manifest
from cotdistill.problems import in_shard, parse_shard
from cotdistill.traces import ReadStats, TraceLine, read_traces

# ---------------------------------------------------------------------------------------------
# Shards: filter one shard of the traces, then merge the shards' outputs


def _shard_key(item: TraceLine) -> str:
    """What decides a line's shard: its problem id (as generate splits), else its place.

    The same on both passes: a line that cannot be read as a trace still goes to exactly one
    shard (by file and line), so every line is counted once over all shards.
    """
    if item.trace is not None:
        return item.trace.problem_id
    try:
        data = json.loads(item.text)
    except json.JSONDecodeError:
        data = None
    pid = data.get("problem_id") if isinstance(data, dict) else None
    return pid if isinstance(pid, str) else f"{item.path}:{item.line}"


def shard_traces(
    config: FilterConfig, validate: bool = True, stats: ReadStats | None = None
) -> Iterator[TraceLine]:
    """`read_traces` over config.traces, keeping only `config.shard`'s lines when it is set."""
    if config.shard is None:
        yield from read_traces(config.traces, trace_fields(config), validate=validate,
                               stats=stats)
        return
    index, count = parse_shard(config.shard)
    # The reader counts each line before yielding it; only this shard's counts are passed on.
    seen = ReadStats()
    before = (0, 0, Counter())
    for item in read_traces(config.traces, trace_fields(config), validate=validate, stats=seen):
        mine = in_shard(_shard_key(item), index, count)
        if mine and stats is not None:
            stats.traces += seen.traces - before[0]
            stats.foreign += seen.foreign - before[1]
            stats.missing.update(seen.missing - before[2])
        before = (seen.traces, seen.foreign, Counter(seen.missing))
        if mine:
            yield item


OUTPUTS = ("kept.jsonl", "rejected.jsonl", "sft.jsonl")


# Keys that may differ between the shards of one filter run; any other is an error to merge.
PER_SHARD_KEYS = {"traces", "out", "shard", "merge", "dry_run", "verify_processes"}


def _read_shard(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, report) of one finished filter output folder."""
    from cotdistill.infra.files import read_manifest

    manifest = read_manifest(folder)
    if manifest is None or manifest.get("stage") != "filter":
        raise InputError("not a finished filter output (no filter manifest.json)", file=folder)
    missing = [n for n in (*OUTPUTS, "report.json") if not (folder / n).is_file()]
    if missing:
        raise InputError(f"missing {', '.join(missing)}", file=folder)
    return manifest, json.loads((folder / "report.json").read_text())


def check_shard_set(folders: Sequence[Path], manifests: Sequence[dict[str, Any]]) -> None:
    """The folders are the shards of one filter run: same settings, each shard once, none
    missing (folders filtered without --shard are merged as they are)."""
    first = manifests[0]["config"]
    for folder, manifest in zip(folders, manifests, strict=True):
        for key in sorted(set(first) | set(manifest["config"])):
            if key not in PER_SHARD_KEYS and manifest["config"].get(key) != first.get(key):
                raise InputError(
                    f"filtered with {key}={manifest['config'].get(key)!r}, but {folders[0]} "
                    f"with {first.get(key)!r}: shards of one dataset must share their settings",
                    file=folder, field=key)
    specs = [m["config"].get("shard") for m in manifests]
    if not any(specs):
        return
    if not all(specs):
        raise InputError("some folders were filtered with --shard and some without",
                         file=folders[specs.index(None)], field="shard")
    parsed = [parse_shard(s) for s in specs]
    counts = {n for _, n in parsed}
    if len(counts) > 1:
        raise InputError(f"shards of different splits: {', '.join(specs)}", field="shard")
    count = counts.pop()
    indices = [i for i, _ in parsed]
    twice = sorted({i for i in indices if indices.count(i) > 1})
    if twice:
        raise InputError(f"shard {twice[0]}/{count} is given twice", field="shard")
    absent = sorted(set(range(count)) - set(indices))
    if absent:
        raise InputError(f"shards {', '.join(f'{i}/{count}' for i in absent)} are missing "
                         "(merge all N shards, or filter the missing ones first)", field="shard")


def _concatenate(folders: Sequence[Path], out: Path) -> tuple[dict[str, int], list[dict]]:
    """Write the shards' outputs one after another into `out`; a problem found in two shards
    stops the merge before anything replaces the old outputs. Returns line counts and, for the
    report, each trace row's confidence fields."""
    owner: dict[str, Path] = {}
    counts = dict.fromkeys(OUTPUTS, 0)
    rows: list[dict[str, Any]] = []
    tmp = {name: out / (name + ".tmp") for name in OUTPUTS}
    complete = False
    handles = {name: open(tmp[name], "w", encoding="utf-8") for name in OUTPUTS}  # noqa: SIM115
    try:
        for folder in folders:
            mine: set[str] = set()
            for name in OUTPUTS:
                with open(folder / name, encoding="utf-8") as fh:
                    for lineno, line in enumerate(fh, start=1):
                        handles[name].write(line)
                        counts[name] += 1
                        if name == "sft.jsonl":
                            continue
                        row = json.loads(line)
                        pid = row.get("problem_id")
                        if pid is None:  # an unreadable input line, set aside with its error
                            continue
                        if owner.get(pid, folder) != folder:
                            raise InputError(f"problem {pid!r} is in two shards ({owner[pid]} "
                                             f"and {folder})", file=folder / name,
                                             line=lineno, field="problem_id")
                        mine.add(pid)
                        rows.append({k: row.get(k) for k in (
                            "correct", "mean_logprob", "min_logprob", "problem_id", "reasons",
                            "reasoning_tokens", "answer_tokens", "finished_thinking")})
            owner.update(dict.fromkeys(mine, folder))
        complete = True
    finally:
        for fh in handles.values():
            fh.close()
        if not complete:
            for path in tmp.values():
                path.unlink(missing_ok=True)
    for name in OUTPUTS:
        os.replace(tmp[name], out / name)
    return counts, rows


def _add(a: Any, b: Any) -> Any:
    """Add two reports' numbers key by key (lists of funnel steps by their check name)."""
    if isinstance(a, bool) or a is None or b is None:
        return a if b is None else b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a.get(k), b.get(k)) for k in {**a, **b}}
    return a


def _merge_votes(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    merged: dict[str, Any] = {"problems": 0, "votes": {}, "traces_not_voting": 0}
    for part in parts:
        if part:  # reports of older shards have none
            merged = _add(merged, part)
    return merged


def merge_reports(reports: Sequence[dict[str, Any]], rows: Sequence[dict]) -> dict[str, Any]:
    """One report for the union of disjoint shards: counts added up, shares and quantiles
    computed again over all traces."""
    steps: dict[str, dict[str, int]] = {}
    for report in reports:
        for step in report["funnel"]["steps"]:
            prev = steps.get(step["check"], {"in": 0, "rejected": 0, "out": 0})
            steps[step["check"]] = {k: prev[k] + step[k] for k in ("in", "rejected", "out")}
    funnel_total = {
        key: sum(r["funnel"][key] for r in reports) for key in ("traces_in", "kept", "rejected")
    }
    reasons: Counter[str] = Counter()
    for report in reports:
        reasons.update(report["funnel"].get("reasons_any", {}))
    problems = sum(r["problems"] for r in reports)
    covered = sum(r["coverage"]["problems_with_kept_trace"] for r in reports)
    accuracy: dict[str, dict[str, Any]] = {}
    for report in reports:
        for teacher, acc in report["teacher_accuracy"].items():
            accuracy[teacher] = _add(accuracy.get(teacher, {}), acc)
    for acc in accuracy.values():
        acc["accuracy"] = (round(acc["correct"] / acc["traces_with_gold"], 4)
                           if acc.get("traces_with_gold") else None)
    conf: dict[str, Any] = {}
    for name, flag in (("correct", True), ("wrong", False)):
        logps = [r["mean_logprob"] for r in rows
                 if r["correct"] is flag and r["mean_logprob"] is not None]
        mins = [r["min_logprob"] for r in rows
                if r["correct"] is flag and r["min_logprob"] is not None]
        conf[name] = {"mean_logprob": quantiles_of(logps),
                      "mean_prob": quantiles_of([math.exp(v) for v in logps]),
                      "min_logprob": quantiles_of(mins)}
    thinking = None
    if any(r.get("reasoning") for r in reports):
        thinking = reasoning_report([
            Summary(problem_id=r["problem_id"], correct=r["correct"],
                    reasons=tuple(r["reasons"] or ()), reasoning_tokens=r["reasoning_tokens"],
                    answer_tokens=r["answer_tokens"], finished_thinking=r["finished_thinking"])
            for r in rows])
    verification = [r["verification"] for r in reports if r.get("verification")]
    merged_verification: Any = None
    for v in verification:
        merged_verification = _add(merged_verification or {}, v)
    kept_per_problem: dict[str, int] = {}
    for report in reports:
        kept_per_problem = _add(kept_per_problem, report.get("kept_per_problem", {}))
    return {
        "funnel": {**funnel_total,
                   "steps": [{"check": c, **counts} for c, counts in steps.items()],
                   "reasons_any": dict(sorted(reasons.items(),
                                              key=lambda kv: ORDER.get(kv[0], len(ORDER))))},
        "problems": problems,
        "problems_with_gold": sum(r["problems_with_gold"] for r in reports),
        "majority_labelled_traces": sum(r["majority_labelled_traces"] for r in reports),
        "majority_votes": _merge_votes([r.get("majority_votes") for r in reports]),
        "coverage": {"problems_with_kept_trace": covered,
                     "share": round(covered / problems, 4) if problems else None},
        "teacher_accuracy": accuracy,
        "confidence": conf,
        "kept_per_problem": dict(sorted(kept_per_problem.items(), key=lambda kv: int(kv[0]))),
        "reasoning": thinking,
        "verification": merged_verification,
        "checks_not_run": sorted({n for r in reports for n in r.get("checks_not_run", [])}),
        "traces_from_other_tools": sum(r.get("traces_from_other_tools") or 0 for r in reports),
    }


def merge_filtered(config: FilterConfig) -> dict[str, Any]:
    """`filter --merge DIR... --out OUT`: the shards' outputs as one filter output."""
    started = time.time()
    if config.out is None:
        raise InputError("filter --merge needs --out DIR", field="out")
    if config.traces:
        raise InputError("--merge combines filtered folders; give --traces or --merge, not both",
                         field="merge")
    folders = [Path(f) for f in config.merge]
    out = Path(config.out)
    if out.resolve() in {f.resolve() for f in folders}:
        raise InputError("--out must not be one of the merged folders", field="out")
    read = [_read_shard(f) for f in folders]
    manifests = [m for m, _ in read]
    check_shard_set(folders, manifests)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until this merge finishes
    counts, rows = _concatenate(folders, out)
    report = merge_reports([r for _, r in read], rows)
    report["shards"] = [
        {"folder": str(f), "shard": m["config"].get("shard"), "funnel": r["funnel"]["traces_in"],
         "kept": r["funnel"]["kept"]} for f, (m, r) in zip(folders, read, strict=True)]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report, None, None))
    f = report["funnel"]
    manifest = write_manifest(
        out, stage="filter", config=config,
        inputs={str(folder / n): sha256_file(folder / n) for folder in folders for n in OUTPUTS},
        counts={"traces_in": f["traces_in"], "kept": f["kept"], "rejected": f["rejected"],
                "sft": counts["sft.jsonl"], "problems": report["problems"],
                "problems_covered": report["coverage"]["problems_with_kept_trace"]},
        started=started,
        extra={"funnel": f["steps"], "merged_from": [str(f) for f in folders]},
    )
    print(f"filter: merged {len(folders)} folders: {f['traces_in']} traces, {f['kept']} kept, "
          f"{f['rejected']} rejected, coverage {report['coverage']['share']} -> {out}")
    return manifest
