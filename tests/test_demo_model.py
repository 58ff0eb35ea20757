"""The committed demo model (checkpoints/demo): it loads, the main job (`bash inference.sh`) writes a video
with the whole audio. About a minute on 2 CPU cores. (How well its lips follow the audio is measured by
benchmarks/lipsync_eval.py, 4 minutes of generation, not asserted here; the numbers are in the README.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from wan.media import load_audio, read_video_info
from wan.pipeline import StableAvatarPipeline
from wan.training.demo import DEMO_SIZE, DEMO_TRANSFORMER, demo_generation_settings

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "checkpoints" / "demo"
EXAMPLE = ROOT / "examples" / "case-1"
COMPONENTS = ("vae", "transformer", "text_encoder", "image_encoder", "audio_encoder")


@pytest.fixture(scope="module")
def pipe() -> StableAvatarPipeline:
    torch.set_num_threads(2)
    return StableAvatarPipeline.from_pretrained(DEMO, dtype=torch.float32)


def test_demo_model_is_small_safetensors() -> None:
    files = [path for path in DEMO.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 50 * 2**20
    assert not [path for path in files if path.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    for component in COMPONENTS:
        assert list((DEMO / component).glob("*.safetensors")), component


def test_demo_model_folder_says_what_it_is_and_how_to_use_it() -> None:
    from wan.generation_settings import recommended_settings

    card = (DEMO / "README.md").read_text()
    assert "toy" in card and "bash scripts/train_demo_model.sh" in card and "seed 1" in card
    settings = recommended_settings(DEMO)
    assert (settings["width"], settings["height"], settings["clip_length"]) == (DEMO_SIZE, DEMO_SIZE, 33)


def test_committed_transformer_is_the_one_the_demo_recipe_builds() -> None:
    """The weights and `wan.training.demo` agree on every setting (audio window padding 0 included), so
    retraining with the reproduce command builds this model and its measured lip sync belongs to it."""
    config = json.loads((DEMO / "transformer" / "config.json").read_text())
    for name, value in DEMO_TRANSFORMER.items():
        assert config[name] == (list(value) if isinstance(value, tuple) else value), name


def test_the_main_job_animates_the_example_with_its_whole_audio(tmp_path) -> None:
    result = subprocess.run(
        ["bash", "inference.sh", "--output_dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    info = read_video_info(tmp_path / "video_with_audio.mp4")
    seconds = len(load_audio(EXAMPLE / "audio.wav", 16000)) / 16000
    assert info["frames"] == 173 and (info["width"], info["height"]) == (DEMO_SIZE, DEMO_SIZE)
    assert info["audio_duration"] == pytest.approx(seconds, abs=0.05)


def test_demo_model_generates_a_video_with_audio(pipe, tmp_path) -> None:
    audio = load_audio(EXAMPLE / "audio.wav", 16000)[:16000]  # 1 s
    result = pipe(
        EXAMPLE / "reference.png",
        audio,
        output_path=tmp_path / "demo.mp4",
        seed=0,
        progress=False,
        **demo_generation_settings(),
    )
    info = read_video_info(tmp_path / "demo.mp4")
    assert result.num_frames == info["frames"] == 25
    assert (info["width"], info["height"]) == (DEMO_SIZE, DEMO_SIZE)
    assert info["audio_duration"] == pytest.approx(1.0, abs=0.05)
