"""Resuming training: the run stamp, which checkpoint to resume, the training log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cotdistill.cards import is_identity_file
from cotdistill.infra.files import sha256_file
from cotdistill.train.config import CHECKPOINTS, RUN_STAMP, TrainConfig

# Keys that change how often things are saved or logged, or where, but not the weights.
_NOT_IN_STAMP = ("data", "out", "save_steps", "save_total_limit", "keep_checkpoints",
                 "logging_steps", "eval_steps", "resume", "merge", "compile", "save_dtype",
                 "report_to", "run_name")


def model_fingerprint(model: str | None) -> str | None:
    """A cheap identity for a local model folder: each top-level file's name, size and three
    1 MiB samples (a re-cut or retrained start at the same path differs); None for hub ids."""
    import hashlib

    if model is None or not Path(model).is_dir():
        return None
    digest = hashlib.sha256()
    # A card (README.md) documents the model; evaluate rewrites it (cards.py).
    for file in sorted(p for p in Path(model).iterdir()
                       if p.is_file() and is_identity_file(p.name)):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}\n".encode())
        with open(file, "rb") as fh:
            for offset in sorted({0, max(size // 2 - 2**19, 0), max(size - 2**20, 0)}):
                fh.seek(offset)
                digest.update(fh.read(2**20))
    return digest.hexdigest()


def run_stamp(config: TrainConfig) -> dict[str, Any]:
    """What the checkpoints in out/checkpoints were made from: data, starting models, config."""
    template = getattr(config, "chat_template", None)
    return {
        "data_sha256": [sha256_file(Path(p)) for p in config.data],
        "student_fingerprint": model_fingerprint(config.student),
        "teacher_fingerprint": model_fingerprint(config.teacher),
        # The template file shapes every training sequence; its path alone says too little.
        "chat_template_sha256": sha256_file(Path(template)) if template else None,
        "config": config.model_dump(mode="json", exclude=set(_NOT_IN_STAMP)),
    }


def stamp_difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """None when `old` matches `new`, else a few words naming what changed."""
    if old is None:
        return "they carry no run.json stamp (data and config unknown)"
    if old.get("data_sha256") != new["data_sha256"]:
        return "the training data changed"
    for who in ("student", "teacher"):
        if old.get(f"{who}_fingerprint") != new[f"{who}_fingerprint"]:
            return f"the {who} model's files changed"
    if old.get("chat_template_sha256") != new["chat_template_sha256"]:
        return "the chat template file changed"
    before, after = old.get("config") or {}, new["config"]
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        return "the training config changed (" + ", ".join(
            f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:3]
        ) + (", ..." if len(changed) > 3 else "") + ")"
    return None


def last_checkpoint(out: Path) -> Path | None:
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resumable_checkpoint(out: Path, stamp: dict[str, Any]) -> tuple[Path | None, str | None]:
    """(checkpoint to resume, None), or (None, why the checkpoints there are stale).

    Checkpoints count only if out/checkpoints/run.json says they were made from the same data
    and config: resuming anything else would train on (or just save) a stale model.
    """
    checkpoint = last_checkpoint(out)
    if checkpoint is None:
        return None, None
    stamp_path = out / CHECKPOINTS / RUN_STAMP
    try:
        old = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
    except json.JSONDecodeError:
        old = None
    why = stamp_difference(old, stamp)
    return (None, why) if why else (checkpoint, None)


def start_checkpoints(out: Path, stamp: dict[str, Any], stale: str | None) -> None:
    """Move stale checkpoints aside (kept, never deleted) and stamp the folder for this run."""
    folder = out / CHECKPOINTS
    if stale is not None:
        aside = out / f"{CHECKPOINTS}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
        for extra in range(2, 1000):
            if not aside.exists():
                break
            aside = aside.with_name(f"{aside.name.rsplit('+', 1)[0]}+{extra}")  # same second
        folder.rename(aside)
        print(f"train: not resuming: {stale}; old checkpoints moved to {aside}, starting fresh")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint we resume from: those steps are trained again."""
    if not path.exists():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip()
            and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in kept))


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def is_finished(checkpoint: Path) -> bool:
    """The checkpoint is the last step of its run (transformers saves one at the end)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return 0 < state.get("max_steps", 0) <= state.get("global_step", 0)


def reload_finished(trainer: Any, checkpoint: Path, log_path: Path) -> dict[str, Any]:
    """Load a finished run's final weights instead of resuming it.

    Resuming at the last step is not a no-op in transformers 5.19: its loop trains one more
    step before it checks `max_steps`. The metrics come from the run's own log.
    """
    from transformers import TrainerState

    print(f"train: {checkpoint} is the end of this same training; saving it, no new steps")
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    metrics: dict[str, Any] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            metrics.update({k: entry[k] for k in ("train_loss", "train_runtime") if k in entry})
    return metrics
