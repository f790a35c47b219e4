"""synthesize with the real in-process vLLM engine (a tiny random model): votes are sampled,
every made problem is kept or set aside, and the exact label needs no engine at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.records import Trace
from cotdistill.synthesize import SynthesizeConfig, run_synthesize


@pytest.mark.vllm
def test_votes_from_a_real_engine(tmp_path: Path, tiny_model: Path) -> None:
    seeds = [
        {"id": "eq", "question": "Natalia sold clips to 48 of her friends in April, and then "
         "she sold half as many clips in May. How many clips did she sell in all?",
         "answer": "48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72"},
        {"id": "a", "question": "Sam has 3 apples and gets 4 more. How many apples?",
         "answer": "#### 7"},
        {"id": "b", "question": "What is 6 + 2?", "answer": "#### 8"},
    ]
    problems = tmp_path / "seeds.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in seeds))
    out = tmp_path / "synth"
    config = SynthesizeConfig(problems=problems, out=out, teacher=str(tiny_model), count=2, n=2,
                              min_votes=1, min_margin=0, max_tokens=8, dtype="float32",
                              prompt_template="plain")
    manifest = run_synthesize(config)
    kept = [json.loads(x) for x in (out / "problems.jsonl").read_text().splitlines()]
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()] \
        if (out / "rejected.jsonl").exists() else []
    assert sorted(r["id"] for r in kept + rejected) == sorted(
        f"{s['id']}~numbers-{k}" for s in seeds for k in range(2))
    assert {r["label_source"] for r in kept if r["synthetic_from"] == "eq"} == {"equation"}
    assert all(r["reason"] for r in rejected)
    traces = [Trace.model_validate_json(x) for x in
              (out / "traces.jsonl").read_text().splitlines()] if (out / "traces.jsonl").exists() \
        else []
    assert len(traces) == sum(r["votes"] for r in kept if r["label_source"] == "votes")
    assert all(t.teacher == str(tiny_model) and t.sampling.n == 2 for t in traces)
    assert manifest["counts"]["made"] == 6
