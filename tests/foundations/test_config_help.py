"""`--help` shows every field's description as written."""

from __future__ import annotations

import argparse

from pydantic import BaseModel, Field

from cotdistill.config import add_model_flags


class Percent(BaseModel):
    slower: bool | None = Field(None, description="Recompute in backward (~30% slower).")
    rate: float = Field(0.5, description="Share kept, in % of samples.")


def test_help_shows_a_percent_sign_as_written() -> None:
    parser = argparse.ArgumentParser(prog="x")
    add_model_flags(parser, Percent)
    text = " ".join(parser.format_help().split())
    assert "(~30% slower)" in text
    assert "in % of samples" in text
    assert "option_strings" not in text  # argparse's own dict leaking into the help
