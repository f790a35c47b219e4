"""Generate in shards: one config per shard, run by an executor, coverage checked, traces merged.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.generate.adaptive import merge_summaries
from cotdistill.generate.config import TRACES, GenerateConfig
from cotdistill.generate.executors import make_executor
from cotdistill.infra.files import sha256_file, write_manifest


def shard_dir(out: Path, index: int, count: int) -> Path:
    return Path(out) / f"shard-{index}-of-{count}"


def shard_configs(config: GenerateConfig) -> list[GenerateConfig]:
    """One config per shard: `shard: I/N`, its own folder, run in place by whoever gets it.

    Paths are made absolute: a Ray worker does not start in this process's directory.
    """
    count = config.shards
    out = Path(config.out).resolve()  # type: ignore[arg-type]
    update: dict[str, Any] = {"problems": Path(config.problems).resolve(),  # type: ignore[arg-type]
                              "executor": "local", "shards": 1}
    if config.teacher and Path(config.teacher).exists():
        update["teacher"] = str(Path(config.teacher).resolve())
    if config.base_urls_file is not None:
        update["base_urls_file"] = Path(config.base_urls_file).resolve()
    return [
        config.model_copy(update={**update, "shard": f"{i}/{count}",
                                  "out": shard_dir(out, i, count)})
        for i in range(count)
    ]


def check_config(config: GenerateConfig) -> None:
    """What sharded generation cannot do, said before anything starts."""
    if config.problems is None or config.out is None:
        raise InputError("generate needs --problems and --out")
    if config.shard is not None:
        raise InputError("--shard I/N runs one shard here; --shards N runs all N: give one",
                         field="shard")
    if config.topk_logprobs:
        raise InputError("topk_logprobs is captured by single-process runs only (run the shards "
                         "with --shard I/N, one folder each)", field="topk_logprobs")


def run_sharded(config: GenerateConfig, backend: Any = None) -> dict[str, Any]:
    """Run `config.shards` shards on `config.executor`, check them, merge; returns a manifest.

    `backend` (local executor only): one engine for all shards, left open for the caller."""
    from cotdistill.generate.config import problem_fields, select_problems
    from cotdistill.problems import load_problems

    started = time.time()
    check_config(config)
    # Bad input stops here, before any shard starts anywhere.
    problems = select_problems(load_problems(config.problems, problem_fields(config)), config)
    executor = make_executor(config, backend)
    shards = shard_configs(config)
    print(f"generate: {len(problems)} problems in {len(shards)} shards on {executor.name}")
    manifests = executor.run(shards)
    dirs = [Path(s.out) for s in shards]  # type: ignore[arg-type]
    adaptive = config.until_correct is not None
    check_coverage([p.id for p in problems], dirs, None if adaptive else config.n)
    out = Path(config.out)  # type: ignore[arg-type]
    samples = merge_traces(dirs, out / TRACES)
    manifest = write_manifest(
        out,
        stage="generate",
        config=config,
        inputs={str(config.problems): sha256_file(Path(config.problems))},  # type: ignore[arg-type]
        counts={"problems": len(problems), "samples": samples,
                "new_samples": sum(m["counts"]["new_samples"] for m in manifests),
                "output_tokens": sum(m["counts"]["output_tokens"] for m in manifests)},
        started=started,
        extra={"executor": executor.name,
               "teacher": manifests[0].get("teacher") if manifests else None,
               "shards": [{"folder": d.name, "counts": m["counts"],
                           "wall_time_s": m.get("wall_time_s")}
                          for d, m in zip(dirs, manifests, strict=True)],
               **({"adaptive": merge_summaries([m["adaptive"] for m in manifests])}
                  if adaptive else {})},
    )
    print(f"generate: {len(shards)} shards merged, {len(problems)} problems, {samples} samples "
          f"-> {out / TRACES}")
    return manifest


def check_coverage(problem_ids: Sequence[str], dirs: Sequence[Path], n: int | None) -> None:
    """Every problem in exactly one shard, with samples 0..n-1 exactly once; else InputError.

    `n` None (`--until-correct`): each problem's samples are 0..m-1 once each, for its own m.
    """
    where: dict[str, Path] = {}
    wanted = set(problem_ids)
    for folder in dirs:
        samples: dict[str, list[int]] = defaultdict(list)
        path = folder / TRACES
        if not path.exists():
            raise InputError("shard wrote no traces", file=path)
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                row = json.loads(line)
                samples[row["problem_id"]].append(row["sample_index"])
                if row["problem_id"] not in wanted:
                    raise InputError(f"problem {row['problem_id']!r} was not asked for",
                                     file=path, line=lineno, field="problem_id")
        for pid, indices in samples.items():
            if pid in where:
                raise InputError(f"problem {pid!r} is in two shards ({where[pid]} and {path})",
                                 file=path, field="problem_id")
            where[pid] = path
            expected = len(indices) if n is None else n
            if sorted(indices) != list(range(expected)):
                raise InputError(f"problem {pid!r} has samples {sorted(indices)}, expected "
                                 f"0..{expected - 1} once each", file=path, field="sample_index")
    missing = [pid for pid in problem_ids if pid not in where]
    if missing:
        raise InputError(f"{len(missing)} problems are in no shard (first: {missing[0]!r})",
                         file=dirs[0].parent if dirs else None)


def merge_traces(dirs: Sequence[Path], path: Path) -> int:
    """Concatenate the shards' traces into `path` (atomically); returns the line count."""
    tmp = path.with_suffix(".jsonl.tmp")
    lines = 0
    with open(tmp, "w", encoding="utf-8") as out:
        for folder in dirs:
            with open(folder / TRACES, encoding="utf-8") as fh:
                for line in fh:
                    out.write(line)
                    lines += 1
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return lines
