"""filter's dataset card: README.md beside sft.jsonl that `datasets.load_dataset` reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cotdistill.cards import CARD, detect_license, read_card, size_category
from cotdistill.filter.config import FilterConfig
from cotdistill.filter.stage import run_filter


def _generate(tmp_path: Path, problems: Path) -> Path:
    from cotdistill.backends.fake import FakeBackend
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.generate.stage import run_generate

    def responder(question: str, index: int) -> str:
        total = sum(int(x) for x in re.findall(r"\d+", question))
        return f"Adding gives {total + index}.\nThe answer is \\boxed{{{total + index}}}."

    gen = tmp_path / "gen"
    run_generate(GenerateConfig(problems=problems, out=gen, n=2, temperature=0.7, limit=6),
                 backend=FakeBackend(responder=responder))
    return gen / "traces.jsonl"


def test_card_loads_with_datasets_and_matches_the_report(tmp_path: Path) -> None:
    data = tmp_path / "problems"
    data.mkdir()
    lines = Path("data/word_problems/train.jsonl").read_text().splitlines()[:6]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    (data / "LICENSE").write_text(Path("data/gsm8k/LICENSE").read_text())  # MIT
    evals = tmp_path / "eval.jsonl"
    evals.write_text(lines[0] + "\n")  # one training question leaks into the eval set
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[_generate(tmp_path, data / "train.jsonl")], out=out,
                            decontaminate=[evals]))
    report = json.loads((out / "report.json").read_text())
    meta, body = read_card(out / CARD)

    assert meta["license"] == "mit"
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    funnel = report["funnel"]
    assert f"{funnel['kept']} kept of {funnel['traces_in']} traces" in body
    for step in funnel["steps"]:
        assert f"| {step['check']} | {step['in']} | {step['rejected']} | {step['out']} |" in body
    assert "| fake | math_cot | temperature=0.7, top_p=1.0, max_tokens=512, n=2" in body
    assert f"`contaminated`: {funnel['reasons_any']['contaminated']} traces" in body
    assert funnel["reasons_any"]["contaminated"] == 2 and str(evals) in body

    import datasets

    loaded = datasets.load_dataset(str(out))
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert loaded["train"].num_rows == len(sft) == funnel["kept"] == 5  # one leaked, 6 wrong
    assert loaded["train"][0]["messages"][-1]["role"] == "assistant"
    kept = datasets.load_dataset(str(out), "kept")
    assert kept["train"].num_rows == funnel["kept"]


def test_card_without_license_or_decontamination_says_so(tmp_path: Path) -> None:
    problems = tmp_path / "p.jsonl"
    problems.write_text(Path("data/word_problems/train.jsonl").read_text().splitlines()[0] + "\n")
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[_generate(tmp_path, problems)], out=out))
    meta, body = read_card(out / CARD)
    assert meta["license"] == "other"
    assert "no license found" in body
    assert "no evaluation set was given" in body


@pytest.mark.parametrize(("text", "expected"), [
    ("MIT License\n\nCopyright", "mit"),
    ("                                 Apache License\n Version 2.0", "apache-2.0"),
    ("Attribution 4.0 International\n\n=====", "cc-by-4.0"),
    ("All rights reserved.", "other"),
])
def test_license_from_a_file_beside_the_problems(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "LICENSE").write_text(text)
    assert detect_license(tmp_path / "train.jsonl")[0] == expected


def test_license_field_of_a_manifest_wins(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"license": "CC-BY-SA-4.0"}))
    (tmp_path / "LICENSE").write_text("MIT License")
    assert detect_license(tmp_path / "train.jsonl") == (
        "cc-by-sa-4.0", f"the `license` field of {tmp_path / 'manifest.json'}")


@pytest.mark.parametrize(("rows", "label"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"),
                                             (123_456, "100K<n<1M"), (10**8, "n>10M")])
def test_size_category(rows: int, label: str) -> None:
    assert size_category(rows) == label
