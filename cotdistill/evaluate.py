"""Stage 4: score the teacher and its students on the same problems and report retention.

Every model gets the same prompt template, sampling and answer checking (the filter's
extraction, `answers.extract_answer`, and its math-verify pool, `verify.check_answers`).
`evaluate_model` is the core (problems and a backend in, scored samples out, no files);
`summarize_model` and `retention` turn samples into numbers; `run_evaluate` adds the edges:
resolving models (a LoRA adapter is merged into its base first, never evaluated as the base),
timing, memory, `results.jsonl`, `summary.json`, `report.md`, plots and the manifest.

    cotdistill evaluate --problems data/test.jsonl --model teacher=embedded \
        --model student=runs/student --out runs/eval --n 4 --temperature 0.7
"""

from __future__ import annotations

import json
import re
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from math import exp, prod
from pathlib import Path
from typing import Any

from pydantic import Field

from cotdistill.answers import FALLBACK_LAST_NUMBER, extract_answer
from cotdistill.backends import Backend, make_backend
from cotdistill.backends.sizing import Workload
from cotdistill.config import EngineConfig, GenerateConfig, SamplingConfig, ThinkConfig
from cotdistill.errors import InputError
from cotdistill.evaluation.samples import by_problem, is_truncated, problem_scores
from cotdistill.generate import logprob_stats
from cotdistill.locking import locks_output
from cotdistill.memory import PeakMemory
from cotdistill.metrics import (
    bootstrap_mean,
    bootstrap_ratio,
    calibration_bins,
    expected_calibration_error,
    majority_vote,
    pass_at_k,
)
from cotdistill.problems import AnswerFormat, ProblemFields, load_problems
from cotdistill.progress import progress_bar
from cotdistill.prompts import PromptTemplate, load_template
from cotdistill.reasoning import (
    DEFAULT_MARKERS,
    Markers,
    reasoning_fields,
    template_opens_thinking,
)
from cotdistill.records import (
    Problem,
    Record,
    read_jsonl,
    sha256_file,
    sha256_text,
    write_jsonl,
    write_manifest,
)
from cotdistill.verify import group_equivalent_many

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
REPORT = "report.md"
PER_MODEL = "models"  # per-model samples, reused while model, problems and settings match
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

# Checks (gold, prediction) pairs; returns "correct" / "wrong" / "timeout" / "unverifiable".
Verifier = Callable[[Sequence[tuple[str | None, str | None]]], list[str]]
BackendFactory = Callable[[str], Backend]

_generate = GenerateConfig.model_fields


class EvaluateConfig(SamplingConfig, EngineConfig):
    problems: Path | None = Field(None, description="Problems with gold answers to score on.")
    model: list[str] = Field(
        default_factory=list,
        description="NAME=MODEL, repeatable (teacher=..., student=..., base=...). MODEL is a "
        "folder, a hub id, `embedded`, or a LoRA adapter folder (merged into its base first).",
    )
    out: Path | None = Field(None, description="Output directory.")
    reference: str = Field(
        "teacher", description="Model name that retention (student / reference accuracy) uses."
    )
    prompt_template: str = _generate["prompt_template"]
    limit: int | None = _generate["limit"]
    batch_size: int = _generate["batch_size"]
    question_field: list[str] = _generate["question_field"]
    answer_field: list[str] = _generate["answer_field"]
    id_field: str = _generate["id_field"]
    question_template: str | None = _generate["question_template"]
    category_field: str | None = _generate["category_field"]
    answer_format: AnswerFormat = _generate["answer_format"]
    bootstrap_resamples: int = Field(
        1000, gt=0, description="Bootstrap resamples over problems for the intervals."
    )
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap, so intervals repeat.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    calibration_bins: int = Field(
        10, gt=0, description="Equal-width confidence bins for the calibration error."
    )
    verify_timeout_s: float = Field(5.0, gt=0, description="math-verify seconds per answer.")
    fallback_last_number: bool = FALLBACK_LAST_NUMBER
    think_start: str = ThinkConfig.model_fields["think_start"]
    think_end: str = ThinkConfig.model_fields["think_end"]
    collapse_below: float = Field(
        0.8, gt=0, description="A category whose whole retention interval lies below this is "
        "reported as a collapsed capability; one too small to show that at `confidence` "
        "(z^2 / problems >= this) is reported as too small to tell, never collapsed.",
    )
    failure_examples: int = Field(
        3, ge=0, description="Examples per failure mode and student in the report."
    )
    latency_prompts: int = Field(
        8, ge=0, description="Evaluation prompts sent one at a time (batch 1) per model for "
        "the deployment table's latency, each opened by a fresh tag so no prefix cache holds "
        "it (after an untimed warm-up); 0 disables.",
    )


class EvalSample(Record):
    """One sample of one model on one problem, as written to `results.jsonl`."""

    model: str
    problem_id: str
    sample_index: int
    question: str
    gold_answer: str | None
    completion: str
    predicted_answer: str | None
    verdict: str
    correct: bool
    # None when the backend could not count them (a server that sends no logprobs, n > 1).
    num_tokens: int | None
    finish_reason: str | None
    mean_logprob: float | None
    category: str | None = None
    # Cut at the token limit: its answer is read from a marker closed before the cut only.
    truncated: bool | None = None
    # Reasoning models (cotdistill/reasoning.py); None for samples without thinking.
    reasoning_tokens: int | None = None
    answer_tokens: int | None = None
    finished_thinking: bool | None = None


@dataclass
class ModelRun:
    """What running one model cost: timings and memory, beside its samples."""

    samples: list[EvalSample]
    generation_s: float
    load_s: float = 0.0
    peak_memory_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- the core: records in, records out -------------------------------------------------------


def default_verifier(timeout_s: float) -> Verifier:
    def check(pairs: Sequence[tuple[str | None, str | None]]) -> list[str]:
        from cotdistill.verify import check_answers

        return list(check_answers(pairs, timeout_s=timeout_s))

    return check


def evaluate_model(
    name: str,
    problems: Sequence[Problem],
    template: PromptTemplate,
    backend: Backend,
    sampling: SamplingConfig,
    verify: Verifier,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    markers: Markers = DEFAULT_MARKERS,
    opened: bool = False,
    fallback_last_number: bool = True,
) -> tuple[list[EvalSample], float]:
    """Sample `sampling.n` answers per problem and check them; returns (samples, seconds spent
    generating). Answers are checked after generation so verification never counts as latency.
    A reasoning model's answer is read from what follows its thinking (`markers`; `opened`:
    its chat template opens the thinking in the prompt).
    """
    rows: list[tuple[Problem, int, Any]] = []
    seconds = 0.0
    max_tokens = sampling.max_tokens
    for start in range(0, len(problems), batch_size):
        batch = problems[start : start + batch_size]
        reported = 0

        def relay(count: int) -> None:
            nonlocal reported
            reported += count
            if progress is not None:
                progress(count)

        tick = time.perf_counter()
        results = backend.generate(
            [template.render(p.question) for p in batch], sampling, progress=relay
        )
        seconds += time.perf_counter() - tick
        for problem, completions in zip(batch, results, strict=True):
            if len(completions) != sampling.n:
                raise RuntimeError(
                    f"{name}: backend returned {len(completions)} samples for {problem.id}, "
                    f"expected {sampling.n}"
                )
            rows.extend((problem, i, c) for i, c in enumerate(completions))
        if progress is not None and reported < len(batch) * sampling.n:
            progress(len(batch) * sampling.n - reported)  # a backend that reports nothing
    thinking = [
        reasoning_fields(c.text, c.num_tokens, markers, opened, c.reasoning is not None,
                         c.reasoning_tokens)
        for _, _, c in rows
    ]
    cut = [completion_truncated(c.finish_reason, c.num_tokens, max_tokens) for _, _, c in rows]
    predictions = [
        # A cut output's last number is wherever the cut fell ("6*7 = 42 hmm, but maybe"), not
        # an answer: only a box or marker it closed before the cut counts.
        extract_answer(t.get("answer_text", c.text), fallback_last_number and not truncated)
        for (_, _, c), t, truncated in zip(rows, thinking, cut, strict=True)
    ]
    verdicts = score_predictions(
        [p.gold_answer for p, _, _ in rows], predictions, verify
    )
    samples = []
    for (problem, index, completion), predicted, verdict, think, truncated in zip(
        rows, predictions, verdicts, thinking, cut, strict=True
    ):
        mean_logprob, _ = logprob_stats(completion.token_logprobs)
        samples.append(
            EvalSample(
                model=name,
                problem_id=problem.id,
                sample_index=index,
                question=problem.question,
                gold_answer=problem.gold_answer,
                completion=completion.text,
                predicted_answer=predicted,
                verdict=verdict,
                correct=verdict == "correct",
                num_tokens=completion.num_tokens,
                finish_reason=completion.finish_reason,
                mean_logprob=mean_logprob,
                category=problem.category,
                reasoning_tokens=think.get("reasoning_tokens"),
                answer_tokens=think.get("answer_tokens"),
                finished_thinking=think.get("finished_thinking"),
                truncated=truncated,
            )
        )
    return samples, seconds


def completion_truncated(finish_reason: str | None, num_tokens: int | None,
                         max_tokens: int) -> bool:
    """Cut by the token limit: the engine says so (`length`), or, where it gives no reason,
    the output used every token it was allowed."""
    if finish_reason is not None:
        return finish_reason == "length"
    return num_tokens is not None and num_tokens >= max_tokens


# Verdicts where the checker, not the model, failed: neither right nor wrong, counted apart.
UNSCORED = ("unverifiable", "timeout")


def score_predictions(
    golds: Sequence[str | None], predictions: Sequence[str | None], verify: Verifier
) -> list[str]:
    """One verdict per prediction. A sample with no answer is the model's failure
    (`no_answer`, wrong); only answers go to the checker, so its `unverifiable` / `timeout`
    mean the checker could not decide, which the summary counts apart from wrong."""
    answered = [i for i, pred in enumerate(predictions) if pred is not None]
    checked = verify([(golds[i], predictions[i]) for i in answered]) if answered else []
    verdicts = ["no_answer"] * len(predictions)
    for i, verdict in zip(answered, checked, strict=True):
        verdicts[i] = verdict
    return verdicts


def sample_confidence(sample: EvalSample) -> float | None:
    """exp(mean token logprob): the model's geometric-mean probability of its own answer."""
    return None if sample.mean_logprob is None else exp(sample.mean_logprob)


def summarize_model(
    samples: Sequence[EvalSample],
    *,
    bins: int = 10,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Accuracy (pass@1 over the k samples), maj@k and pass@k, lengths, truncation, ECE."""
    groups = by_problem(samples)
    scores = [sum(s.correct for s in g) / len(g) for g in groups.values()]
    accuracy = bootstrap_mean(scores, resamples, seed, level)
    sizes = {len(g) for g in groups.values()}
    k = min(sizes) if sizes else 0
    summary: dict[str, Any] = {
        "problems": len(groups),
        "samples": len(samples),
        "samples_per_problem": k,
        "accuracy": accuracy.value,
        "accuracy_ci": [accuracy.low, accuracy.high],
    }
    unscored = Counter(s.verdict for s in samples if s.verdict in UNSCORED)
    # Counted as not correct in `accuracy`; the share says how much of the figure is unknown.
    summary["unscored"] = dict(unscored)
    summary["unscored_share"] = sum(unscored.values()) / len(samples) if samples else None
    if k > 1:
        # Answers vote by math equivalence (`0.5`, `1/2`, `\\frac{1}{2}` are one vote), the
        # rule the filter's majority uses; a tie goes to the group answered first, and is counted.
        problems = list(groups.values())
        votes = [
            majority_vote(answer_groups, [s.correct for s in g])
            for g, answer_groups in zip(problems, group_equivalent_many(
                [[s.predicted_answer for s in g] for g in problems]), strict=True)
        ]
        summary[f"maj@{k}"] = sum(v.correct for v in votes) / len(groups)
        summary[f"maj@{k}_ties"] = sum(v.tied for v in votes)
        summary[f"pass@{k}"] = sum(
            pass_at_k(len(g), sum(s.correct for s in g), k) for g in groups.values()
        ) / len(groups)
    rated = [(sample_confidence(s), s.correct) for s in samples if s.mean_logprob is not None]
    confidences = [c for c, _ in rated]
    outcomes = [ok for _, ok in rated]
    counted = [s.num_tokens for s in samples if s.num_tokens is not None]
    truncated = [s for s in samples if is_truncated(s)]
    summary.update(
        {
            # Over the samples whose length is known (a server may not say).
            "mean_reasoning_tokens": sum(counted) / len(counted) if counted else None,
            "truncated": len(truncated),
            "truncated_share": len(truncated) / len(samples) if samples else None,
            # Cut samples that still closed a box or answer marker before the cut.
            "truncated_answered": sum(s.predicted_answer is not None for s in truncated),
            "verdicts": dict(Counter(s.verdict for s in samples)),
            "ece": expected_calibration_error(confidences, outcomes, bins),
            # Samples without token logprobs cannot be placed on the reliability diagram.
            "calibration_samples": len(rated),
            "calibration_bins": [
                vars(b) for b in calibration_bins(confidences, outcomes, bins)
            ],
            "thinking": thinking_summary(samples),
        }
    )
    return summary


def thinking_summary(samples: Sequence[EvalSample]) -> dict[str, Any] | None:
    """Reasoning models: mean thinking and answer tokens, the share that never finished
    thinking, accuracy when it finished vs not. None when no sample has thinking."""
    thinking = [s for s in samples if s.finished_thinking is not None]
    if not thinking:
        return None

    def mean(values: list[int | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(sum(known) / len(known), 2) if known else None

    def accuracy(group: list[EvalSample]) -> float | None:
        return round(sum(s.correct for s in group) / len(group), 4) if group else None

    finished = [s for s in thinking if s.finished_thinking]
    unfinished = [s for s in thinking if not s.finished_thinking]
    return {
        "samples_with_thinking": len(thinking),
        "mean_thinking_tokens": mean([s.reasoning_tokens for s in thinking]),
        "mean_answer_tokens": mean([s.answer_tokens for s in thinking]),
        "unfinished_share": round(len(unfinished) / len(thinking), 4),
        "accuracy_finished": accuracy(finished),
        "accuracy_unfinished": accuracy(unfinished),
    }


def thinking_section(models: dict[str, Any]) -> list[str]:
    """Report table of `thinking_summary` per model; nothing when no model thinks."""
    rows = {name: m["thinking"] for name, m in models.items() if m.get("thinking")}
    if not rows:
        return []
    lines = [
        "", "## Thinking", "",
        "Samples whose output has a thinking part (`<think>`); accuracy split by whether the "
        "thinking finished before the token limit.", "",
        "| model | samples with thinking | mean thinking tokens | mean answer tokens | "
        "never finished | accuracy (finished) | accuracy (unfinished) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in rows.items():
        lines.append(
            f"| {name} | {t['samples_with_thinking']} | {_fmt(t['mean_thinking_tokens'], 1)} | "
            f"{_fmt(t['mean_answer_tokens'], 1)} | {_fmt(t['unfinished_share'])} | "
            f"{_fmt(t['accuracy_finished'])} | {_fmt(t['accuracy_unfinished'])} |"
        )
    return lines


def retention(
    per_model: dict[str, Sequence[EvalSample]],
    reference: str,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Accuracy of each other model over the reference's, with a paired bootstrap interval."""
    if reference not in per_model:
        return {}
    ref_scores = problem_scores(per_model[reference])
    table: dict[str, Any] = {}
    for name, samples in per_model.items():
        if name == reference:
            continue
        scores = problem_scores(samples)
        if scores.keys() != ref_scores.keys():
            raise ValueError(f"{name} and {reference} were scored on different problems")
        ids = list(ref_scores)
        interval = bootstrap_ratio(
            [scores[i] for i in ids], [ref_scores[i] for i in ids], resamples, seed, level
        )
        table[name] = {"reference": reference, **interval.as_dict()}
    return table


# --- models: names, adapters, size and memory --------------------------------------------------


def parse_model_specs(specs: Sequence[str]) -> dict[str, str]:
    """["teacher=A", "student=B"] -> {"teacher": "A", "student": "B"} (order kept)."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, model = spec.partition("=")
        name, model = name.strip(), model.strip()
        if not sep or not name or not model:
            raise InputError(f"expected NAME=MODEL, got {spec!r}", field="model")
        if not _NAME.match(name):
            raise InputError(f"model name {name!r} may use letters, digits, _ . -", field="model")
        if name in models:
            raise InputError(f"model name {name!r} given twice", field="model")
        models[name] = model
    if not models:
        raise InputError("evaluate needs at least one --model NAME=MODEL", field="model")
    return models


def adapter_base(adapter: Path) -> str:
    """The base model a peft adapter folder was trained on, checked before loading anything."""
    config_file = adapter / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable adapter config: {exc}", file=config_file) from exc
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise InputError(
            "adapter names no base model", file=config_file, field="base_model_name_or_path"
        )
    return str(base)


def folder_hash(folder: Path) -> str:
    """Hash of a model folder's own files; sub-folders (checkpoints) and manifests are not
    part of the model, so a finished training run hashes the same whatever it left beside."""
    skip = ("manifest.json", "pipeline.json", "train_log.jsonl")
    parts = [f"{p.name}:{sha256_file(p)}" for p in sorted(folder.iterdir())
             if p.is_file() and p.name not in skip]
    return sha256_text("\n".join(parts))


def merge_adapter(adapter: Path, trust_remote_code: bool = False) -> Path:
    """Merge a LoRA adapter into its base once; later calls reuse the cached folder.

    The cache is keyed by the adapter's hash, so a retrained adapter never reuses stale
    weights. vLLM then serves the merged folder like any model.
    """
    from cotdistill.models import cache_dir, resolve_model

    target = cache_dir() / "merged" / folder_hash(adapter)[:16]
    if (target / "config.json").exists():
        return target
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path, _ = resolve_model(adapter_base(adapter))
    # Merged in the base's own dtype, so the served model has the base's size and numerics.
    base = AutoModelForCausalLM.from_pretrained(
        base_path, dtype="auto", trust_remote_code=trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").exists() else base_path
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_source, trust_remote_code=trust_remote_code
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "model"
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "merged_from.json").write_text(
            json.dumps({"adapter": str(adapter.resolve()), "base": base_path}, indent=2) + "\n"
        )
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    return target


@dataclass(frozen=True)
class ModelSource:
    name: str
    spec: str
    path: str  # what resolve_model gave: a folder or a hub id
    adapter: Path | None  # set when `path` is a LoRA adapter folder


def locate_models(models: dict[str, str]) -> list[ModelSource]:
    """Resolve every model and check adapters before any model is loaded."""
    from cotdistill.models import resolve_model

    sources = []
    for name, spec in models.items():
        path, _ = resolve_model(spec)
        folder = Path(path)
        adapter = folder if (folder / "adapter_config.json").exists() else None
        if adapter is not None:
            base, _ = resolve_model(adapter_base(adapter))
            looks_local = base.startswith(("/", ".", "~"))
            if looks_local and not Path(base).exists():
                raise InputError(
                    f"adapter's base model {base} does not exist",
                    file=adapter / "adapter_config.json",
                    field="base_model_name_or_path",
                )
        sources.append(ModelSource(name, spec, path, adapter))
    return sources


def parameter_count(model_dir: Path) -> int | None:
    """Parameters in a folder's safetensors files, read from their headers (no weights loaded).

    A quantised checkpoint (config.json has a `quantization_config`, e.g. from `cotdistill
    quantize`) counts the model's parameters, not the tensors that store them: scales and zero
    points are not parameters, and a packed int4 weight (eight values per int32) counts by its
    unpacked shape, which compressed-tensors stores beside it as `weight_shape`.
    """
    from cotdistill.evaluation.deployment import QUANT_AUX

    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    quantized = quantized_scheme(model_dir) is not None
    total = 0
    for file in files:
        with open(file, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
            for key, entry in header.items():
                module, _, leaf = key.rpartition(".")
                if key == "__metadata__" or (quantized and leaf in QUANT_AUX):
                    continue
                shape = header.get(f"{module}.weight_shape") if leaf == "weight_packed" else None
                if quantized and shape is not None and shape["dtype"] in ("I64", "I32"):
                    start, end = shape["data_offsets"]
                    fh.seek(8 + size + start)
                    code, width = ("q", 8) if shape["dtype"] == "I64" else ("i", 4)
                    total += prod(struct.unpack(f"<{(end - start) // width}{code}",
                                                fh.read(end - start)))
                else:
                    total += prod(entry["shape"])
    return total


def quantized_scheme(model_dir: Path) -> str | None:
    """'w8a8', 'w4a16' for a quantised folder (`cotdistill quantize`), else None: marks the
    model in both tables, so distilled + quantised students read apart from the others."""
    from cotdistill.backends.sizing import read_model_config
    from cotdistill.evaluation.deployment import quantization_label

    return quantization_label(read_model_config(str(model_dir)))


def stage_memory(config: EvaluateConfig) -> PeakMemory | None:
    """What this evaluation can measure: the engine's memory (GPU memory on GPU) while a model
    is loaded and generating; math-verify's workers excluded. Nothing for a remote server."""
    if config.backend == "openai":
        return None
    import torch

    return PeakMemory(children=True, gpu="device" if torch.cuda.is_available() else None)


# --- the edges: files, progress, report --------------------------------------------------------


def batch_one_latency(
    name: str,
    backend: Backend,
    problems: Sequence[Problem],
    template: PromptTemplate,
    config: EvaluateConfig,
) -> dict[str, Any] | None:
    """Single-request latency on the first `latency_prompts` problems, greedy so that every
    run sends the same requests; None when disabled."""
    from cotdistill.evaluation.deployment import measure_latency

    chosen = problems[: config.latency_prompts]
    if not chosen:
        return None
    sampling = SamplingConfig(
        **config.model_dump(include=set(SamplingConfig.model_fields)) | {"temperature": 0.0}
    )
    bar = progress_bar(len(chosen) + 1, f"latency {name} (batch 1)", unit="request",
                       leave=False)
    try:
        return measure_latency(
            backend, [template.render(p.question) for p in chosen], sampling, bar.update
        )
    finally:
        bar.close()


def run_model(
    source: ModelSource,
    problems: Sequence[Problem],
    template: PromptTemplate,
    config: EvaluateConfig,
    factory: BackendFactory,
    verify: Verifier,
) -> ModelRun:
    """Load one model (merging its adapter first), generate, check, measure, release it."""
    path = str(merge_adapter(source.adapter, config.trust_remote_code)) if source.adapter else (
        source.path
    )
    bar = progress_bar(len(problems) * config.n, f"evaluate {source.name}")
    memory = stage_memory(config)
    with memory or nullcontext():
        tick = time.perf_counter()
        backend = factory(path)
        load_s = time.perf_counter() - tick
        try:
            samples, seconds = evaluate_model(
                source.name, problems, template, backend, config, verify, config.batch_size,
                bar.update, markers=Markers(config.think_start, config.think_end),
                fallback_last_number=config.fallback_last_number,
                opened=config.backend == "vllm" and template_opens_thinking(
                    path, [m.model_dump() for m in template.render("1 + 1")],
                    Markers(config.think_start, config.think_end), config.enable_thinking,
                    config.trust_remote_code),
            )
            bar.close()
            latency = batch_one_latency(source.name, backend, problems, template, config)
        finally:
            bar.close()
            backend.close()
    extra: dict[str, Any] = {"model": source.spec, "served_path": path}
    if source.adapter is not None:
        extra["adapter"] = {"path": str(source.adapter), "base": adapter_base(source.adapter),
                            "merged_into": path}
    if memory is not None:
        extra["peak_memory_what"] = memory.what
    if latency is not None:
        extra["latency"] = latency
    return ModelRun(samples, seconds, load_s, memory.peak_mb if memory else None, extra)


def model_summary(run: ModelRun, config: EvaluateConfig) -> dict[str, Any]:
    summary = summarize_model(
        run.samples,
        bins=config.calibration_bins,
        resamples=config.bootstrap_resamples,
        seed=config.bootstrap_seed,
        level=config.confidence,
    )
    counts = [s.num_tokens for s in run.samples]
    # Unknown lengths (a server without logprobs) leave throughput unknown, not understated.
    tokens = None if None in counts else sum(c for c in counts if c is not None)
    problems = summary["problems"]
    served = Path(run.extra.get("served_path", ""))
    parameters = parameter_count(served) if run.extra.get("served_path") else None
    summary.update(
        {
            **run.extra,
            "parameters": parameters,
            "quantization": quantized_scheme(served) if run.extra.get("served_path") else None,
            "output_tokens": tokens,
            "output_tokens_per_s": (
                tokens / run.generation_s if tokens is not None and run.generation_s > 0
                else None
            ),
            "seconds_per_problem": run.generation_s / problems if problems else None,
            "generation_s": round(run.generation_s, 3),
            "load_s": round(run.load_s, 3),
            "peak_memory_mb": run.peak_memory_mb,
        }
    )
    return summary


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _unscored_mark(model: dict[str, Any]) -> str:
    """` (2 unscored: 1 timeout, 1 unverifiable)` beside an accuracy; nothing when none."""
    unscored = model.get("unscored") or {}
    total = sum(unscored.values())
    if not total:
        return ""
    parts = ", ".join(f"{count} {verdict}" for verdict, count in sorted(unscored.items()))
    return f" ({total} unscored: {parts})"


def _truncated_cell(model: dict[str, Any]) -> str:
    """`3 (0.250)`: truncated samples and their share (older summaries: the share only)."""
    if model.get("truncated") is None:
        return _fmt(model["truncated_share"])
    return f"{model['truncated']} ({_fmt(model['truncated_share'])})"


def _interval(value: Any, low: Any, high: Any) -> str:
    if value is None:
        return "-"
    if low is None or high is None:
        return _fmt(value)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _params(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M"


def no_reference(config: EvaluateConfig, models: Iterable[str]) -> str:
    return (f"no model is named {config.reference!r} (the reference), so no retention is "
            f"computed; models: {', '.join(models)}. Name one `--model "
            f"{config.reference}=PATH` or set --reference to one of them.")


def render_report(summary: dict[str, Any], config: EvaluateConfig) -> str:
    """The teacher-vs-student table (markdown), then calibration and verdict counts."""
    models = summary["models"]
    table = summary["retention"]
    level = f"{config.confidence:.0%}"
    lines = [
        "# Evaluation",
        "",
        f"{next(iter(models.values()))['problems']} problems from `{config.problems}`, "
        f"prompt `{config.prompt_template}`, n={config.n}, temperature={config.temperature}, "
        f"max_tokens={config.max_tokens}. Intervals: {level} bootstrap over problems "
        f"({config.bootstrap_resamples} resamples, seed {config.bootstrap_seed}); retention "
        f"= accuracy / {config.reference} accuracy, paired over problems.",
        "",
    ]
    if config.reference not in models:
        lines += [f"**No retention:** {no_reference(config, models)}", ""]
    k = config.n
    extra_cols = [f"maj@{k}", f"pass@{k}"] if k > 1 else []
    header = ["model", "parameters", "accuracy", *extra_cols, f"retention vs {config.reference}",
              "mean tokens", "truncated", "tok/s", "s/problem", "peak memory MB"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for name, m in models.items():
        ret = table.get(name)
        ret_text = "1 (reference)" if name == config.reference else (
            _interval(ret["value"], ret["low"], ret["high"]) if ret else "-"
        )
        row = [
            name + (f" [{m['quantization']}]" if m.get("quantization") else ""),
            _params(m["parameters"]),
            _interval(m["accuracy"], *m["accuracy_ci"]) + _unscored_mark(m),
            *[_fmt(m.get(c)) for c in extra_cols],
            ret_text,
            _fmt(m["mean_reasoning_tokens"], 1),
            _truncated_cell(m),
            _fmt(m["output_tokens_per_s"], 1),
            _fmt(m["seconds_per_problem"], 3),
            _fmt(m["peak_memory_mb"], 0),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Accuracy counts a sample as correct only when the checker (math-verify) confirmed it; "
        "a mark such as `(2 unscored: 1 timeout, 1 unverifiable)` beside it counts the samples "
        "whose answer the checker could not decide (they count as not correct, so the true "
        "accuracy may be higher by up to their share). Truncated: samples cut at max_tokens "
        "(their share); a cut sample is scored only on a box or answer marker it closed before "
        "the cut, never on its last number.",
        "",
        "tok/s and s/problem: generation time of the whole batch (engine start excluded) over "
        "output tokens and problems. Peak memory: "
        + (next((m["peak_memory_what"] for m in models.values() if m.get("peak_memory_what")),
                "not measured (a model served remotely)"))
        + ", while the model was loaded.",
        "",
        "## Calibration",
        "",
        "Confidence = exp(mean token logprob) of a sample; ECE over "
        f"{config.calibration_bins} equal-width bins.",
        "",
        "| model | ECE | samples with logprobs | verdicts |",
        "|---|---|---|---|",
    ]
    for name, m in models.items():
        verdicts = ", ".join(f"{k}: {v}" for k, v in sorted(m["verdicts"].items()))
        lines.append(
            f"| {name} | {_fmt(m['ece'])} | {m['calibration_samples']} / {m['samples']} | "
            f"{verdicts} |"
        )
    cached = [name for name, m in models.items() if m.get("cached")]
    if cached:
        lines.append(
            f"\nSamples, timings and memory of {', '.join(cached)} come from an earlier run "
            "with the same model files, problems and settings."
        )
    for name, m in models.items():
        if m.get("cache_off"):
            lines.append(f"\n`{name}`'s samples are not cached: {m['cache_off']}.")
    for name, m in models.items():
        if m.get("adapter"):
            lines.append(
                f"\n`{name}` is a LoRA adapter; it was merged into `{m['adapter']['base']}` and "
                f"served from `{m['adapter']['merged_into']}`."
            )
    lines += thinking_section(models)
    lines += ["", *decision_sections(summary, config)]
    plots = summary.get("plots") or []
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def decision_measures(
    per_model: dict[str, list[EvalSample]], summary: dict[str, Any], config: EvaluateConfig
) -> dict[str, Any]:
    """What decides a deployment (`cotdistill.evaluation`): retention per capability, failure
    modes and the teacher-vs-student deployment table."""
    from cotdistill.evaluation.categories import category_results
    from cotdistill.evaluation.deployment import deployment_table
    from cotdistill.evaluation.failures import failure_modes

    return {
        "categories": category_results(
            per_model, config.reference, collapse_below=config.collapse_below,
            resamples=config.bootstrap_resamples, seed=config.bootstrap_seed,
            level=config.confidence,
        ),
        "failures": failure_modes(per_model, config.reference, examples=config.failure_examples),
        "deployment": deployment_table(
            summary["models"], config.reference, engine_dtype=config.dtype,
            max_tokens=config.max_tokens,
        ),
    }


def decision_plots(summary: dict[str, Any], config: EvaluateConfig, out: Path) -> list[str]:
    from cotdistill.evaluation.plots import category_plot, failure_plot

    paths = [failure_plot(summary["failures"], out / "failures.png"),
             category_plot(summary["categories"], config.reference, out / "categories.png")]
    return [str(p) for p in paths if p is not None]


def decision_sections(summary: dict[str, Any], config: EvaluateConfig) -> list[str]:
    """Report sections for the measures of `decision_measures` (absent in older summaries)."""
    from cotdistill.evaluation.categories import render_categories
    from cotdistill.evaluation.deployment import render_deployment
    from cotdistill.evaluation.failures import render_failures

    lines: list[str] = []
    if "deployment" in summary:
        lines += render_deployment(summary["deployment"], config.reference)
    if "categories" in summary:
        lines += render_categories(
            summary["categories"], config.reference, f"{config.confidence:.0%}"
        )
    if "failures" in summary:
        lines += render_failures(summary["failures"], config.reference)
    return lines


def check_problems(problems: Sequence[Problem]) -> None:
    """Every evaluation problem needs a gold answer; say which one lacks it."""
    for problem in problems:
        if problem.gold_answer is None:
            file, _, line = problem.source.rpartition(":")
            raise InputError(
                "evaluation problem has no gold answer",
                file=file or None,
                line=int(line) if line.isdigit() else None,
                field="answer",
            )


def load_eval_problems(config: EvaluateConfig) -> list[Problem]:
    fields = ProblemFields(
        question=tuple(config.question_field),
        answer=tuple(config.answer_field),
        id=config.id_field,
        answer_format=config.answer_format,
        template=config.question_template,
        category=config.category_field,
    )
    problems = load_problems(Path(config.problems), fields)  # type: ignore[arg-type]
    if config.limit is not None:
        problems = problems[: config.limit]
    check_problems(problems)
    return problems


@dataclass(frozen=True)
class WeightsId:
    """What identifies the weights a model's samples come from. `value` None: nothing does,
    so its samples are never reused (`how` says why, in the report)."""

    value: str | None
    how: str


def hub_revision(repo_id: str) -> str | None:
    """The commit of a hub model that a load would get now: the hub's answer when online, else
    the local cache's (what an offline load uses); None when neither is known."""
    try:
        import huggingface_hub
    except ImportError:
        return None
    try:
        return str(huggingface_hub.HfApi().model_info(repo_id, timeout=10).sha)
    except Exception:  # offline, unknown repo, no network: any of them means "not from the hub"
        pass
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True)).name
    except Exception:  # not in the local cache either
        return None


def weights_id(source: ModelSource, config: EvaluateConfig,
               factory: BackendFactory) -> WeightsId:
    """A served model by what its server says and a probe (`weights_fingerprint`: a name alone
    survives a restart on new weights), a local folder by its files, a hub id by its commit."""
    if config.backend == "openai":
        backend = factory(source.path)
        try:
            probe = getattr(backend, "weights_fingerprint", None)
            value = probe() if callable(probe) else None
        finally:
            backend.close()
        if value is None:
            return WeightsId(None, f"the server's model card and a probe cannot identify the "
                                   f"weights served as {source.path!r} (no log-probabilities)")
        return WeightsId(f"served:{value}", "the server's model card and a probe")
    folder = Path(source.adapter or source.path)
    if folder.is_dir():
        return WeightsId(folder_hash(folder), "its files")
    revision = hub_revision(source.path)
    if revision is not None:
        return WeightsId(f"hub:{source.path}@{revision}", f"hub revision {revision}")
    return WeightsId(None, f"{source.path!r} is no local folder and no hub revision of it is "
                           "known, so nothing identifies its weights")


# Settings that do not change what a model generates or how a sample is scored.
_NOT_SAMPLE_SETTINGS = {
    "model", "out", "reference", "batch_size", "bootstrap_resamples", "bootstrap_seed",
    "confidence", "calibration_bins", "collapse_below", "failure_examples",
}


def sample_key(config: EvaluateConfig, weights: WeightsId, problems_hash: str,
               template: PromptTemplate) -> str | None:
    """Identity of one model's samples: its weights, the problems, prompt and sampling; None
    (never reused) when nothing identifies the weights."""
    if weights.value is None:
        return None
    settings = config.model_dump(mode="json", exclude=_NOT_SAMPLE_SETTINGS)
    return sha256_text(json.dumps(
        {"settings": settings, "problems": problems_hash, "template": template.hash,
         "model": weights.value}, sort_keys=True,
    ))


def load_cached(folder: Path, name: str, key: str) -> ModelRun | None:
    """A model's samples from an earlier run with the same key (its .json is written last)."""
    meta_path, samples_path = folder / f"{name}.json", folder / f"{name}.jsonl"
    if not meta_path.exists() or not samples_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("key") != key:
        return None
    samples = list(read_jsonl(samples_path, EvalSample))
    return ModelRun(samples, meta["generation_s"], meta["load_s"], meta["peak_memory_mb"],
                    {**meta["extra"], "cached": True})


def save_cached(folder: Path, name: str, key: str, run: ModelRun) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / f"{name}.jsonl", run.samples)
    meta = {"key": key, "generation_s": run.generation_s, "load_s": run.load_s,
            "peak_memory_mb": run.peak_memory_mb, "extra": run.extra}
    tmp = folder / f"{name}.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(folder / f"{name}.json")


@locks_output("evaluate")
def run_evaluate(
    config: EvaluateConfig,
    backend_factory: BackendFactory | None = None,
    verify: Verifier | None = None,
    tables: bool = True,
) -> dict[str, Any]:
    """Evaluate every `--model` on the problems; returns the manifest.

    `tables=False` leaves the accuracy and deployment tables off the terminal (`run` prints
    them once, in its own summary)."""
    started = time.time()
    if config.problems is None or config.out is None:
        raise InputError("evaluate needs --problems and --out")
    # All input checks come before the first model is loaded.
    models = parse_model_specs(config.model)
    if config.reference not in models:
        print(f"evaluate: warning: {no_reference(config, models)}", file=sys.stderr)
    problems = load_eval_problems(config)
    template = load_template(config.prompt_template)
    if config.backend == "openai":
        sources = [ModelSource(n, s, s, None) for n, s in models.items()]
    else:
        sources = locate_models(models)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    workload = Workload.of(min(config.batch_size, len(problems)), config.n, config.max_tokens,
                           (template.render(p.question) for p in problems))
    factory = backend_factory or (
        lambda path: make_backend(config.backend, path, config, workload=workload)
    )
    verify = verify or default_verifier(config.verify_timeout_s)

    problems_hash = sha256_file(Path(config.problems))
    weights = {s.name: weights_id(s, config, factory) for s in sources}
    keys = {s.name: sample_key(config, weights[s.name], problems_hash, template)
            for s in sources}
    runs: dict[str, ModelRun] = {}
    for source in sources:
        key = keys[source.name]
        # A model scored before with the same weights, problems and settings is not run again,
        # so an interrupted evaluation resumes at the next model.
        cached = load_cached(out / PER_MODEL, source.name, key) if key is not None else None
        if cached is not None:
            runs[source.name] = cached
            print(f"evaluate: {source.name}: reusing its samples (same model and settings)")
        else:
            runs[source.name] = run_model(source, problems, template, config, factory, verify)
            if key is not None:
                save_cached(out / PER_MODEL, source.name, key, runs[source.name])
            else:
                runs[source.name].extra["cache_off"] = weights[source.name].how
                print(f"evaluate: {source.name}: samples not cached: "
                      f"{weights[source.name].how}", file=sys.stderr)
        print(f"evaluate: {source.name} {accuracy_line(runs[source.name].samples)}")

    write_jsonl(out / RESULTS, (s for run in runs.values() for s in run.samples))
    summary: dict[str, Any] = {
        "models": {name: model_summary(run, config) for name, run in runs.items()},
        "retention": retention(
            {name: run.samples for name, run in runs.items()},
            config.reference,
            resamples=config.bootstrap_resamples,
            seed=config.bootstrap_seed,
            level=config.confidence,
        ),
    }
    from cotdistill.plots import write_plots

    summary.update(decision_measures({n: r.samples for n, r in runs.items()}, summary, config))
    lengths = {name: [s.num_tokens for s in run.samples if s.num_tokens is not None]
               for name, run in runs.items()}
    summary["plots"] = [str(p) for p in write_plots(summary, lengths, out)]
    summary["plots"] += decision_plots(summary, config, out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    report = render_report(summary, config)
    (out / REPORT).write_text(report)
    manifest = write_manifest(
        out,
        stage="evaluate",
        config=config,
        inputs={str(config.problems): problems_hash,
                **{s.spec: weights[s.name].value or "unidentified" for s in sources}},
        counts={"problems": len(problems), "models": len(runs),
                "samples": sum(len(r.samples) for r in runs.values())},
        started=started,
    )
    if tables:
        print(terminal_tables(report))
    print(f"evaluate: wrote {out / REPORT}, {out / SUMMARY}, {out / RESULTS}")
    return manifest


def accuracy_line(samples: Sequence[EvalSample]) -> str:
    """`accuracy 0.500 (2 unscored: 1 timeout, 1 unverifiable; 3 truncated)` for the terminal."""
    accuracy = sum(s.correct for s in samples) / len(samples)
    unscored = Counter(s.verdict for s in samples if s.verdict in UNSCORED)
    notes = []
    if unscored:
        parts = ", ".join(f"{n} {v}" for v, n in sorted(unscored.items()))
        notes.append(f"{sum(unscored.values())} unscored: {parts}")
    truncated = sum(is_truncated(s) for s in samples)
    if truncated:
        notes.append(f"{truncated} truncated")
    return f"accuracy {accuracy:.3f}" + (f" ({'; '.join(notes)})" if notes else "")


def terminal_tables(report: str, sections: tuple[str, ...] = ("Evaluation", "Deployment")) -> str:
    """The report's tables of `sections` (the accuracy table and the deployment table) with
    their headings: what the terminal shows. The rest (notes, calibration, categories,
    failure examples, plots) stays in report.md."""
    kept: list[str] = []
    keep = False
    for line in report.splitlines():
        if line.startswith("#"):
            keep = line.lstrip("#").strip() in sections
            if keep:
                kept += ["", line] if kept else [line]
        elif keep and line.startswith("|"):
            kept.append(line)
    return "\n".join(kept)

