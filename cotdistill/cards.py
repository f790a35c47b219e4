"""Hugging Face cards: the `README.md` (YAML header + markdown body) that `filter` writes beside
`sft.jsonl` (a dataset card) and `train` writes in a student folder (a model card), to which
`evaluate` adds its measured rows (`model-index`).

    meta, body = dataset_card(report=..., sft_rows=..., config=..., sources=..., ...)
    write_card(out / CARD, meta, body)
    add_model_index(student_dir, "student", rows)   # evaluate; only in folders train made

A card is documentation, never part of a model's identity: the hashes that decide reuse
(evaluate's sample cache, `run`'s stamps, the adapter-merge cache, train's checkpoints) skip
`CARD` (see `is_identity_file`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CARD = "README.md"

# Files in a model folder that say how it was made, not what it computes.
NOT_IDENTITY = frozenset({CARD, "manifest.json", "pipeline.json", "train_log.jsonl", ".lock"})


def is_identity_file(name: str) -> bool:
    """Whether a top-level file of a model folder belongs to the model (weights, config,
    tokenizer, code) rather than to its paperwork (card, manifests, logs)."""
    return name not in NOT_IDENTITY


# --- reading and writing ------------------------------------------------------------------------


def render_card(meta: dict[str, Any], body: str) -> str:
    import yaml

    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{header}---\n\n{body.rstrip()}\n"


def read_card(path: Path) -> tuple[dict[str, Any], str]:
    """(YAML header, body) of a card; ({}, text) when it has no header."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    if text.startswith("---\n"):
        header, sep, body = text[4:].partition("\n---\n")
        if sep:
            meta = yaml.safe_load(header) or {}
            if isinstance(meta, dict):
                return meta, body.lstrip("\n")
    return {}, text


def write_card(path: Path, meta: dict[str, Any], body: str) -> None:
    """Write atomically: a reader never sees half a card."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_card(meta, body), encoding="utf-8")
    os.replace(tmp, path)


# --- licenses -----------------------------------------------------------------------------------

_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING")
# First words of common license texts -> the Hub's license identifiers.
_LICENSE_TEXTS = (
    ("mit license", "mit"),
    ("apache license", "apache-2.0"),
    ("creative commons attribution-sharealike 4.0", "cc-by-sa-4.0"),
    ("creative commons attribution 4.0", "cc-by-4.0"),
    ("attribution 4.0 international", "cc-by-4.0"),
    ("attribution-sharealike 4.0", "cc-by-sa-4.0"),
    ("cc0", "cc0-1.0"),
    ("bsd 3-clause", "bsd-3-clause"),
    ("gnu general public license", "gpl-3.0"),
)


def detect_license(problems: Path | str | None) -> tuple[str, str]:
    """(license id, where it came from) for a problem set: a `license` key in a manifest.json or
    a dataset card beside it, else a LICENSE file beside it; ("other", why) when none says."""
    if problems is None:
        return "other", "the problems file is unknown"
    path = Path(problems)
    folder = path if path.is_dir() else path.parent
    for name in ("manifest.json", CARD):
        file = folder / name
        if not file.is_file():
            continue
        try:
            meta = json.loads(file.read_text()) if name.endswith(".json") else read_card(file)[0]
        except (OSError, ValueError):
            continue
        value = meta.get("license") if isinstance(meta, dict) else None
        if isinstance(value, str) and value.strip():
            return value.strip().lower(), f"the `license` field of {file}"
    for name in _LICENSE_FILES:
        file = folder / name
        if file.is_file():
            head = " ".join(file.read_text(errors="replace").lower().split())[:400]
            for words, spdx in _LICENSE_TEXTS:
                if words in head:
                    return spdx, str(file)
            return "other", f"{file} (not a license this tool recognises; read it)"
    return "other", f"no license found beside {path} (no LICENSE file, no `license` field)"


def size_category(rows: int) -> str:
    """The Hub's size_categories bucket for a row count."""
    bounds = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))
    return next((label for bound, label in bounds if rows < bound), "n>10M")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the dataset card (filter) ------------------------------------------------------------------

_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "n", "seed", "stop")


def dataset_card(
    *, report: dict[str, Any], sft_rows: int, kept_rows: int, config: dict[str, Any],
    sources: Sequence[dict[str, Any]], decontaminate: dict[str, str],
) -> tuple[dict[str, Any], str]:
    """The card of a filter output folder.

    `sources`: one entry per traces file: {"traces", "teacher", "prompt_template", "sampling",
    "problems"} from the generate manifest beside it (missing keys: made by another tool).
    `decontaminate`: evaluation files checked against, with their sha256.
    """
    problems = next((s.get("problems") for s in sources if s.get("problems")), None)
    license_id, license_from = detect_license(problems)
    teachers = sorted({str(s["teacher"]) for s in sources if s.get("teacher")})
    meta = {
        "license": license_id,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(sft_rows)],
        "tags": ["chain-of-thought", "synthetic", "distillation", "cotdistill"],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "sft.jsonl"}]},
            {"config_name": "kept", "data_files": [{"split": "train", "path": "kept.jsonl"}]},
        ],
    }
    funnel = report["funnel"]
    coverage = report.get("coverage", {})
    lines = [
        "# Verified chain-of-thought traces",
        "",
        "Made by `cotdistill filter`: a teacher's sampled reasoning traces, kept only when they "
        "pass the checks below. `sft.jsonl` (config `default`) holds chat `messages` ending in "
        "the teacher's turn, for SFT; `kept.jsonl` (config `kept`) the same traces with every "
        "measure; `rejected.jsonl` the rest, each with its reasons.",
        "",
        f"- **Rows**: {sft_rows} in `sft.jsonl` ({kept_rows} kept of {funnel['traces_in']} "
        f"traces; {funnel['rejected']} rejected)",
        f"- **Problems**: {report.get('problems')}, of which "
        f"{coverage.get('problems_with_kept_trace')} have a kept trace "
        f"(share {coverage.get('share')})",
        f"- **License**: `{license_id}`, from {license_from}. The traces inherit the problems' "
        "license and the teacher's terms of use.",
        f"- **Teacher**: {', '.join(teachers) or 'unknown (traces from another tool)'}",
        "",
        "## Where the traces came from",
        "",
        table(["traces", "teacher", "prompt template", "sampling", "problems"], [
            [f"`{s['traces']}`", s.get("teacher"),
             (s.get("prompt_template") or {}).get("name"),
             ", ".join(f"{k}={v}" for k, v in (s.get("sampling") or {}).items()) or None,
             s.get("problems")] for s in sources]),
        "",
        "## Filter settings",
        "",
        table(["setting", "value"], [[k, f"`{json.dumps(v)}`"] for k, v in config.items()
                                      if k not in ("traces", "out", "decontaminate")]),
        "",
        "## Funnel",
        "",
        "Each rejected trace counts at the first check it fails.",
        "",
        table(["check", "in", "rejected", "out"],
               [[s["check"], s["in"], s["rejected"], s["out"]] for s in funnel["steps"]]),
        "",
        "## Decontamination",
        "",
    ]
    if decontaminate:
        lines += [f"Traces whose question shares a {config.get('decontaminate_ngram')}-gram with "
                  f"a question of these evaluation sets were rejected (`contaminated`: "
                  f"{funnel.get('reasons_any', {}).get('contaminated', 0)} traces):", "",
                  table(["evaluation set", "sha256"],
                         [[f"`{p}`", h[:16]] for p, h in decontaminate.items()])]
    else:
        lines.append("None: no evaluation set was given (`--decontaminate`), so overlap with "
                     "any benchmark was not checked.")
    return meta, "\n".join(lines)


def trace_sources(traces: Sequence[Path | str]) -> list[dict[str, Any]]:
    """What made each traces file: the generate manifest beside it, else its first record's
    own teacher, prompt and sampling fields (traces from other tools may have neither)."""
    sources = []
    for path in traces:
        entry: dict[str, Any] = {"traces": str(path)}
        manifest = Path(path).parent / "manifest.json"
        try:
            data = json.loads(manifest.read_text()) if manifest.is_file() else {}
        except (OSError, ValueError):
            data = {}
        if data.get("stage") == "generate":
            config = data.get("config") or {}
            entry.update({
                "teacher": data.get("teacher") or config.get("teacher"),
                "prompt_template": data.get("prompt_template"),
                "sampling": {k: config[k] for k in _SAMPLING_KEYS if config.get(k) is not None},
                "problems": config.get("problems"),
            })
        elif (first := _first_record(Path(path))) is not None:  # what the trace itself says
            entry.update({"teacher": first.get("teacher"),
                          "prompt_template": {"name": first.get("prompt_template")}
                          if first.get("prompt_template") else None,
                          "sampling": first.get("sampling") if isinstance(
                              first.get("sampling"), dict) else None})
        sources.append(entry)
    return sources


def _first_record(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    data = json.loads(line)
                    return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
    return None


def write_dataset_card(out: Path, config: Any, report: dict[str, Any],
                       counts: dict[str, int]) -> Path:
    """filter's card: README.md beside sft.jsonl (`config` is the FilterConfig)."""
    from cotdistill.infra.files import sha256_file

    settings = config.model_dump(mode="json")
    meta, body = dataset_card(
        report=report, sft_rows=counts["sft.jsonl"], kept_rows=counts["kept.jsonl"],
        config=settings, sources=trace_sources(config.traces),
        decontaminate={str(p): sha256_file(Path(p)) for p in config.decontaminate},
    )
    write_card(Path(out) / CARD, meta, body)
    return Path(out) / CARD


# --- measured rows (evaluate) -------------------------------------------------------------------

_EVALUATION = "## Evaluation (cotdistill evaluate)"


def made_by_train(folder: Path) -> bool:
    """Whether `folder` is a student `cotdistill train` wrote (its manifest, or its parent's
    for out/merged): the only folders evaluate writes a card into. A teacher's folder, a hub
    cache or any model this tool did not train is never touched."""
    folder = Path(folder)
    for candidate in (folder, folder.parent if folder.name == "merged" else None):
        if candidate is None:
            continue
        try:
            manifest = json.loads((candidate / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("stage") == "train":
            return True
    return False


def add_model_index(folder: Path, name: str, dataset: dict[str, str],
                    metrics: Sequence[dict[str, Any]]) -> bool:
    """Add (or replace, for the same dataset) one `model-index` result in the card of a
    trained student, and the matching table in its body; False when `folder` is not one.

    `dataset`: {"name", "type"} (the problems file and its sha256 prefix as revision);
    `metrics`: [{"type", "name", "value"}, ...] as the Hub's model-index spec has them.
    """
    folder = Path(folder)
    if not folder.is_dir() or not made_by_train(folder):
        return False
    path = folder / CARD
    meta, body = read_card(path) if path.exists() else ({}, "")
    result = {"task": {"type": "text-generation", "name": "Text Generation"},
              "dataset": dict(dataset),
              "metrics": [{**m, "verified": False} for m in metrics],
              "source": {"name": "cotdistill evaluate"}}
    index = meta.get("model-index") or [{"name": name, "results": []}]
    entry = index[0]
    entry["results"] = [r for r in entry.get("results") or []
                        if (r.get("dataset") or {}).get("name") != dataset["name"]] + [result]
    meta["model-index"] = index
    rows = [[r["dataset"]["name"], m["name"], m["value"]]
            for r in entry["results"] for m in r["metrics"]]
    body = body.split(_EVALUATION)[0].rstrip()
    body += (f"\n\n{_EVALUATION}\n\nMeasured on this folder's weights; a later training run "
             "replaces the card.\n\n" + table(["problems", "measure", "value"], rows))
    write_card(path, meta, body)
    return True
