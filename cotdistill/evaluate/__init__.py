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

from cotdistill.evaluate.cache import load_cached, sample_key, save_cached
from cotdistill.evaluate.config import (
    PER_MODEL,
    REPORT,
    RESULTS,
    SUMMARY,
    BackendFactory,
    EvalSample,
    EvaluateConfig,
    ModelRun,
    Verifier,
)
from cotdistill.evaluate.per_model import batch_one_latency, model_summary, run_model, stage_memory
from cotdistill.evaluate.report import (
    accuracy_line,
    decision_measures,
    decision_plots,
    decision_sections,
    no_reference,
    render_report,
    terminal_tables,
    thinking_section,
)
from cotdistill.evaluate.score import (
    UNSCORED,
    completion_truncated,
    default_verifier,
    evaluate_model,
    sample_confidence,
    score_predictions,
)
from cotdistill.evaluate.sources import (
    ModelSource,
    WeightsId,
    adapter_base,
    folder_hash,
    hub_revision,
    locate_models,
    merge_adapter,
    parameter_count,
    parse_model_specs,
    quantized_scheme,
    weights_id,
)
from cotdistill.evaluate.stage import check_problems, load_eval_problems, run_evaluate
from cotdistill.evaluate.summary import retention, summarize_model, thinking_summary

__all__ = [
    "BackendFactory", "EvalSample", "EvaluateConfig", "ModelRun", "ModelSource", "PER_MODEL",
    "REPORT", "RESULTS", "SUMMARY", "UNSCORED", "Verifier", "WeightsId", "accuracy_line",
    "adapter_base", "batch_one_latency", "check_problems", "completion_truncated",
    "decision_measures", "decision_plots", "decision_sections", "default_verifier",
    "evaluate_model", "folder_hash", "hub_revision", "load_cached", "load_eval_problems",
    "locate_models", "merge_adapter", "model_summary", "no_reference", "parameter_count",
    "parse_model_specs", "quantized_scheme", "render_report", "retention", "run_evaluate",
    "run_model", "sample_confidence", "sample_key", "save_cached", "score_predictions",
    "stage_memory", "summarize_model", "terminal_tables", "thinking_section",
    "thinking_summary", "weights_id",
]
