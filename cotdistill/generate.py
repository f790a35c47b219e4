"""Stage 1: sample teacher chain-of-thought traces for every problem.

`sample_traces` is the core (problems and a backend in, Trace records out, no files);
`run_generate` adds the edges: reading problems, resuming `traces.jsonl`, progress, manifest.

    cotdistill generate --problems data/train.jsonl --out runs/gen --n 4
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from cotdistill.backends import Backend, Completion, Progress, make_backend
from cotdistill.backends.sizing import Workload
from cotdistill.config import GenerateConfig, SamplingConfig
from cotdistill.errors import InputError
from cotdistill.locking import locks_output
from cotdistill.problems import ProblemFields, in_shard, load_problems, parse_shard
from cotdistill.progress import progress_bar
from cotdistill.prompts import PromptTemplate, load_template
from cotdistill.reasoning import DEFAULT_MARKERS, Markers, reasoning_fields
from cotdistill.records import (
    Problem,
    Sampling,
    Trace,
    append_durably,
    dump_line,
    sha256_file,
    write_manifest,
)
from cotdistill.topk import capture_summary, check_capture, start_capture

TRACES = "traces.jsonl"


def logprob_stats(logprobs: Sequence[float] | None) -> tuple[float | None, float | None]:
    if not logprobs:
        return None, None
    return sum(logprobs) / len(logprobs), min(logprobs)


def make_trace(
    problem: Problem,
    index: int,
    completion: Completion,
    messages: list[Any],
    teacher: str,
    template: PromptTemplate,
    sampling: Sampling,
    markers: Markers = DEFAULT_MARKERS,
    opened: bool = False,
) -> Trace:
    """One Trace; a reasoning teacher's thinking is split from its answer (`opened`: the
    prompt already opened the thinking)."""
    mean, low = logprob_stats(completion.token_logprobs)
    thinking = reasoning_fields(
        completion.text, completion.num_tokens, markers, opened,
        returned_apart=completion.reasoning is not None,
        exact_reasoning_tokens=completion.reasoning_tokens,
    )
    return Trace(
        problem_id=problem.id,
        sample_index=index,
        question=problem.question,
        gold_answer=problem.gold_answer,
        messages=messages,
        completion=completion.text,
        finish_reason=completion.finish_reason,
        num_tokens=completion.num_tokens,
        mean_logprob=mean,
        min_logprob=low,
        token_logprobs=completion.token_logprobs,
        teacher=teacher,
        prompt_template=template.name,
        prompt_hash=template.hash,
        sampling=sampling,
        category=problem.category,
        **thinking,
    )


def sampling_record(config: SamplingConfig, seed: int | None) -> Sampling:
    return Sampling(
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_tokens,
        n=config.n,
        stop=config.stop,
        seed=seed,
    )


def batched(items: Sequence[Problem], size: int) -> Iterator[list[Problem]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def sample_traces(
    problems: Sequence[Problem],
    template: PromptTemplate,
    backend: Backend,
    sampling: SamplingConfig,
    teacher: str,
    batch_size: int = 256,
    seed: int | None = None,
    progress: Progress | None = None,
    markers: Markers = DEFAULT_MARKERS,
    opened: bool = False,
    on_batch: Callable[[list[Trace], list[Completion]], None] | None = None,
) -> Iterator[list[Trace]]:
    """Yield the traces of each batch of problems (n per problem, in problem order).

    `progress(k)` is called as samples finish inside a batch, for a live progress bar.
    `markers` / `opened`: how a reasoning teacher's thinking is delimited (see make_trace).
    `on_batch(traces, completions)` sees each batch before it is yielded (top-k capture).
    """
    record = sampling_record(sampling, seed)
    for batch in batched(problems, batch_size):
        conversations = [template.render(p.question) for p in batch]
        if progress is None:
            results = backend.generate(conversations, sampling)
        else:
            results = backend.generate(conversations, sampling, progress=progress)
        traces = []
        for problem, messages, completions in zip(batch, conversations, results, strict=True):
            if len(completions) != sampling.n:
                raise RuntimeError(
                    f"backend returned {len(completions)} samples for {problem.id}, "
                    f"expected {sampling.n}"
                )
            traces.extend(
                make_trace(problem, i, c, messages, teacher, template, record, markers, opened)
                for i, c in enumerate(completions)
            )
        if on_batch is not None:
            on_batch(traces, [c for completions in results for c in completions])
        yield traces


def resume_key(teacher: str, template: PromptTemplate, sampling: Sampling) -> dict[str, Any]:
    """What every trace in one traces.jsonl must share for a rerun to add to it."""
    return {
        "teacher": teacher,
        "prompt_hash": template.hash,
        "sampling": sampling.model_dump(mode="json"),
    }


def drop_duplicate_samples(by_problem: dict[str, list[dict[str, Any]]], path: Path) -> int:
    """Keep the first line of each (problem, sample) pair, in place; returns how many went.

    Two runs that once wrote to the same folder (before it was locked) left each sample
    twice; the first written is kept, as a resume that regenerated nothing would have.
    """
    dropped = 0
    for pid, rows in by_problem.items():
        seen: set[Any] = set()
        unique = []
        for row in rows:
            if row.get("sample_index") in seen:
                dropped += 1
                continue
            seen.add(row.get("sample_index"))
            unique.append(row)
        by_problem[pid] = unique
    if dropped:
        print(f"generate: dropped {dropped} duplicate (problem, sample) lines from {path}, "
              "keeping the first of each")
    return dropped


def recover_traces(
    path: Path,
    n: int,
    expected: dict[str, Any] | None = None,
    problems: Mapping[str, Problem] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Complete problems already in `path`, repairing the file after a crash.

    A kill can leave a partial last line or a problem with fewer than n samples; both are cut
    away (the file is rewritten atomically) so the rerun regenerates them exactly once.
    With `expected` (see `resume_key`), every whole line is checked first and a mismatch is
    refused before the file is touched: a rerun with, say, another n must not cut away
    traces that were complete under the old settings. With `problems` (the problems this run
    selected, by id), a trace whose question or gold answer differs from its problem's now
    (an edited problems file, another answer_format) is refused the same way: old and new
    gold answers must not mix in one dataset, and a trace of a problem the run no longer
    selects is refused too.
    """
    if not path.exists():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    # The last element is b"" when the file ends in a newline, else a partial line.
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    damaged = lines[-1] != b""
    for lineno, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            damaged = True
            continue
        if not isinstance(data, dict) or "problem_id" not in data:
            raise InputError("not a trace line", file=path, line=lineno, field="problem_id")
        if expected is not None:
            _check_resumable_row(data, expected, path, lineno)
        if problems is not None:
            if data["problem_id"] not in problems:
                # Kept, it would stay in the dataset beside the new selection (a validation
                # or a dropped problem's traces going on to training).
                raise InputError(
                    f"a trace of problem {data['problem_id']!r}, which this run does not select "
                    "(the problems file, --limit or --shard changed); generate into a new --out "
                    "(in `cotdistill run`: --fresh generate)", file=path, line=lineno,
                    field="problem_id")
            _check_same_problem(data, problems[data["problem_id"]], path, lineno)
        by_problem[data["problem_id"]].append(data)
    if drop_duplicate_samples(by_problem, path):
        damaged = True  # rewrite the file without them
    complete = {
        pid: sorted(rows, key=lambda r: r["sample_index"])
        for pid, rows in by_problem.items()
        if sorted(r["sample_index"] for r in rows) == list(range(n))
    }
    if damaged or len(complete) != len(by_problem):
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for rows in complete.values():
                fh.writelines(dump_line(r) for r in rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return complete


def _check_resumable_row(
    row: dict[str, Any], expected: dict[str, Any], path: Path, line: int | None
) -> None:
    for key, value in expected.items():
        if row.get(key) != value:
            raise InputError(
                f"existing traces were made with a different {key} "
                f"({row.get(key)!r} != {value!r}); {_START_OVER}",
                file=path,
                line=line,
                field=key,
            )


# How to apply changed settings to a folder that holds traces made with the old ones.
_START_OVER = ("use another --out, or under `cotdistill run` add `--fresh generate` (the old "
               "folder is moved aside)")


def _check_same_problem(row: dict[str, Any], problem: Problem, path: Path, line: int) -> None:
    for key, now in (("question", problem.question), ("gold_answer", problem.gold_answer)):
        if row.get(key) != now:
            raise InputError(
                f"problem {problem.id!r} changed since its traces were made: {key} "
                f"{_short(row.get(key))} then, {_short(now)} now (from {problem.source}; an "
                f"edited problems file or another answer_format); {_START_OVER}",
                file=path, line=line, field=key,
            )


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"


def thinking_opened(config: GenerateConfig, model: str | None, template: PromptTemplate) -> bool:
    """Does the teacher's chat template open the thinking in the prompt (R1 distills)?

    `auto` renders one generation prompt with the teacher's own tokenizer; a server renders
    its prompts itself (and returns the thinking apart with `--reasoning-parser`), so there
    auto means no.
    """
    if config.think_in_prompt != "auto":
        return config.think_in_prompt == "yes"
    if model is None or config.backend != "vllm":
        return False
    from cotdistill.reasoning import template_opens_thinking

    return template_opens_thinking(
        model, [m.model_dump() for m in template.render("1 + 1")],
        Markers(config.think_start, config.think_end), config.enable_thinking,
        config.trust_remote_code,
    )


def select_problems(problems: list[Problem], config: GenerateConfig) -> list[Problem]:
    if config.limit is not None:
        problems = problems[: config.limit]
    if config.shard is not None:
        index, count = parse_shard(config.shard)
        problems = [p for p in problems if in_shard(p.id, index, count)]
    return problems


def problem_fields(config: GenerateConfig) -> ProblemFields:
    return ProblemFields(
        question=tuple(config.question_field),
        answer=tuple(config.answer_field),
        id=config.id_field,
        answer_format=config.answer_format,
        template=config.question_template,
        category=config.category_field,
    )


@locks_output("generate")
def run_generate(config: GenerateConfig, backend: Backend | None = None) -> dict[str, Any]:
    """Generate (or finish generating) `traces.jsonl` in `config.out`; returns the manifest.

    Without `backend`, the configured one is built (after all input checks) and closed at the
    end; a backend passed in is used as it is and left open for the caller.
    """
    from cotdistill.models import resolve_model

    started = time.time()
    if config.shard == "auto":  # a Slurm array task: which shard it is comes from Slurm
        from cotdistill.executors.slurm import resolve_shard

        config = config.model_copy(update={"shard": resolve_shard(config.shard)})
    if config.executor != "local" or config.shards > 1:  # the shards run elsewhere, then merge
        from cotdistill.executors import run_sharded

        return run_sharded(config, backend)
    if config.problems is None or config.out is None:
        raise InputError("generate needs --problems and --out")
    # Everything that can be wrong with the input is checked before a model is loaded.
    if config.temperature == 0 and config.n > 1:
        # n identical greedy samples are never wanted, and vLLM refuses the request.
        raise InputError("n > 1 needs temperature > 0 (greedy samples are identical)", field="n")
    check_capture(config, backend)
    problems = select_problems(load_problems(config.problems, problem_fields(config)), config)
    template = load_template(config.prompt_template)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TRACES
    manifest_path = out / "manifest.json"

    model: str | None = None
    # A backend passed in belongs to the caller (who may reuse it); one made here is closed here.
    owned = backend is None
    if backend is not None:
        teacher = config.teacher or backend.name
    elif config.backend == "openai":
        # A remote server: nothing is loaded here, and it names the model if we did not.
        backend = make_backend("openai", config.teacher, config)  # type: ignore[arg-type]
        teacher = config.teacher or backend.model  # type: ignore[attr-defined]
    else:
        model, teacher = resolve_model(config.teacher)
    sampling = sampling_record(config, config.seed)

    try:
        existing = recover_traces(path, config.n, resume_key(teacher, template, sampling),
                                  {p.id: p for p in problems})
    except InputError:
        if owned and backend is not None:
            backend.close()
        raise
    todo = [p for p in problems if p.id not in existing]
    try:  # top-k side file (cotdistill/topk.py): reconciled with the kept traces, engine-free
        topk_writer = start_capture(out, config, existing, bool(todo), model, backend)
    except InputError:
        if owned and backend is not None:
            backend.close()
        raise
    if manifest_path.exists() and todo:
        manifest_path.unlink()  # the set is incomplete again until this run finishes
    if backend is None and todo:
        # The engine starts only once the input and the resume state are known to be good.
        workload = Workload.of(min(config.batch_size, len(todo)), config.n, config.max_tokens,
                               (template.render(p.question) for p in todo))
        backend = make_backend(
            config.backend, model, config, workload=workload  # type: ignore[arg-type]
        )

    new_tokens = 0
    gen_seconds = 0.0
    bar = progress_bar(len(todo) * config.n, f"generate {teacher}")
    try:
        with open(path, "a", encoding="utf-8") as fh:
            tick = time.time()
            for traces in sample_traces(
                todo, template, backend, config, teacher, config.batch_size, config.seed,
                progress=bar.update, markers=Markers(config.think_start, config.think_end),
                opened=thinking_opened(config, model, template),
                on_batch=topk_writer.write_batch if topk_writer else None,
            ):
                append_durably(fh, (dump_line(t) for t in traces))
                gen_seconds += time.time() - tick
                new_tokens += sum(t.num_tokens or 0 for t in traces)
                bar.set_postfix(tok_s=f"{new_tokens / max(gen_seconds, 1e-9):.1f}")
                tick = time.time()
    finally:
        bar.close()
        if owned and backend is not None:
            backend.close()

    counts = _count_file(path)
    tokens_per_s = new_tokens / gen_seconds if gen_seconds > 0 else None
    manifest = write_manifest(
        out,
        stage="generate",
        config=config,
        inputs={str(config.problems): sha256_file(Path(config.problems))},
        counts={**counts, "new_samples": len(todo) * config.n, "new_output_tokens": new_tokens},
        started=started,
        extra={
            "teacher": teacher,
            "prompt_template": {"name": template.name, "hash": template.hash},
            "output_tokens_per_s": tokens_per_s,
            "generation_time_s": round(gen_seconds, 3),
            "topk": capture_summary(out),
            # a fleet of servers: what each endpoint did, and which ones died
            **({"endpoints": backend.endpoint_report()}
               if hasattr(backend, "endpoint_report") else {}),
        },
    )
    rate = f"{tokens_per_s:.1f} output tok/s" if tokens_per_s else "nothing new"
    print(
        f"generate: {counts['problems']} problems, {counts['samples']} samples "
        f"({len(todo) * config.n} new, {rate}) in {time.time() - started:.0f} s -> {path}"
    )
    return manifest


def _count_file(path: Path) -> dict[str, Any]:
    problems: set[str] = set()
    samples = 0
    tokens = 0
    finish: Counter[str] = Counter()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            data = json.loads(line)
            problems.add(data["problem_id"])
            samples += 1
            tokens += data["num_tokens"] or 0
            finish[data["finish_reason"] or "unknown"] += 1
    return {
        "problems": len(problems),
        "samples": samples,
        "output_tokens": tokens,
        "finish_reasons": dict(finish),
        "mean_tokens": round(tokens / samples, 2) if samples else None,
    }
