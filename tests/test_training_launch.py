"""The shipped train_*.sh scripts with their shipped accelerate/DeepSpeed configs, for real on the CPU.

Each case trains the tiny model 3 steps uninterrupted (a checkpoint every step), then resumes from
checkpoint-1 in the same folder and must reproduce the losses exactly; one run is stopped with SIGTERM and
resumed, one launcher's process group is SIGKILLed. These launch processes on a small machine: few cases,
3 steps each, every run shared between assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.training_helpers import FRAMES, SIZE, write_tiny_model
from wan.pipeline.tiny import build_tiny_pipeline
from wan.training.dataset import TalkingFaceDataset
from wan.training.precompute import precompute
from wan.training.synthetic import write_dataset

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "1B_square": ["--train_data_square_size=32x32"],
    "14B": [f"--train_data_{name}_size=32x32" for name in ("square", "rec", "vec")],
}
pytestmark = pytest.mark.skipif(
    shutil.which("accelerate") is None, reason="accelerate launcher not installed"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    model = write_tiny_model(root / "model")
    square = write_dataset(root / "data", 2, 1.6, (SIZE, SIZE), seed=7)
    for name in ("video_rec_path.txt", "video_vec_path.txt"):
        shutil.copy(square, square.parent / name)
    precompute(
        build_tiny_pipeline(seed=0), TalkingFaceDataset(square, SIZE, SIZE, FRAMES, seed=0), root / "cache", 1
    )
    return {"model": model, "data": square.parent, "cache": root / "cache"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(setup, script: str, output: Path, env: dict, flags: list[str]):
    preset = "14B" if script.startswith("train_14B") else "1B_square"
    environment = {
        **os.environ,
        "MODEL_DIR": str(setup["model"]),
        "DATA_ROOT": str(setup["data"]),
        "OUTPUT_DIR": str(output),
        "PROCESSES_PER_MACHINE": "2",
        "MAIN_PROCESS_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    command = [
        "bash",
        script,
        *SIZES[preset],
        f"--video_sample_n_frames={FRAMES}",
        "--max_train_steps=3",
        "--checkpointing_steps=1",
        "--report_to=none",
        "--dataloader_num_workers=0",
        *flags,
    ]
    return command, environment


def _train(setup, script: str, output: Path, env: dict, flags: list[str]) -> list:
    command, environment = _command(setup, script, output, env, flags)
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())["history"]


CASES = {
    # script, environment, extra flags
    "ddp-2-raw": ("train_1B_square.sh", {}, []),
    "ddp-multinode-yaml-2-cached": (
        "train_1B_square_multinode.sh",
        {"NUM_MACHINES": "1", "MACHINE_RANK": "0", "MAIN_PROCESS_IP": "127.0.0.1"},
        ["--precomputed_dir={cache}"],
    ),
    "fsdp-2-raw": (
        "train_1B_square.sh",
        {"ACCELERATE_CONFIG": "accelerate_config/accelerate_config_machine_1B_fsdp.yaml"},
        [],
    ),
    "deepspeed-zero2-2-raw": ("train_14B.sh", {}, []),
    "deepspeed-multinode-yaml-1-cached": (
        "train_14B_multinode.sh",
        {
            "NUM_MACHINES": "1",
            "MACHINE_RANK": "0",
            "MAIN_PROCESS_IP": "127.0.0.1",
            "PROCESSES_PER_MACHINE": "1",
        },
        ["--precomputed_dir={cache}"],
    ),
}


_STRAIGHT: dict[str, list] = {}  # uninterrupted losses per case, shared with the stop test


def _straight(setup, case: str, output: Path) -> list:
    script, env, flags = CASES[case]
    flags = [flag.format(cache=setup["cache"]) for flag in flags]
    if case not in _STRAIGHT:
        _STRAIGHT[case] = _train(setup, script, output, env, flags)
    return _STRAIGHT[case]


@pytest.mark.parametrize("case", list(CASES))
def test_shipped_configs_train_and_resume_exactly(setup, tmp_path, case) -> None:
    script, env, flags = CASES[case]
    flags = [flag.format(cache=setup["cache"]) for flag in flags]
    output = tmp_path / "run"
    _STRAIGHT.pop(case, None)
    straight = _straight(setup, case, output)
    assert [step for step, _ in straight] == [1, 2, 3]
    processes = int(env.get("PROCESSES_PER_MACHINE", "2"))
    assert len(list((output / "checkpoint-3").glob("random_states_*.pkl"))) == processes  # every rank counted
    if script.startswith("train_14B"):
        # --max_grad_norm (0.05 in scripts/train.sh) reaches DeepSpeed's own clipping.
        states = next((output / "checkpoint-3" / "pytorch_model").glob("mp_rank_00_model_states.pt"))
        assert torch.load(states, weights_only=False)["ds_config"]["gradient_clipping"] == 0.05
    # Resume by the checkpoint's name alone (it resolves inside OUTPUT_DIR) and redo steps 2 and 3.
    resumed = _train(setup, script, output, env, [*flags, "--resume_from_checkpoint=checkpoint-1"])
    assert resumed == straight


def _workers(launcher: psutil.Process) -> list[psutil.Process]:
    return [p for p in launcher.children(recursive=True) if "train_1B_square.py" in " ".join(p.cmdline())]


def _wait_for_first_step(process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 300
    while "training:" not in (text := log.read_text()) or "1/" not in text.split("training:")[-1]:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no training step within 300 s"
        time.sleep(0.2)


def _gone(processes: list[psutil.Process], seconds: float) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    return not alive


def test_sigterm_stops_every_process_with_a_checkpoint_and_sigkill_leaves_no_worker(setup, tmp_path) -> None:
    output = tmp_path / "run"
    straight = _straight(setup, "ddp-2-raw", tmp_path / "straight")

    command, environment = _command(setup, "train_1B_square.sh", output, {}, ["--checkpointing_steps=1000"])
    log = tmp_path / "stop.log"
    with log.open("w") as sink:
        launcher = subprocess.Popen(command, cwd=REPO, env=environment, stdout=sink, stderr=sink)
    _wait_for_first_step(launcher, log)
    workers = _workers(psutil.Process(launcher.pid))
    assert len(workers) == 2
    launcher.send_signal(signal.SIGTERM)  # what `kill PID` or Ctrl-C of the script does
    launcher.wait(timeout=120)
    assert _gone(workers, 30)
    assert "stopped at step" in log.read_text()
    (checkpoint,) = output.glob("checkpoint-*")  # the one written on the way out
    assert int(checkpoint.name.split("-")[1]) < 3, "the run ended before the signal arrived"
    resumed = _train(setup, "train_1B_square.sh", output, {}, ["--resume_from_checkpoint=latest"])
    assert resumed == straight

    command, environment = _command(
        setup, "train_1B_square.sh", tmp_path / "killed", {}, ["--max_train_steps=50"]
    )
    log = tmp_path / "kill.log"
    with log.open("w") as sink:
        launcher = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=sink, stderr=sink, start_new_session=True
        )
    _wait_for_first_step(launcher, log)
    workers = _workers(psutil.Process(launcher.pid))
    assert len(workers) == 2
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's whole process group, no chance to clean up
    launcher.wait(timeout=30)
    assert _gone(workers, 60), [p.pid for p in workers if p.is_running()]
