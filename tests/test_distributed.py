"""Real multi-process training on the CPU: accelerate DDP with two gloo processes, and DeepSpeed ZeRO-2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training_helpers import SIZE, write_tiny_model
from wan.training.synthetic import write_dataset

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
ACCELERATE = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    return write_tiny_model(root / "model"), write_dataset(root / "data", 2, 1.6, (SIZE, SIZE), seed=7)


def _launch(flags: list[str], model: Path, data: Path, output: Path) -> list[dict]:
    command = [*ACCELERATE, *flags, str(WORKER), str(model), str(data), str(output)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(path.read_text()) for path in sorted(output.glob("rank*.json"))]


def test_two_ddp_processes_train_and_stay_in_sync(setup, tmp_path) -> None:
    model, data = setup
    ranks = _launch(["--multi_gpu", "--num_processes", "2"], model, data, tmp_path / "ddp")
    assert len(ranks) == 2 and all(rank["world"] == 2 for rank in ranks)
    assert "MULTI_CPU" in ranks[0]["distributed_type"]
    assert ranks[0]["digest"] == ranks[1]["digest"]  # every rank holds the same weights after the steps
    single = _launch(["--num_processes", "1"], model, data, tmp_path / "single")[0]
    assert single["digest"] != ranks[0]["digest"]  # two processes saw twice the data: a different update


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (scripts/setup.sh installs it)",
)
def test_deepspeed_zero2_steps_and_checkpoints_on_cpu(setup, tmp_path) -> None:
    model, data = setup
    flags = [
        "--use_deepspeed",
        "--deepspeed_config_file",
        str(REPO / "deepspeed_config" / "zero_stage2_config.json"),
        "--num_processes",
        "1",
    ]
    rank = _launch(flags, model, data, tmp_path / "ds")[0]
    assert "DEEPSPEED" in rank["distributed_type"]
    assert [step for step, _ in rank["history"]] == [1, 2]
    assert (tmp_path / "ds" / "checkpoint-2" / "transformer3d-checkpoint-2.safetensors").is_file()
