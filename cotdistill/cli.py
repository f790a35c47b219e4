"""The `cotdistill` command: one subcommand per stage, flags generated from the stage configs.

    cotdistill generate --problems data/train.jsonl --out runs/gen [--config cfg.yaml]

Flags override keys of the `--config` YAML (its stage section if it has one, else its top
level). Bad input ends with one line naming the file, line and field, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from cotdistill.config import GenerateConfig, add_model_flags, load_config
from cotdistill.errors import InputError


def _generate(args: argparse.Namespace) -> None:
    from cotdistill.generate import run_generate

    run_generate(_stage_config(GenerateConfig, args, "generate"))


def _stage_config(model: type, args: argparse.Namespace, section: str) -> Any:
    overrides = {name: getattr(args, name, None) for name in model.model_fields}
    return load_config(model, args.config, section=section, overrides=overrides)


COMMANDS: dict[str, tuple[type, Callable[[argparse.Namespace], None], str]] = {
    "generate": (GenerateConfig, _generate, "Sample teacher chain-of-thought traces."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cotdistill",
        description="Turn a problem set into a verified chain-of-thought dataset and a "
        "distilled student.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (model, handler, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--config", help="YAML file; flags override its keys.")
        add_model_flags(command, model)
        command.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except InputError as exc:
        print(f"cotdistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
