"""Every file in configs/ validates: a glob, so a config added later is checked without a line here.

A `cotdistill run` config must load into PipelineConfig and plan (every stage's section checked
against that stage's config, before any model loads); an accelerate config must load with
accelerate's own reader. A file that is neither fails: say here how to validate it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import cotdistill as cd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def kind(raw: dict[str, Any]) -> str:
    if "distributed_type" in raw and "compute_environment" in raw:
        return "accelerate"
    if "students" in raw or "generate" in raw:
        return "run"
    return "unknown"


def test_the_glob_finds_the_shipped_configs() -> None:
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "gpu_gsm8k.yaml", "reasoning_r1_qwen.yaml",
            "accelerate_fsdp.yaml", "accelerate_deepspeed_zero3.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict), f"{path.name}: not a YAML mapping"
    found = kind(raw)
    if found == "run":
        from cotdistill.run.plan import plan

        config = cd.load_config(cd.PipelineConfig, path)
        # Data paths in the shipped configs are relative to the repository root.
        rooted = config.model_copy(update={
            "problems": ROOT / config.problems, "eval_problems": ROOT / config.eval_problems,
        })
        assert rooted.problems.exists() and rooted.eval_problems.exists()
        steps = plan(rooted, path, ask_server=False).steps
        kinds = [s.kind for s in steps]
        assert "generate" in kinds and "filter" in kinds and "train" in kinds
        assert kinds[-1] == "evaluate"
    elif found == "accelerate":
        from accelerate.commands.config.config_args import load_config_from_file

        loaded = load_config_from_file(str(path))  # an unknown top-level key is a TypeError
        assert loaded.num_processes == raw["num_processes"]
    else:
        pytest.fail(f"{path.name}: neither a `cotdistill run` config nor an accelerate config")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"out": "x", "students": [{"name": "a"}]}, "run"),
        ({"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP"}, "accelerate"),
        ({"epochs": 2}, "unknown"),
    ],
)
def test_kind(raw: dict[str, Any], expected: str) -> None:
    assert kind(raw) == expected


def test_a_bad_key_in_a_run_config_is_caught(tmp_path: Path) -> None:
    """What the glob test relies on: a typo in a stage section fails validation."""
    from cotdistill.run.plan import plan

    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["filter"]["dedupe"] = "near"  # the key is `dedup`
    raw["problems"] = str(ROOT / raw["problems"])
    raw["eval_problems"] = str(ROOT / raw["eval_problems"])
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(cd.InputError) as info:
        plan(cd.load_config(cd.PipelineConfig, path), path, ask_server=False)
    assert info.value.field == "filter.dedupe"
