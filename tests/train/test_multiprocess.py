"""Multi-process training: `accelerate launch --num_processes 2` on CPU (gloo) must train the
same model as one process with the same global batch, for plain SFT and for logit
distillation; and the shipped accelerate configs (FSDP, DeepSpeed ZeRO-3) must load.

Equal global batch: one process with batch 4 x 2 accumulation steps, or two processes with
batch 2 x 2 steps each. The distributed sampler hands the two processes alternate micro-batches
of the same shuffled order, so every optimizer step sees the same 8 examples; the losses
(token-weighted over all ranks) and therefore the updates agree up to float summation order.
Tolerance: 1e-5 relative on every logged step's loss (measured: under 1e-7 for both). A loss
scaled by the wrong number of processes is off by a factor of 2; a run that silently used one
process with half the global batch, as `accelerate launch --cpu --num_processes 2` does, was
off by 0.1 to 1 %.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.sft import sft_record, write_sft

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(data: Path, student: Path, out: Path, processes: int, *extra: str) -> list[float]:
    """Run `cotdistill train` (under accelerate when processes > 1); the per-step losses."""
    per_device = 8 // (2 * processes)
    args = ["-m", "cotdistill", "train", "--data", str(data), "--student", str(student),
            "--out", str(out), "--max-steps", str(STEPS), "--learning-rate", "3e-3",
            "--batch-size", str(per_device), "--gradient-accumulation-steps", "2",
            "--logging-steps", "1", "--eval-fraction", "0", "--max-length", "64",
            "--dtype", "float32", "--seed", "0", *extra]
    if processes == 1:
        command = [sys.executable, *args]
    else:
        # `--multi_gpu` is accelerate's torch.distributed launcher: on a machine without GPUs
        # the trainer runs on CPU and joins with gloo. (`--cpu --num_processes 2` starts ONE
        # process unless an MPI hostfile is given: measured, the "2-process" run then trained
        # with half the global batch.)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in log if "loss" in e]


@pytest.mark.train
@pytest.mark.parametrize("kind", ["sft", "logit-distillation"])
def test_two_processes_train_like_one_with_the_same_global_batch(
    kind: str, tiny_model: Path, tiny_teacher: Path, tmp_path: Path
) -> None:
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(32)])
    extra = ("--teacher", str(tiny_teacher), "--distill-alpha", "0.7",
             "--distill-temperature", "2.0") if kind == "logit-distillation" else ()
    one = train(data, tiny_model, tmp_path / "one", 1, *extra)
    two = train(data, tiny_model, tmp_path / "two", 2, *extra)
    assert len(one) == len(two) == STEPS
    assert one[-1] < one[0]  # it trains at all
    assert two == pytest.approx(one, rel=1e-5), f"1 process {one}, 2 processes {two}"


@pytest.mark.parametrize("name", ["accelerate_fsdp.yaml", "accelerate_deepspeed_zero3.yaml"])
def test_shipped_accelerate_configs_load_and_use_only_known_keys(name: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    path = ROOT / "configs" / name
    config = load_config_from_file(str(path))  # an unknown top-level key is a TypeError
    raw = yaml.safe_load(path.read_text())
    # `accelerate launch` turns each plugin key into its own flag: a key it has no flag for
    # (a typo, a key from another accelerate version) would be silently ignored.
    flags = {action.dest for action in launch_command_parser()._actions}
    if name == "accelerate_fsdp.yaml":
        assert config.distributed_type == DistributedType.FSDP
        section = raw["fsdp_config"]
        assert section["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # `out` is a plain model
    else:
        assert config.distributed_type == DistributedType.DEEPSPEED
        section = raw["deepspeed_config"]
        assert section["zero_stage"] == 3 and section["zero3_save_16bit_model"] is True
    unknown = sorted(set(section) - flags)
    assert not unknown, f"{name}: keys accelerate launch does not know: {unknown}"
    assert config.num_processes == raw["num_processes"] and not config.use_cpu
