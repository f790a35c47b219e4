"""Stage 1: sample teacher chain-of-thought traces for every problem.

`sample_traces` is the core (problems and a backend in, Trace records out, no files);
`run_generate` adds the edges: reading problems, resuming `traces.jsonl`, progress, manifest.
`sample_until_correct` samples in waves until K verified-correct traces (`--until-correct`).

    cotdistill generate --problems data/train.jsonl --out runs/gen --n 4
"""

from cotdistill.generate.adaptive import Ledger, sample_until_correct, verified_correct
from cotdistill.generate.config import (
    TRACES,
    GenerateConfig,
    check_adaptive,
    problem_fields,
    select_problems,
)
from cotdistill.generate.resume import drop_duplicate_samples, recover_traces, resume_key
from cotdistill.generate.sample import batched, make_trace, sample_traces, sampling_record
from cotdistill.generate.single import run_single, thinking_opened
from cotdistill.generate.stage import run_generate
from cotdistill.records import logprob_stats

__all__ = [
    "GenerateConfig", "Ledger", "TRACES", "batched", "check_adaptive", "drop_duplicate_samples",
    "logprob_stats", "make_trace", "problem_fields", "recover_traces", "resume_key",
    "run_generate", "run_single", "sample_traces", "sample_until_correct", "sampling_record",
    "select_problems", "thinking_opened", "verified_correct",
]
