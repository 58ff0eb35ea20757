"""The committed one-step student of the demo model (checkpoints/demo-student, `bash train_distill.sh`): it is a
model folder sharing the demo's components, it samples with one transformer forward per window step and no
guidance batch, and the app lists it. (Its lip sync is measured by benchmarks/lipsync_eval.py; the numbers are
in the README.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from wan.app.logic import discover_models
from wan.generation_settings import recommended_settings
from wan.media import load_audio
from wan.pipeline import StableAvatarPipeline

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
DEMO = CHECKPOINTS / "demo"
STUDENT = CHECKPOINTS / "demo-student"
EXAMPLE = ROOT / "examples" / "case-1"
SHARED = ("vae", "text_encoder", "tokenizer", "image_encoder", "scheduler", "audio_encoder")


def test_the_student_shares_the_demo_components_and_all_checkpoints_fit_64_mb() -> None:
    for name in SHARED:
        link = STUDENT / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)), name  # relative: survives a clone
        assert link.resolve() == (DEMO / name).resolve(), name
    assert list((STUDENT / "transformer").glob("*.safetensors"))
    files = [Path(folder) / name for folder, _, names in os.walk(CHECKPOINTS) for name in names]  # no links
    assert sum(path.lstat().st_size for path in files) <= 64 * 2**20
    student = json.loads((STUDENT / "transformer" / "config.json").read_text())
    teacher = json.loads((DEMO / "transformer" / "config.json").read_text())
    assert {k: v for k, v in student.items() if not k.startswith("_")} == {
        k: v for k, v in teacher.items() if not k.startswith("_")
    }


def test_the_student_settings_are_one_step_without_guidance_at_the_demo_size() -> None:
    student, teacher = recommended_settings(STUDENT), recommended_settings(DEMO)
    assert student["num_inference_steps"] == 1
    assert student["text_guidance_scale"] == student["audio_guidance_scale"] == 1.0
    for name in ("width", "height", "clip_length", "overlap"):
        assert student[name] == teacher[name], name


def test_the_student_generates_with_one_forward_of_batch_one_per_window() -> None:
    torch.set_num_threads(2)
    pipe = StableAvatarPipeline.from_pretrained(STUDENT, dtype=torch.float32)
    batches = []
    forward = pipe.transformer.forward

    def counted(hidden_states, *args, **kwargs):
        batches.append(hidden_states.shape[0])
        return forward(hidden_states, *args, **kwargs)

    pipe.transformer.forward = counted
    audio = load_audio(EXAMPLE / "audio.wav", 16000)[:16000]  # 1 s: 25 frames, one window
    settings = recommended_settings(STUDENT)
    result = pipe(EXAMPLE / "reference.png", audio, output_type="np", seed=0, progress=False, **settings)
    assert batches == [1]
    assert result.frames.shape == (25, settings["height"], settings["width"], 3)
    assert result.frames.std() > 0.05  # a face, not a blank frame


def test_the_app_lists_the_student_after_the_demo() -> None:
    folders = [choice.path for choice in discover_models(CHECKPOINTS)]
    assert folders[0] == DEMO and STUDENT in folders
