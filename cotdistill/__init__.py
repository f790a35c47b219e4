"""cotdistill: teacher CoT traces -> selective filter -> distilled student -> retention.

The public Python API, one name per stage piece, loaded on first use (PEP 562) so that
`import cotdistill` stays instant and imports no torch, transformers or vLLM:

    import cotdistill as cd
    cd.run_generate(cd.GenerateConfig(problems="data/word_problems/train.jsonl", out="runs/gen"))

Each `run_X(config)` reads and writes files like `cotdistill X` and returns its manifest (a
dict; `run_pipeline` a summary). docs/api.md shows the four stages chained from Python.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> "module:attribute". Only this module may import from every layer (docs/architecture.md).
_EXPORTS: dict[str, str] = {
    # configs, one per stage, and the YAML + overrides loader
    "GenerateConfig": "cotdistill.generate:GenerateConfig",
    "FilterConfig": "cotdistill.filter:FilterConfig",
    "TrainConfig": "cotdistill.train:TrainConfig",
    "EvaluateConfig": "cotdistill.evaluate:EvaluateConfig",
    "PipelineConfig": "cotdistill.run:PipelineConfig",
    "StudentInitConfig": "cotdistill.compress.student_init:StudentInitConfig",
    "QuantizeConfig": "cotdistill.compress.quantize:QuantizeConfig",
    "load_config": "cotdistill.config:load_config",
    # records
    "Problem": "cotdistill.records:Problem",
    "Trace": "cotdistill.records:Trace",
    "Message": "cotdistill.records:Message",
    "EvalSample": "cotdistill.evaluate:EvalSample",
    # one runner per stage: files in, manifest dict out
    "run_generate": "cotdistill.generate:run_generate",
    "run_filter": "cotdistill.filter:run_filter",
    "run_train": "cotdistill.train:run_train",
    "run_evaluate": "cotdistill.evaluate:run_evaluate",
    "run_pipeline": "cotdistill.run:run_pipeline",
    "run_student_init": "cotdistill.compress.student_init:run_student_init",
    "run_quantize": "cotdistill.compress.quantize:run_quantize",
    # record-level helpers
    "load_problems": "cotdistill.problems:load_problems",
    "filter_traces": "cotdistill.filter:filter_traces",
    "extract_answer": "cotdistill.answers:extract_answer",
    "check_answers": "cotdistill.answers:check_answers",
    # errors: bad input (exit 2) and a failing service (exit 1)
    "InputError": "cotdistill.errors:InputError",
    "ServiceError": "cotdistill.errors:ServiceError",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'cotdistill' has no attribute {name!r}")
    module, attribute = target.split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
