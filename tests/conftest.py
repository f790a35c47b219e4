"""Shared fixtures: tiny models built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.tiny import build_tiny_model

# No test may reach a model hub; everything is built or shipped locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random llama with its own 512-token tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", layers=2, seed=0)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A 4-layer random llama sharing `tiny_model`'s tokenizer (for distillation tests)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "teacher", layers=4, seed=1, tokenizer_from=tiny_model
    )
