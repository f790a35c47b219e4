"""`synthesize:` in a run: new problems from the training problems, before generate.

Planned by `plan_synthesize` (called from `run/plan.py`): a synthesize step on the run's training
problems (the seeds), then a `synth_problems` step that writes the problems generate samples, the
seeds and the synthetic problems (`mode: join`) or the synthetic ones alone (`mode: replace`), in
the one format the refinement files use (`normalized_fields`). The synthetic problems are
decontaminated against the run's evaluation problems and its validation split, added to the
section's own `decontaminate` by the rule of nested sections (`config.overlay`).

The unfiltered control is never drawn from synthetic problems: `seed_traces` writes the filter's
kept and rejected traces of the seed problems only, and the control draws from them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from cotdistill.config import EngineConfig, StrictModel, overlay
from cotdistill.errors import InputError
from cotdistill.infra.files import dump_line, sha256_file, write_jsonl, write_manifest
from cotdistill.problems import ProblemFields, load_problems
from cotdistill.run.config import PROBLEM_KEYS, ProblemFileKeys
from cotdistill.run.refine.stages import normalized_fields, problem_row, rows_of
from cotdistill.run.steps import Step, owned, section_of

if TYPE_CHECKING:
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.run.config import PipelineConfig

MODES = ("join", "replace")
# Keys of the synthesize section that `run` sets: the wiring, and how the seeds are read
# (generate's keys: the seeds are the run's training problems).
SET_BY_RUN = ("problems", "out", "teacher", "question_field", "answer_field", "id_field")
# generate's resolved keys the votes are sampled with unless the section says otherwise: the
# engine, the prompt and how long a trace may be. Not n or temperature: votes have their own.
INHERITED = (*EngineConfig.model_fields, "max_tokens", "stop", "top_p", "prompt_template",
             "think_start", "think_end")


class SynthProblemsConfig(ProblemFileKeys):
    """The problems generate samples when the run has a `synthesize:` section."""

    seeds: Path = Field(description="The run's training problems (after any validation split).")
    synthetic: Path = Field(description="The synthesize step's problems.jsonl.")
    mode: Literal["join", "replace"] = Field(
        description="join: the seeds, then the synthetic problems; replace: synthetic only.")
    limit: int | None = Field(description="Only the first K seeds (generate's limit).")
    out: Path = Field(description="Folder for problems.jsonl.")


class SeedTracesConfig(StrictModel):
    """The filter's traces of the seed problems only: what the unfiltered control draws from."""

    kept: Path
    rejected: Path
    synthetic: Path = Field(description="The synthesize step's problems.jsonl (ids left out).")
    out: Path


def plan_synthesize(config: PipelineConfig, generate: GenerateConfig, seeds: GenerateConfig,
                    validation: Path | None, out: Path, source: Any
                    ) -> tuple[list[Step], GenerateConfig, Path]:
    """The synthesize and synth_problems steps, generate moved onto their problems, and the
    synthetic problems file. `seeds` is generate before any validation split (the seeds keep
    their equations; a variant of a validation problem is refused by decontamination),
    `generate` the one that samples (on the split's training problems, if any)."""
    from cotdistill.synthesize.config import PROBLEMS, SynthesizeConfig

    section = dict(config.synthesize or {})
    mode = section.pop("mode", "join")
    if mode not in MODES:
        raise InputError(f"mode must be join or replace, not {mode!r}", file=source,
                         field="synthesize.mode")
    owned(section, SET_BY_RUN, "synthesize")
    if seeds.question_template is not None:
        raise InputError("synthesize reads the seeds' questions as they are; it cannot apply "
                         "generate's question_template", file=source,
                         field="generate.question_template")
    folder = out / "synthesize"
    inherited = {k: getattr(generate, k) for k in INHERITED if k in SynthesizeConfig.model_fields}
    against = [config.eval_problems, *([validation] if validation else [])]
    synth = section_of(
        SynthesizeConfig,
        overlay({**inherited, "limit": seeds.limit, **section},
                {"problems": seeds.problems, "out": folder, "teacher": config.teacher,
                 "question_field": seeds.question_field, "answer_field": seeds.answer_field,
                 "id_field": seeds.id_field, "decontaminate": against}),
        "synthesize", source,
    )
    teacher_dep = [Path(config.teacher)] if config.teacher and Path(config.teacher).exists() else []
    synthetic = folder / PROBLEMS
    joined_dir = out / "synthesize" / "problems"
    joined = SynthProblemsConfig(
        seeds=Path(generate.problems), synthetic=synthetic, mode=mode,  # type: ignore[arg-type]
        limit=generate.limit, out=joined_dir, **{k: getattr(generate, k) for k in PROBLEM_KEYS})
    steps = [
        Step("synthesize", "synthesize", folder, synth,
             [Path(synth.problems), *synth.decontaminate, *teacher_dep]),  # type: ignore[arg-type]
        Step("synthesize: problems", "synth_problems", joined_dir, joined,
             [joined.seeds, synthetic]),
    ]
    # generate's limit was applied to the seeds: it must not cut the synthetic problems off.
    moved = generate.model_copy(update={
        "problems": joined_dir / "problems.jsonl", "limit": None,
        **normalized_fields(generate.category_field is not None)})
    return steps, moved, synthetic


def plan_seed_traces(name: str, filter_dir: Path, synthetic: Path, control_dir: Path) -> Step:
    folder = control_dir / "seed-traces"
    traces = SeedTracesConfig(kept=filter_dir / "kept.jsonl",
                              rejected=filter_dir / "rejected.jsonl", synthetic=synthetic,
                              out=folder)
    return Step(f"{name}: seed traces", "seed_traces", folder, traces,
                [traces.kept, traces.rejected, synthetic])


# --- the file stages ---------------------------------------------------------------------------


def _synthetic_rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in rows_of(path)] if Path(path).is_file() else []


def run_synth_problems(config: SynthProblemsConfig) -> dict[str, Any]:
    """Write problems.jsonl: the seeds (join) then the synthetic problems, one format; a
    synthetic problem takes its seed's category."""
    started = time.time()
    seeds = load_problems(config.seeds, ProblemFields.of(config))[: config.limit]
    category = {p.id: p.category for p in seeds}
    rows = [problem_row(p) for p in seeds] if config.mode == "join" else []
    ids = {row["id"] for row in rows}
    synthetic = 0
    for row in _synthetic_rows(config.synthetic):
        if row["id"] in ids:
            raise InputError(f"synthetic problem id {row['id']!r} is also a seed's",
                             file=config.synthetic, field="id")
        made = {"id": row["id"], "question": row["question"], "answer": row["answer"]}
        if category.get(row.get("synthetic_from")) is not None:
            made["category"] = category[row["synthetic_from"]]
        rows.append({**made, "origin": "synthetic",
                     **{k: row[k] for k in ("synthetic_from", "strategy", "label_source")
                        if k in row}})
        ids.add(row["id"])
        synthetic += 1
    if not rows:
        raise InputError("no problems to generate from: synthesize kept none (mode: replace)",
                         file=config.synthetic)
    config.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(config.out / "problems.jsonl", rows)
    return write_manifest(
        config.out, stage="synth_problems", config=config,
        inputs={str(p): sha256_file(p) for p in (config.seeds, config.synthetic)},
        counts={"seeds": len(rows) - synthetic, "synthetic": synthetic, "problems": len(rows)},
        started=started,
    )


def run_seed_traces(config: SeedTracesConfig) -> dict[str, Any]:
    """kept.jsonl, rejected.jsonl and sft.jsonl of the seed problems' traces (the control draws
    as many traces as the filter kept of the seeds, from the seeds' traces)."""
    from cotdistill.filter.decide import sft_row

    started = time.time()
    made = {row["id"] for row in _synthetic_rows(config.synthetic)}
    config.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in ("kept", "rejected"):
        rows = [row for _, row in rows_of(getattr(config, name))
                if row.get("problem_id") not in made]
        write_jsonl(config.out / f"{name}.jsonl", rows)
        counts[name] = len(rows)
        if name == "kept":
            (config.out / "sft.jsonl").write_text(
                "".join(dump_line(sft_row(r)) for r in rows), encoding="utf-8")
    return write_manifest(
        config.out, stage="seed_traces", config=config,
        inputs={str(p): sha256_file(p) for p in (config.kept, config.rejected, config.synthetic)},
        counts=counts, started=started,
    )
