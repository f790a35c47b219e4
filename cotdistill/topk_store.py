"""The teacher's top-K log-probabilities beside a traces file, and their use in training.

`generate --topk-logprobs K` writes, next to `traces.jsonl`, a folder `topk/`:

    topk/meta.json                      K, teacher, tokenizer name, vocabulary size and hash
    topk/shard-000007.ids.npy           (tokens, K) int32     candidate ids, best first
    topk/shard-000007.logprobs.npy      (tokens, K) float16   their raw log-probabilities
    topk/shard-000007.sampled.npy       (tokens,)   int32     the sampled token
    topk/shard-000007.sampled_lp.npy    (tokens,)   float16   its log-probability
    topk/shard-000007.json              rows: [problem_id, sample_index, offset, length]

6 * K + 6 bytes per completion token (126 at K = 20), read back memory-mapped. One shard per
generation batch, written (and fsynced) before that batch's lines are appended to
traces.jsonl; the shard's .json is written last and marks it complete. On resume `reconcile`
drops rows whose trace is not in traces.jsonl (a kill between the two writes, or a problem
cut back to regenerate), so every trace has exactly one row. Rows are keyed by
(problem_id, sample_index), which the filter carries into sft.jsonl.

    writer = TopkWriter(out / "topk")                  # generate
    writer.write([(trace, completion.topk), ...])
    store = TopkStore.open([gen_dir])                  # train
    table = build_table(store, rows, keys, vocab_size)  # aligned to the student's tokens
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError

FOLDER = "topk"


META = "meta.json"


ARRAYS = ("ids", "logprobs", "sampled", "sampled_lp")


Key = tuple[str, int]


def bytes_per_token(k: int) -> int:
    """ids int32 + logprobs float16 per candidate, plus the sampled id and logprob."""
    return k * (4 + 2) + 4 + 2


def vocab_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """Name, size and a hash of the token -> id map: what "the same tokenizer" means here."""
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return {"tokenizer": getattr(tokenizer, "name_or_path", None),
            "vocab_size": len(tokenizer), "vocab_sha256": digest}


def _fsync_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _save_npy(path: Path, array: Any) -> None:
    import numpy as np

    _fsync_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in folder.glob("shard-*.json"))


class TopkWriter:
    """Appends shards to `folder`; `meta` (K, tokenizer fingerprint) is written once."""

    def __init__(self, folder: Path, k: int, meta: dict[str, Any] | None) -> None:
        """`meta` None: add to an existing folder as it is (reconcile's rewrites)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.k = k
        meta_path = self.folder / META
        if meta is None:
            pass
        elif meta_path.exists():
            meta = {"k": k, **meta}
            old = json.loads(meta_path.read_text())
            for key in ("k", "vocab_sha256"):
                if old.get(key) != meta.get(key):
                    raise InputError(
                        f"existing top-k logprobs were stored with {key} {old.get(key)!r}, "
                        f"this run gives {meta.get(key)!r}; use another --out",
                        file=meta_path, field=key)
        else:
            meta = {"k": k, "format": 1, **meta, "bytes_per_token": bytes_per_token(k)}
            text = json.dumps(meta, indent=2).encode()
            _fsync_write(meta_path, lambda fh: fh.write(text))
        names = shard_names(self.folder)
        self.next = int(names[-1].split("-")[1]) + 1 if names else 0

    def write_batch(self, traces: Sequence[Any], completions: Sequence[Any]) -> None:
        """generate's hook: one shard for a batch of traces and their completions."""
        self.write(((t.problem_id, t.sample_index), c.topk)
                   for t, c in zip(traces, completions, strict=True))

    def write(self, rows: Iterable[tuple[Key, Any]]) -> None:
        """One shard for `rows` of ((problem_id, sample_index), TopkTokens)."""
        import numpy as np

        rows = list(rows)
        if not rows:
            return
        index, parts = [], {name: [] for name in ARRAYS}
        offset = 0
        for (problem_id, sample_index), tokens in rows:
            if tokens is None or tokens.ids.shape[1] != self.k:
                raise RuntimeError(f"no top-{self.k} logprobs for {problem_id}#{sample_index}")
            length = int(tokens.sampled.shape[0])
            index.append([problem_id, int(sample_index), offset, length])
            offset += length
            for name in ARRAYS:
                parts[name].append(getattr(tokens, name))
        name = f"shard-{self.next:06d}"
        self.next += 1
        dtypes = {"ids": np.int32, "logprobs": np.float16, "sampled": np.int32,
                  "sampled_lp": np.float16}
        for array in ARRAYS:
            _save_npy(self.folder / f"{name}.{array}.npy",
                      np.concatenate(parts[array]).astype(dtypes[array], copy=False))
        _fsync_write(self.folder / f"{name}.json",
                     lambda fh: fh.write(json.dumps({"rows": index}).encode()))


def _remove_shard(folder: Path, name: str) -> None:
    (folder / f"{name}.json").unlink(missing_ok=True)  # first: the shard stops existing
    for array in ARRAYS:
        (folder / f"{name}.{array}.npy").unlink(missing_ok=True)


def reconcile(folder: Path, keep: set[Key], k: int) -> dict[str, int]:
    """Make the shards hold exactly one row per key in `keep` (the traces on disk), or refuse.

    Rows of traces no longer in traces.jsonl are dropped (their shard rewritten), unfinished
    shards (arrays without their .json) deleted. A kept trace without a row is an error: its
    top-k logprobs were never captured (an earlier run without --topk-logprobs).
    """
    import numpy as np

    folder = Path(folder)
    if not folder.is_dir():
        if keep:
            raise InputError(f"{len(keep)} existing traces have no top-k logprobs (generated "
                             "without --topk-logprobs); use another --out", file=folder)
        return {"dropped": 0, "kept": 0}
    names = shard_names(folder)
    for stray in folder.glob("shard-*.npy"):
        if stray.name.split(".")[0] not in names:
            stray.unlink()
    for tmp in folder.glob("*.tmp"):
        tmp.unlink()
    seen: set[Key] = set()
    dropped = 0
    writer = None
    for name in names:
        rows = json.loads((folder / f"{name}.json").read_text())["rows"]
        good = [r for r in rows if (r[0], r[1]) in keep and (r[0], r[1]) not in seen]
        seen.update((r[0], r[1]) for r in good)
        if len(good) == len(rows):
            continue
        dropped += len(rows) - len(good)
        if good:
            arrays = {a: np.load(folder / f"{name}.{a}.npy", mmap_mode="r") for a in ARRAYS}
            writer = writer or TopkWriter(folder, k, None)
            writer.write(((r[0], r[1]), _Slice(arrays, r[2], r[3])) for r in good)
        _remove_shard(folder, name)
    missing = keep - seen
    if missing:
        example = sorted(missing)[0]
        raise InputError(f"{len(missing)} existing traces have no top-k logprobs (e.g. "
                         f"{example[0]}#{example[1]}); use another --out", file=folder)
    return {"dropped": dropped, "kept": len(seen)}


class _Slice:
    """Rows [offset, offset + length) of a shard, shaped like backends.TopkTokens."""

    def __init__(self, arrays: dict[str, Any], offset: int, length: int) -> None:
        for name in ARRAYS:
            setattr(self, name, arrays[name][offset:offset + length])


@dataclass
class TopkStore:
    """Every shard of one or more `topk/` folders, memory-mapped, indexed by key."""

    meta: dict[str, Any]
    index: dict[Key, tuple[int, int, int]] = field(default_factory=dict)  # shard, offset, len
    shards: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, sources: Sequence[Path]) -> TopkStore:
        """`sources`: generate output folders (holding topk/), traces.jsonl files or topk/."""
        import numpy as np

        if not sources:
            raise InputError("--kd offline-topk needs --topk-from (generate output folders "
                             "made with --topk-logprobs)", field="topk_from")
        store: TopkStore | None = None
        origin: dict[Key, Path] = {}
        for source in map(Path, sources):
            folder = source.parent / FOLDER if source.is_file() else source
            if folder.name != FOLDER and (folder / FOLDER).is_dir():
                folder = folder / FOLDER
            meta_path = folder / META
            if not meta_path.exists():
                raise InputError("no top-k logprobs here (generate with --topk-logprobs K)",
                                 file=source, field="topk_from")
            meta = json.loads(meta_path.read_text())
            if store is None:
                store = cls(meta=meta)
            for key in ("k", "vocab_sha256"):
                if meta.get(key) != store.meta.get(key):
                    raise InputError(f"top-k folders disagree on {key}", file=meta_path,
                                     field="topk_from")
            for name in shard_names(folder):
                shard = len(store.shards)
                store.shards.append(
                    {a: np.load(folder / f"{name}.{a}.npy", mmap_mode="r") for a in ARRAYS})
                for problem_id, sample_index, offset, length in json.loads(
                        (folder / f"{name}.json").read_text())["rows"]:
                    key = (problem_id, sample_index)
                    if key in store.index:
                        raise InputError(f"top-k rows for {problem_id}#{sample_index} appear "
                                         f"twice (also in {origin[key]})", file=folder,
                                         field="topk_from")
                    origin[key] = folder
                    store.index[key] = (shard, offset, length)
        assert store is not None
        return store

    def get(self, key: Key) -> dict[str, Any] | None:
        where = self.index.get(key)
        if where is None:
            return None
        shard, offset, length = where
        return {a: self.shards[shard][a][offset:offset + length] for a in ARRAYS}


def check_vocabulary(meta: dict[str, Any], tokenizer: Any, source: str) -> None:
    """The student must read token ids as the teacher wrote them: same token -> id map."""
    if meta.get("vocab_sha256") is None:
        raise InputError("the top-k logprobs record no teacher vocabulary, so the student's "
                         "cannot be checked against it", file=source, field="topk_from")
    mine = vocab_fingerprint(tokenizer)
    if mine["vocab_sha256"] != meta["vocab_sha256"]:
        raise InputError(
            f"the student's tokenizer ({mine['tokenizer']}, {mine['vocab_size']} tokens) is not "
            f"the teacher's ({meta.get('tokenizer')}, {meta.get('vocab_size')} tokens): "
            "stored top-k token ids would mean other tokens", file=source, field="topk_from")


# ---------------------------------------------------------------- generate's side


def teacher_meta(model: str | None, trust_remote_code: bool) -> dict[str, Any]:
    """The teacher's tokenizer fingerprint for meta.json (name, size, vocabulary hash)."""
    if model is None:
        return {"tokenizer": None, "vocab_size": None, "vocab_sha256": None}
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the teacher's tokenizer to record it with the top-k "
                         f"logprobs: {exc}", file=model, field="topk_logprobs") from exc
    return vocab_fingerprint(tokenizer)
