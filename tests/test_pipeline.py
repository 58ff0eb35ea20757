"""End to end on a tiny random model: lengths, the written mp4, bad inputs, interruption, reuse of work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wan.errors import MissingFileError, UserFacingError
from wan.media import read_video_info
from wan.pipeline.pipeline import StableAvatarPipeline
from wan.pipeline.tiny import build_tiny_pipeline

SIZE = 32
SAMPLES_PER_FRAME = 640
CLIP = 21  # frames per window: 6 latent frames, so the edge cases stay cheap


@pytest.fixture(scope="module")
def pipe() -> StableAvatarPipeline:
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def reference_image() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


def _speechlike(num_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = num_frames * SAMPLES_PER_FRAME
    envelope = 0.5 + 0.5 * np.sin(np.arange(n) / 16000 * 2 * np.pi * 3)
    return (rng.standard_normal(n) * 0.1 * envelope).astype(np.float32)


def _generate(pipe, image, audio, path: Path | None, **kwargs):
    settings = dict(
        height=SIZE, width=SIZE, num_inference_steps=2, clip_length=CLIP, overlap=2, seed=3, progress=False
    )
    settings.update(kwargs)
    return pipe(image, audio, prompt="a person talking", output_path=path, **settings)


@pytest.mark.parametrize(
    "num_frames",
    [1, 20, 21, 22, 58],
    ids=[
        "one-frame",
        "just-under-one-window",
        "exactly-one-window",
        "just-over-one-window",
        "ragged-multi-window",
    ],
)
def test_video_has_the_frame_count_the_audio_implies(
    pipe, reference_image, tmp_path, num_frames: int
) -> None:
    path = tmp_path / "out.mp4"
    result = _generate(pipe, reference_image, _speechlike(num_frames), path)
    info = read_video_info(path)
    assert result.num_frames == info["frames"] == num_frames
    assert info["fps"] == 25 and (info["width"], info["height"]) == (SIZE, SIZE)
    assert info["has_audio"] and abs(info["audio_duration"] - num_frames / 25) < 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # nothing half-written left behind


def test_audio_is_encoded_once_per_window_not_per_step(pipe, reference_image) -> None:
    calls = []
    hook = pipe.audio_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        result = _generate(
            pipe, reference_image, _speechlike(58), None, output_type="latent", num_inference_steps=3
        )
    finally:
        hook.remove()
    assert result.num_windows == 4
    assert len(calls) == result.num_windows


def test_same_seed_same_video_and_different_audio_changes_it(pipe, reference_image) -> None:
    first = _generate(pipe, reference_image, _speechlike(22), None, output_type="latent").latents
    again = _generate(pipe, reference_image, _speechlike(22), None, output_type="latent").latents
    other = _generate(pipe, reference_image, _speechlike(22, seed=9), None, output_type="latent").latents
    assert torch.equal(first, again)
    assert (other - first).norm() / first.norm() > 1e-4


def test_silent_audio_works(pipe, reference_image, tmp_path) -> None:
    result = _generate(
        pipe, reference_image, np.zeros(10 * SAMPLES_PER_FRAME, np.float32), tmp_path / "s.mp4"
    )
    assert read_video_info(tmp_path / "s.mp4")["frames"] == result.num_frames == 10


def test_interrupted_run_leaves_no_video(pipe, reference_image, tmp_path) -> None:
    def stop(step, window, steps, windows):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _generate(pipe, reference_image, _speechlike(30), tmp_path / "out.mp4", callback=stop)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 40}, "multiples of 16"),
        ({"clip_length": 20}, "4k\\+1"),
        ({"overlap": 6}, "overlap"),
        ({"weighting": "cosine"}, "weighting"),
    ],
)
def test_bad_settings_say_what_to_do(pipe, reference_image, kwargs, message) -> None:
    with pytest.raises((UserFacingError, ValueError), match=message):
        _generate(pipe, reference_image, _speechlike(5), None, output_type="latent", **kwargs)


def test_bad_inputs(pipe, reference_image, tmp_path) -> None:
    with pytest.raises(MissingFileError):
        _generate(pipe, tmp_path / "missing.png", _speechlike(5), tmp_path / "o.mp4")
    with pytest.raises(MissingFileError):
        _generate(pipe, reference_image, tmp_path / "missing.wav", tmp_path / "o.mp4")
    with pytest.raises(UserFacingError, match="shorter than one video frame"):
        _generate(pipe, reference_image, np.zeros(100, np.float32), tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


def test_pipeline_saves_and_loads(pipe, reference_image, tmp_path) -> None:
    pipe.save_pretrained(tmp_path / "model")
    loaded = StableAvatarPipeline.from_pretrained(tmp_path / "model")
    audio = _speechlike(9)
    ours = _generate(pipe, reference_image, audio, None, output_type="latent").latents
    theirs = _generate(loaded, reference_image, audio, None, output_type="latent").latents
    assert (theirs - ours).norm() / ours.norm() < 1e-5
