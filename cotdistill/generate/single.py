"""One generate run in this process: resume, sample, append, manifest."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cotdistill.backends import Backend, make_backend
from cotdistill.backends.sizing import Workload
from cotdistill.errors import InputError
from cotdistill.generate.adaptive import Ledger, sample_until_correct
from cotdistill.generate.config import (
    TRACES,
    GenerateConfig,
    check_adaptive,
    problem_fields,
    select_problems,
)
from cotdistill.generate.resume import recover_traces, resume_key
from cotdistill.generate.sample import sample_traces, sampling_record
from cotdistill.generate.topk_capture import capture_summary, check_capture, start_capture
from cotdistill.infra.files import append_durably, dump_line, sha256_file, write_manifest
from cotdistill.infra.locking import locks_output
from cotdistill.infra.progress import progress_bar
from cotdistill.problems import load_problems
from cotdistill.prompts import PromptTemplate, load_template
from cotdistill.reasoning import Markers


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


@locks_output("generate")
def run_single(config: GenerateConfig, backend: Backend | None = None) -> dict[str, Any]:
    """Generate (or finish generating) `traces.jsonl` in `config.out`; returns the manifest.

    Without `backend`, the configured one is built (after all input checks) and closed at the
    end; a backend passed in is used as it is and left open for the caller.
    """
    from cotdistill.models import resolve_model

    started = time.time()
    if config.problems is None or config.out is None:
        raise InputError("generate needs --problems and --out")
    # Everything that can be wrong with the input is checked before a model is loaded.
    if config.temperature == 0 and config.n > 1:
        # n identical greedy samples are never wanted, and vLLM refuses the request.
        raise InputError("n > 1 needs temperature > 0 (greedy samples are identical)", field="n")
    check_adaptive(config)
    adaptive = config.until_correct is not None
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
                                  {p.id: p for p in problems}, adaptive=adaptive)
    except InputError:
        if owned and backend is not None:
            backend.close()
        raise
    markers = Markers(config.think_start, config.think_end)
    opened = thinking_opened(config, model, template)
    ledger: Ledger | None = None
    if adaptive:  # what each problem has cost and bought so far decides its next wave
        ledger = Ledger.of(problems, existing, markers, opened)
        todo = [p for p in problems if ledger.next_wave(p, config) > 0]
    else:
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

    new_tokens = new_samples = 0
    gen_seconds = 0.0
    total = ledger.worst_case(todo, config) if ledger is not None else len(todo) * config.n
    bar = progress_bar(total, f"generate {teacher}")
    try:
        with open(path, "a", encoding="utf-8") as fh:
            tick = time.time()
            if ledger is not None:
                batches = sample_until_correct(
                    todo, template, backend, config, teacher, ledger, progress=bar.update,
                    markers=markers, opened=opened,
                    on_completions=topk_writer.write_batch if topk_writer else None)
            else:
                batches = sample_traces(
                    todo, template, backend, config, teacher, config.batch_size, config.seed,
                    progress=bar.update, markers=markers, opened=opened,
                    on_completions=topk_writer.write_batch if topk_writer else None)
            for traces in batches:
                append_durably(fh, (dump_line(t) for t in traces))
                gen_seconds += time.time() - tick
                new_tokens += sum(t.num_tokens or 0 for t in traces)
                new_samples += len(traces)
                if ledger is not None:  # solved problems give their unspent budget back
                    bar.total = bar.n + ledger.worst_case(todo, config)
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
        counts={**counts, "new_samples": new_samples, "new_output_tokens": new_tokens},
        started=started,
        extra={
            "teacher": teacher,
            "prompt_template": {"name": template.name, "hash": template.hash},
            "output_tokens_per_s": tokens_per_s,
            "generation_time_s": round(gen_seconds, 3),
            "topk": capture_summary(out),
            # --until-correct: problems by outcome, and what each one cost
            **({"adaptive": ledger.summary(problems, config)} if ledger is not None else {}),
            # a fleet of servers: what each endpoint did, and which ones died
            **({"endpoints": backend.endpoint_report()}
               if hasattr(backend, "endpoint_report") else {}),
        },
    )
    rate = f"{tokens_per_s:.1f} output tok/s" if tokens_per_s else "nothing new"
    print(
        f"generate: {counts['problems']} problems, {counts['samples']} samples "
        f"({new_samples} new, {rate}) in {time.time() - started:.0f} s -> {path}"
    )
    if ledger is not None:
        print(adaptive_line(manifest["adaptive"]))
    return manifest


def adaptive_line(summary: dict[str, Any]) -> str:
    """One line: how `--until-correct` spent the budget."""
    p = summary["problems"]
    return (f"generate: until {summary['until_correct']} correct or {summary['max_samples']} "
            f"samples: {p['solved']} problems solved, {p['budget']} stopped at the budget, "
            f"{p['no_gold']} without gold (n each); {summary['correct_traces']} correct traces, "
            f"{summary['correct_per_1k_tokens']} per 1,000 output tokens")


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
