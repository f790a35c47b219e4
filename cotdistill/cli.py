"""The `cotdistill` command: one subcommand per stage, flags generated from the stage configs.

    cotdistill generate --problems data/train.jsonl --out runs/gen [--config cfg.yaml]
    cotdistill filter --traces runs/gen/traces.jsonl --out runs/filter
    cotdistill train --data runs/filter/sft.jsonl --student MODEL --out runs/student
    cotdistill student init --teacher MODEL --out DIR --keep-every 2
    cotdistill evaluate --problems data/test.jsonl --model teacher=A --model student=B --out DIR
    cotdistill quantize --model runs/student --scheme w8a8 --out runs/student-w8a8
    cotdistill run --config configs/demo.yaml [--dry-run]

Each stage module exposes a pydantic config and a `run_*` function; flags override keys of the
`--config` YAML (its stage section if it has one, else its top level). Stage modules keep their
heavy imports inside functions, so `cotdistill --help` stays instant. Bad input ends with one
line naming the file, line and field, and exit status 2; a server that keeps failing (the
openai backend, after its retries) with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

from cotdistill.config import add_model_flags, load_config
from cotdistill.errors import InputError, ServiceError
from cotdistill.infra.logs import capture_logs, log_file_for, terminal_level


@dataclass(frozen=True)
class Command:
    module: str
    config: str
    run: str
    section: str
    help: str

    def load(self) -> tuple[type, Any]:
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.run)


COMMANDS: dict[str, Command] = {
    "generate": Command(
        "cotdistill.generate", "GenerateConfig", "run_generate", "generate",
        "Sample teacher chain-of-thought traces with vLLM.",
    ),
    "filter": Command(
        "cotdistill.filter", "FilterConfig", "run_filter", "filter",
        "Keep the traces worth learning from, and say why the others were set aside.",
    ),
    "train": Command(
        "cotdistill.train", "TrainConfig", "run_train", "train",
        "Train the student on kept traces (TRL SFT, optional LoRA and logit distillation).",
    ),
    "student init": Command(
        "cotdistill.compress.student_init", "StudentInitConfig", "run_student_init", "student",
        "Build a shallower student from a teacher's embeddings, chosen layers and head.",
    ),
    "student prune": Command(
        "cotdistill.compress.prune", "PruneConfig", "run_prune", "prune",
        "Prune a teacher's width (MLP channels, heads, hidden) and depth by measured importance.",
    ),
    "synthesize": Command(
        "cotdistill.synthesize", "SynthesizeConfig", "run_synthesize", "synthesize",
        "Make new labelled problems from seed problems (new numbers, rephrasings, ...).",
    ),
    "export": Command(
        "cotdistill.compress.export", "ExportConfig", "run_export", "export",
        "Export a model folder to one GGUF file for llama.cpp / Ollama.",
    ),
    "evaluate": Command(
        "cotdistill.evaluate", "EvaluateConfig", "run_evaluate", "evaluate",
        "Score teacher and students on the same problems; report retention.",
    ),
    "quantize": Command(
        "cotdistill.compress.quantize", "QuantizeConfig", "run_quantize", "quantize",
        "Quantise a model folder (w8a8 or w4a16, compressed-tensors) for vLLM to serve.",
    ),
    "run": Command(
        "cotdistill.run", "PipelineConfig", "run_pipeline", "",
        "Generate, filter, train and evaluate from one YAML config.",
    ),
    "tune": Command(
        "cotdistill.run.tune", "TuneConfig", "run_tune", "tune",
        "Search generation, filter and training settings on a validation split (Optuna).",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cotdistill",
        description="Turn a problem set into a verified chain-of-thought dataset and a "
        "distilled student.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, Any] = {}
    for name, command in COMMANDS.items():
        try:
            config_model = command.load()[0]
        except (ImportError, AttributeError):
            continue  # stage not available in this build
        if " " in name:
            group, leaf = name.split(" ", 1)
            if group not in groups:
                groups[group] = sub.add_parser(group, help=command.help).add_subparsers(
                    dest="subcommand", required=True
                )
            parser_for = groups[group].add_parser(leaf, help=command.help, description=command.help)
        else:
            parser_for = sub.add_parser(name, help=command.help, description=command.help)
        parser_for.add_argument("--config", help="YAML file; flags override its keys.")
        parser_for.add_argument(
            "--verbose", action="store_true",
            help="Show engine and library logs on the terminal (also: COTDISTILL_LOG=info).",
        )
        add_model_flags(parser_for, config_model, skip={"config"})
        parser_for.set_defaults(command_name=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command_name]
    config_model, run = command.load()
    overrides = {name: getattr(args, name, None) for name in config_model.model_fields}
    try:
        config = load_config(
            config_model, args.config, section=command.section or None, overrides=overrides
        )
        # run is given the YAML file, so errors about its sections name it
        call = partial(run, config, source=args.config) if args.command_name == "run" \
            else partial(run, config)
        if getattr(config, "dry_run", False):
            call()  # a dry run writes nothing, not even a log file, and loads no engine
            return 0
        # Engine and library logs go to <out>/logs/<command>.log unless --verbose/COTDISTILL_LOG.
        # A command whose --out is a file (export) names the folder its logs go to.
        log_file = log_file_for(getattr(config, "log_dir", getattr(config, "out", None)),
                                args.command_name)
        with capture_logs(log_file, terminal_level(args.verbose)):
            call()
    except InputError as exc:
        print(f"cotdistill {args.command_name}: error: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"cotdistill {args.command_name}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
