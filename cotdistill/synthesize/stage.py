"""The synthesize stage: new labelled problems from seed problems.

    cotdistill synthesize --problems seeds.jsonl --out runs/synth --strategy numbers --count 4 \\
        --decontaminate data/test.jsonl

Writes `problems.jsonl` (generate-ready, with provenance), `rejected.jsonl` (every made problem
set aside, with its reason), `traces.jsonl` (the teacher samples that agree with a vote label,
in generate's format, so they are not paid for twice), `written.jsonl` (problems the teacher
wrote, kept for a resume) and `manifest.json` last. A rerun after a kill skips done ids.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from cotdistill.backends import Backend, make_backend
from cotdistill.backends.sizing import Workload
from cotdistill.config import SamplingConfig
from cotdistill.errors import InputError
from cotdistill.infra.files import append_durably, dump_line, sha256_file, write_manifest
from cotdistill.infra.locking import locks_output
from cotdistill.infra.progress import progress_bar
from cotdistill.prompts import load_template
from cotdistill.synthesize.config import (
    PROBLEMS,
    REJECTED,
    TRACES,
    WRITTEN,
    WRITTEN_FILE,
    Rejected,
    SynthesizeConfig,
)
from cotdistill.synthesize.dedup import Novelty
from cotdistill.synthesize.files import evaluation_questions, read_seeds, recover
from cotdistill.synthesize.label import label_by_votes
from cotdistill.synthesize.variants import Candidate, Seed, number_variants
from cotdistill.synthesize.writer import read_written, writing_prompts


def _check(config: SynthesizeConfig) -> None:
    if config.problems is None or config.out is None:
        raise InputError("synthesize needs --problems and --out")
    if config.min_votes > config.n:
        raise InputError(f"min_votes {config.min_votes} is more than n {config.n}: no problem "
                         "could ever be labelled by votes", field="min_votes")
    if config.temperature == 0 and config.n > 1:
        raise InputError("n > 1 greedy samples are all the same: set temperature > 0",
                         field="temperature")
    for strategy in dict.fromkeys(config.strategy):
        if strategy in WRITTEN:
            load_template(f"synth_{strategy}")  # a missing prompt file fails before the engine


def _rejected(candidate: Candidate, reason: str) -> Rejected:
    return Rejected(id=candidate.id, question=candidate.question, reason=reason,
                    synthetic_from=candidate.synthetic_from, strategy=candidate.strategy)


def _write(out: Path, name: str, rows: list[Any]) -> None:
    if rows:
        with open(out / name, "a", encoding="utf-8") as fh:
            append_durably(fh, (dump_line(r) for r in rows))


class _LazyBackend:
    """The configured backend, started on first use only (a rerun with nothing left to label
    or write loads no model)."""

    def __init__(self, config: SynthesizeConfig, backend: Backend | None) -> None:
        from cotdistill.models import resolve_model

        self.config, self.backend, self.owned, self.model = config, backend, backend is None, None
        if backend is not None:
            self.teacher = config.teacher or backend.name
        elif config.backend == "openai":
            self.backend = make_backend("openai", config.teacher, config)  # type: ignore[arg-type]
            self.teacher = config.teacher or self.backend.model  # type: ignore[attr-defined]
        else:
            self.model, self.teacher = resolve_model(config.teacher)

    def get(self, prompts: list[list[Any]]) -> Backend:
        if self.backend is None:
            workload = Workload.of(min(self.config.batch_size, max(len(prompts), 1)),
                                   self.config.n, self.config.max_tokens, prompts[:64])
            self.backend = make_backend(self.config.backend, self.model,  # type: ignore[arg-type]
                                        self.config, workload=workload)
        return self.backend

    def close(self) -> None:
        if self.owned and self.backend is not None:
            self.backend.close()


def _written(seeds: list[Seed], config: SynthesizeConfig, earlier: dict[str, dict[str, Any]],
             engine: _LazyBackend) -> list[Candidate]:
    """The teacher-written candidates of every strategy, reusing those written before."""
    made = []
    for strategy in dict.fromkeys(s for s in config.strategy if s in WRITTEN):
        asked = writing_prompts(seeds, strategy, config.count)
        todo = [(c, m) for c, m in asked if c.id not in earlier and m is not None]
        if todo:
            once = SamplingConfig(**{**config.model_dump(include=set(SamplingConfig.model_fields)),
                                     "n": 1})
            bar = progress_bar(len(todo), f"synthesize: teacher writes ({strategy})",
                               unit="problem", leave=False)
            prompts = [m for _, m in todo]
            replies = engine.get(prompts).generate(prompts, once, progress=bar.update)
            bar.close()
            rows = []
            for (candidate, _), completions in zip(todo, replies, strict=True):
                question, reason = read_written(completions[0].text)
                rows.append({"id": candidate.id, "question": question, "reason": reason})
                earlier[candidate.id] = rows[-1]
            _write(Path(config.out), WRITTEN_FILE, rows)  # type: ignore[arg-type]
        for candidate, _ in asked:
            if candidate.id in earlier:
                candidate.question = earlier[candidate.id]["question"]
                candidate.reject = earlier[candidate.id]["reason"]
            made.append(candidate)
    return made


def make_candidates(seeds: list[Seed], config: SynthesizeConfig, novelty: Novelty,
                    written: list[Candidate]) -> list[Candidate]:
    """Every made problem, in a fixed order, with its reason when it is not new."""
    made = [c for seed in seeds for c in number_variants(seed, config.count, config.synth_seed)
            ] if "numbers" in config.strategy else []
    for candidate in made + written:
        if candidate.reject is None:
            candidate.reject = novelty.why_not(candidate.question)
            if candidate.reject is None:
                novelty.add(candidate.question, f"made problem {candidate.id}")
    return made + written


@locks_output("synthesize")
def run_synthesize(config: SynthesizeConfig, backend: Backend | None = None) -> dict[str, Any]:
    """Make (or finish making) problems.jsonl in `config.out`; returns the manifest.

    Without `backend`, the configured one is built when first needed (after every input check)
    and closed at the end; a backend passed in is used as it is and left open."""
    started = time.time()
    _check(config)
    seeds = read_seeds(config)
    evaluation = evaluation_questions(config.decontaminate)
    novelty = Novelty((s.question for s in seeds), evaluation, config.decontaminate_ngram,
                      config.near_duplicate)
    template = load_template(config.prompt_template)
    out = Path(config.out)  # type: ignore[arg-type]
    if config.dry_run:
        made = make_candidates(seeds, config, novelty, [])
        for c in made[:5]:
            print(f"{c.id}: {c.question}\n  -> {c.answer or 'by votes'} {c.reject or ''}")
        print(f"synthesize: dry run, {len(made)} problems made by numbers (written ones need "
              "the teacher)")
        return {"made": len(made)}
    out.mkdir(parents=True, exist_ok=True)
    kept, set_aside, earlier = recover(out, (PROBLEMS, REJECTED, TRACES, WRITTEN_FILE))
    engine = _LazyBackend(config, backend)
    try:
        written = _written(seeds, config, earlier, engine)
        made = make_candidates(seeds, config, novelty, written)
        todo = [c for c in made if c.id not in kept and c.id not in set_aside]
        if (out / "manifest.json").exists() and todo:
            (out / "manifest.json").unlink()  # incomplete again until this run finishes
        _write(out, REJECTED, [_rejected(c, c.reject) for c in todo if c.reject is not None])
        _write(out, PROBLEMS, [_exact_row(c) for c in todo if c.reject is None
                               and c.answer is not None and not config.vote_all])
        voting = [c for c in todo if c.reject is None and (c.answer is None or config.vote_all)]
        if voting:
            prompts = [template.render(c.question) for c in voting]
            teacher_backend = engine.get(prompts)
            bar = progress_bar(len(voting) * config.n, f"synthesize: votes of {engine.teacher}")
            try:
                for rows, traces in label_by_votes(voting, teacher_backend, template, config,
                                                   engine.teacher, progress=bar.update):
                    _write(out, TRACES, traces)  # before the rows: a resume then cuts orphans
                    _write(out, PROBLEMS, [r for r in rows if not isinstance(r, Rejected)])
                    _write(out, REJECTED, [r for r in rows if isinstance(r, Rejected)])
            finally:
                bar.close()
    finally:
        engine.close()
    return _finish(config, out, made, engine.teacher, started, novelty)


def _exact_row(candidate: Candidate) -> dict[str, Any]:
    return {"id": candidate.id, "question": candidate.question, "answer": candidate.answer,
            "synthetic_from": candidate.synthetic_from, "strategy": candidate.strategy,
            "label_source": "equation"}


def _finish(config: SynthesizeConfig, out: Path, made: list[Candidate], teacher: str,
            started: float, novelty: Novelty) -> dict[str, Any]:
    for name in (PROBLEMS, REJECTED, TRACES):  # written even when empty: later stages read them
        (out / name).touch()
    kept, set_aside, _ = recover(out, (PROBLEMS, REJECTED, TRACES, WRITTEN_FILE))
    reasons = Counter(_reason_kind(r["reason"]) for r in set_aside.values())
    voted = [r for r in kept.values() if r.get("vote_passes") is not None]
    passed = [r for r in voted if r["vote_passes"]]
    counts = {
        "seeds": len({c.synthetic_from for c in made}), "made": len(made), "kept": len(kept),
        "rejected": len(set_aside),
        "kept_by_label": dict(Counter(r["label_source"] for r in kept.values())),
        "kept_by_strategy": dict(Counter(r["strategy"] for r in kept.values())),
        "rejected_by_reason": dict(reasons),
        "traces": _lines(out / TRACES),
    }
    if voted:  # vote_all: how often a vote label that passes is the exact one
        counts["vote_precision"] = (sum(bool(r["vote_agrees"]) for r in passed) / len(passed)
                                    if passed else None)
        counts["vote_yield"] = len(passed) / len(voted)
    manifest = write_manifest(
        out, stage="synthesize", config=config,
        inputs={str(p): sha256_file(Path(p)) for p in [config.problems, *config.decontaminate]},
        counts=counts, started=started,
        extra={"teacher": teacher, "near_duplicate_threshold": novelty.threshold,
               "decontaminate_ngram": novelty.ngram},
    )
    print(f"synthesize: {len(made)} made from {counts['seeds']} seeds, {len(kept)} kept "
          f"({counts['kept_by_label']}), {len(set_aside)} set aside -> {out / PROBLEMS}")
    return manifest


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as fh:
        return sum(1 for _ in fh)


def _reason_kind(reason: str) -> str:
    """A reason without its numbers, for the manifest's counts."""
    return reason.split(" (")[0].split(":")[0]
