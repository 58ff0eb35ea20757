"""The training data path: clip folders, broken clips, frame rates, resolution batches, the objective's draws."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wan.training.dataset import TalkingFaceDataset
from wan.training.objective import ObjectiveConfig, StepChoices, masked_flow_loss, sample_sigmas
from wan.training.presets import PRESETS
from wan.training.sampler import ResolutionBatchSampler
from wan.training.synthetic import write_clip, write_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("clips"), num_clips=2, seconds=1.2, size=(48, 32), seed=1)


def test_sample_shapes_masks_and_audio_span(clips) -> None:
    dataset = TalkingFaceDataset(clips, width=32, height=16, num_frames=9, seed=0)
    item = dataset[0]
    assert item["pixel_values"].shape == (9, 3, 16, 32)
    assert item["pixel_values"].min() >= -1 and item["pixel_values"].max() <= 1
    assert item["face_masks"].shape == item["lip_masks"].shape == (1, 9, 16, 32)
    assert 0 < item["lip_masks"].mean() < item["face_masks"].mean() < 1  # lips inside the face
    assert item["audio"].shape == (9 * 640,)
    assert item["prompt"] == "The protagonist is talking"
    again = TalkingFaceDataset(clips, width=32, height=16, num_frames=9, seed=0)[0]
    assert torch.equal(item["pixel_values"], again["pixel_values"])  # deterministic per (seed, epoch, index)


def test_clip_frame_rate_sets_the_audio_span(tmp_path) -> None:
    folder = write_clip(tmp_path / "speech" / "clip", seed=2, seconds=1.0, size=(32, 32), fps=20)
    (tmp_path / "list.txt").write_text(f"{folder}\n")
    item = TalkingFaceDataset(tmp_path / "list.txt", 32, 32, num_frames=9)[0]
    assert item["audio"].shape == (9 * 16000 // 20,)  # 9 frames at 20 fps = 0.45 s


def test_broken_clips_are_reported_once_and_skipped(clips, tmp_path) -> None:
    good = [Path(line) for line in clips.read_text().split()]
    no_audio = tmp_path / "speech" / "no_audio"
    shutil.copytree(good[0], no_audio)
    (no_audio / "audio.wav").unlink()
    few_frames = tmp_path / "speech" / "few_frames"
    shutil.copytree(good[0], few_frames)
    for frame in sorted((few_frames / "images").iterdir())[3:]:
        frame.unlink()
    bad_masks = tmp_path / "speech" / "bad_masks"
    shutil.copytree(good[0], bad_masks)
    (bad_masks / "lip_masks" / "frame_2.png").unlink()
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, [good[0], no_audio, few_frames, bad_masks, tmp_path / "missing"])))
    with pytest.warns(UserWarning) as caught:
        dataset = TalkingFaceDataset(listing, 32, 32, num_frames=9)
    assert len(dataset) == 1
    reasons = {str(folder.name): reason for folder, reason in dataset.skipped}
    assert "no audio.wav" in reasons["no_audio"]
    assert "fewer than the 9" in reasons["few_frames"]
    assert "lip_masks/ lacks 1" in reasons["bad_masks"]
    assert "does not exist" in reasons["missing"]
    assert len(caught) == 4


def test_resolution_batches_are_uniform_and_proportional() -> None:
    sampler = ResolutionBatchSampler([30, 10], batch_size=2, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    assert all(all(i < 30 for i in b) or all(i >= 30 for i in b) for b in batches)
    assert sum(all(i >= 30 for i in b) for b in batches) == 5
    assert sorted(i for b in batches for i in b) == list(range(40))
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_objective_draws_follow_the_published_probabilities() -> None:
    config = ObjectiveConfig()
    generator = torch.Generator().manual_seed(0)
    draws = [StepChoices.draw(config, generator) for _ in range(4000)]
    share = {
        kind: np.mean([d.mask_weighting == kind for d in draws]) for kind in ("1+face+lip", "face", "lip")
    }
    assert share["1+face+lip"] == pytest.approx(0.4, abs=0.03)
    assert share["face"] == pytest.approx(0.1, abs=0.02)
    assert np.mean([d.drop_audio for d in draws]) == pytest.approx(0.1, abs=0.02)
    assert np.mean([d.clip_level_audio for d in draws]) == pytest.approx(0.3, abs=0.03)
    sigmas = torch.linspace(1, 0.01, 1000)
    drawn = sample_sigmas(sigmas, 5000, generator)
    assert drawn.min() >= 0.01 and drawn.max() <= 1 and drawn.mean() == pytest.approx(sigmas.mean(), abs=0.02)


def test_mask_weighting_and_motion_term() -> None:
    target = torch.zeros(1, 4, 3, 2, 2)
    prediction = torch.ones(1, 4, 3, 2, 2)
    face = torch.zeros(1, 1, 9, 16, 16)
    face[..., :8] = 1.0
    lip = torch.zeros_like(face)
    no_motion = ObjectiveConfig(motion_weight=0.0)
    lips_only = StepChoices("lip", False, False)
    whole = StepChoices("1+face+lip", False, False)
    assert masked_flow_loss(prediction, target, face, lip, lips_only, no_motion) == 0
    assert masked_flow_loss(prediction, target, face, lip, whole, no_motion) == pytest.approx(1.5)
    moving = prediction.clone()
    moving[:, 1] = 3.0  # a change along the channel axis only
    channels = masked_flow_loss(moving, target, face, lip, whole, ObjectiveConfig(motion_axis="channels"))
    frames = masked_flow_loss(moving, target, face, lip, whole, ObjectiveConfig(motion_axis="frames"))
    base = masked_flow_loss(moving, target, face, lip, whole, no_motion)
    assert channels > 0.75 * base and frames == pytest.approx(0.75 * base)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_training_script_explains_its_flags(preset) -> None:
    result = subprocess.run(
        [sys.executable, f"train_{preset}.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0
    for flag in PRESETS[preset].data_flags:
        assert flag in result.stdout
    for script in (f"train_{preset}.sh", f"train_{preset}_multinode.sh", "scripts/train.sh"):
        assert subprocess.run(["bash", "-n", script], cwd=REPO).returncode == 0


def test_launchers_assemble_the_preset_commands() -> None:
    def command(script: str, **env: str) -> str:
        environment = {"PATH": "/usr/bin:/bin", "DRY_RUN": "1", **env}
        return subprocess.run(
            ["bash", script, "--max_train_steps=5"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=environment,
            check=True,
        ).stdout

    square = command("train_1B_square.sh")
    assert "accelerate_config_machine_1B_single.yaml" in square and "train_1B_square.py" in square
    assert "video_square_path.txt" in square and "video_rec_path.txt" not in square
    assert square.rstrip().endswith("--max_train_steps=5")
    multinode = command(
        "train_1B_rec_vec_multinode.sh",
        NUM_MACHINES="2",
        NUM_PROCESSES="16",
        MACHINE_RANK="1",
        MAIN_PROCESS_IP="10.0.0.1",
    )
    assert "accelerate_config_machine_1B_multiple.yaml" in multinode and "--machine_rank 1" in multinode
    assert "--learning_rate=1e-4" in multinode and "video_vec_path.txt" in multinode
    big = command("train_14B_lora.sh", MODEL_DIR="m", OUTPUT_DIR="o")
    assert "accelerate_config_machine_14B_single.yaml" in big and "--pretrained_model_name_or_path=m" in big
    assert all(name in big for name in ("video_square_path.txt", "video_rec_path.txt", "video_vec_path.txt"))
    missing = subprocess.run(["bash", "train_14B_multinode.sh"], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode != 0 and "NUM_MACHINES" in missing.stderr


@pytest.mark.parametrize(
    ("script", "env"),
    [
        ("train_1B_square.sh", {}),
        (
            "train_14B_multinode.sh",
            {"NUM_MACHINES": "2", "MACHINE_RANK": "0", "MAIN_PROCESS_IP": "127.0.0.1"},
        ),
        (
            "train_distill.sh",
            {"ACCELERATE_CONFIG": "accelerate_config/accelerate_config_machine_1B_single.yaml"},
        ),
    ],
)
def test_launchers_without_a_gpu_stop_before_launching_with_one_line(tmp_path, script, env) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "PROCESSES_PER_MACHINE"}
    environment.update(CUDA_VISIBLE_DEVICES="", OUTPUT_DIR=str(tmp_path / "out"), **env)
    result = subprocess.run(
        ["bash", script], cwd=REPO, capture_output=True, text=True, env=environment, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: no CUDA GPU found")
    assert "PROCESSES_PER_MACHINE=1" in result.stderr  # what to do instead
    assert not (tmp_path / "out").exists()  # nothing started


def test_training_script_without_data_is_a_one_line_error(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "train_1B_square.py",
            "--pretrained_model_name_or_path",
            str(tmp_path),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: no training data") and result.stderr.count("\n") == 1


def test_face_scale_draws_the_same_identity_closer() -> None:
    from wan.training.synthetic import FaceStyle, draw_face

    plain, close = (FaceStyle.random(np.random.default_rng(4), scale) for scale in (1.0, 1.6))
    assert (close.skin, close.hair, close.background) == (plain.skin, plain.hair, plain.background)
    areas = []
    for style in (plain, close):
        _, face, lips = draw_face(style, (128, 128), mouth_open=1.0, eyes_open=True, offset=(0.0, 0.0))
        areas.append((np.count_nonzero(np.asarray(face)), np.count_nonzero(np.asarray(lips))))
    for small, large in zip(areas[0], areas[1], strict=True):
        assert large / small == pytest.approx(1.6**2, rel=0.1)
