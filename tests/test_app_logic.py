"""The web app's pure logic, without Gradio or a browser: sizes, fit to image, model discovery, seeds,
inputs, progress and error messages."""

from __future__ import annotations

import math

import pytest
import torch

from wan.app import logic
from wan.app.logic import (
    AUDIO_FROM_AUDIO,
    AUDIO_FROM_VIDEO,
    CUSTOM_SIZE,
    SIZE_PRESETS,
    TINY_MODEL_KEY,
    discover_models,
    fit_to_image,
    make_settings,
    progress_fraction,
    resolve_audio,
    resolve_model,
    resolve_seed,
    resolve_size,
    separation_model,
    summary_markdown,
    user_message,
)
from wan.errors import MissingFileError, UserFacingError

PAGE_DEFAULTS = dict(
    model=TINY_MODEL_KEY,
    prompt=" hi ",
    negative_prompt=None,
    preset=CUSTOM_SIZE,
    width=64,
    height=96,
    steps=2,
    text_guidance=3.0,
    audio_guidance=5.0,
    clip_length=81,
    overlap=5,
    weighting="uniform",
    seed=7,
    memory_mode="model_full_load",
)


def test_presets_are_the_trained_sizes() -> None:
    assert {resolve_size(label, None, None) for label in SIZE_PRESETS} == {(512, 512), (480, 832), (832, 480)}
    assert resolve_size("480x832 (portrait)", 1, 1) == (480, 832)  # the custom fields are ignored
    assert resolve_size(CUSTOM_SIZE, 64, 96.0) == (64, 96)


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (100, 64, "the width must be a multiple of 16, got 100; try 96 or 112"),
        (64, 8, "the height must be between 16 and 2048 pixels, got 8"),
        (4096, 64, "between 16 and 2048"),
        (None, 64, "enter a width"),
        (64, float("nan"), "enter a height"),
        (64.5, 64, "whole number"),
    ],
)
def test_custom_sizes_are_checked(width, height, message) -> None:
    with pytest.raises(UserFacingError, match=message.replace("(", r"\(")):
        resolve_size(CUSTOM_SIZE, width, height)


def test_unknown_preset() -> None:
    with pytest.raises(UserFacingError, match="unknown size"):
        resolve_size("1x1", None, None)


@pytest.mark.parametrize(
    ("image", "area", "expected"),
    [
        ((512, 512), 512 * 512, (512, 512)),
        ((1080, 1920), 512 * 512, (384, 688)),  # portrait phone photo
        ((1920, 1080), 512 * 512, (688, 384)),
        ((600, 400), 64 * 64, (80, 48)),
        ((10000, 10), 512 * 512, (2048, 16)),  # clamped to the allowed sides
        ((333, 777), 10, (16, 32)),  # tiny area: at least 16x16 pixels
    ],
)
def test_fit_to_image_keeps_the_aspect_ratio_in_multiples_of_16(image, area, expected) -> None:
    width, height = fit_to_image(*image, area=area)
    assert (width, height) == expected
    assert width % 16 == 0 and height % 16 == 0
    if 16 < width < 2048 and 16 < height < 2048:
        # rounding each side to 16 pixels moves the ratio by at most about 8 / side each
        assert math.isclose(width / height, image[0] / image[1], rel_tol=16 / min(width, height))


def test_fit_to_image_rejects_an_empty_image() -> None:
    with pytest.raises(UserFacingError, match="empty"):
        fit_to_image(0, 10)


def _converted(folder) -> None:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")


def test_model_discovery(tmp_path) -> None:
    assert [c.key for c in discover_models(tmp_path / "missing")] == [TINY_MODEL_KEY]
    _converted(tmp_path / "StableAvatar-1.3B-square")
    _converted(tmp_path / "mine" / "run-2")  # two levels down
    _converted(tmp_path / ".out.abc.partial")  # a conversion still being written
    _converted(tmp_path / "a" / "b" / "c")  # too deep
    (tmp_path / "Wan2.1-Fun-V1.1-1.3B-InP").mkdir()  # downloaded, not converted
    choices = discover_models(tmp_path)
    assert choices[0].is_random and "RANDOM" in choices[0].label
    assert [c.path for c in choices[1:]] == [
        tmp_path / "StableAvatar-1.3B-square",
        tmp_path / "mine" / "run-2",
    ]
    _converted(tmp_path / "demo")
    choices = discover_models(tmp_path)
    assert choices[0].path == tmp_path / "demo" and not choices[0].is_random and "Demo" in choices[0].label
    assert len(choices) == 3  # the demo is not listed twice, and the tiny model is not offered beside it


def test_a_model_folder_recommends_its_own_settings(tmp_path) -> None:
    from wan.generation_settings import PUBLISHED_SETTINGS, save_recommended_settings

    _converted(tmp_path / "demo")
    _converted(tmp_path / "released")
    save_recommended_settings(tmp_path / "demo", {"height": 64, "width": 64, "num_inference_steps": 10})
    demo, released = discover_models(tmp_path)
    assert demo.settings() == {**PUBLISHED_SETTINGS, "height": 64, "width": 64, "num_inference_steps": 10}
    assert released.settings() == PUBLISHED_SETTINGS  # no settings file: the published ones
    assert logic.size_choice(64, 64) == logic.CUSTOM_SIZE
    assert logic.size_choice(480, 832) == "480x832 (portrait)"
    (tmp_path / "demo" / "generation_settings.json").write_text('{"steps": 3}')
    with pytest.raises(UserFacingError, match="unknown settings"):
        demo.settings()


def test_only_listed_models_can_be_chosen(tmp_path) -> None:
    _converted(tmp_path / "m")
    choices = discover_models(tmp_path)
    assert resolve_model(str(tmp_path / "m"), choices).path == tmp_path / "m"
    with pytest.raises(UserFacingError, match="unknown model"):
        resolve_model("/etc", choices)
    (tmp_path / "m" / "model_index.json").unlink()
    with pytest.raises(UserFacingError, match="is gone"):
        resolve_model(str(tmp_path / "m"), choices)


def test_separation_is_offered_only_with_its_model_and_code(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(logic, "SEPARATION_MODULE", "json")  # stands in for wan.preprocess.separation
    assert separation_model(tmp_path) is None  # no model file
    (tmp_path / "Kim_Vocal_2.onnx").write_bytes(b"x")
    assert separation_model(tmp_path) == tmp_path / "Kim_Vocal_2.onnx"
    monkeypatch.setattr(logic, "SEPARATION_MODULE", "wan.no_such_module.separation")
    assert separation_model(tmp_path) is None  # no code


def test_seed() -> None:
    assert resolve_seed(42) == 42 and resolve_seed(0.0) == 0
    randoms = {resolve_seed(-1) for _ in range(5)} | {resolve_seed(None)}
    assert len(randoms) > 1 and all(0 <= s < 2**31 for s in randoms)
    for bad in (1.5, 2**40):
        with pytest.raises(UserFacingError, match="seed must be a whole number"):
            resolve_seed(bad)


def test_audio_source(tmp_path) -> None:
    assert resolve_audio(AUDIO_FROM_AUDIO, "a.wav", "v.mp4").name == "a.wav"
    assert resolve_audio(AUDIO_FROM_VIDEO, "a.wav", "v.mp4").name == "v.mp4"
    with pytest.raises(UserFacingError, match="upload or record"):
        resolve_audio(AUDIO_FROM_AUDIO, None, "v.mp4")
    with pytest.raises(UserFacingError, match="upload a video"):
        resolve_audio(AUDIO_FROM_VIDEO, "a.wav", None)


def test_settings() -> None:
    settings = make_settings(**PAGE_DEFAULTS)
    assert (settings.width, settings.height, settings.steps, settings.seed) == (64, 96, 2, 7)
    assert settings.prompt == "hi" and settings.negative_prompt == ""
    for field, value, message in [
        ("steps", 0, "steps must be between 1 and 200"),
        ("steps", 2.5, "steps must be a whole number"),
        ("audio_guidance", float("inf"), "audio guidance must be between"),
        ("clip_length", None, "clip length must be between"),
    ]:
        with pytest.raises(UserFacingError, match=message):
            make_settings(**{**PAGE_DEFAULTS, field: value})


def test_progress_counts_steps_times_windows() -> None:
    calls = [progress_fraction(s, w, 3, 2) for s in range(3) for w in range(2)]
    assert [done for done, _, _ in calls] == [1, 2, 3, 4, 5, 6]
    assert {total for _, total, _ in calls} == {6}
    assert calls[3][2] == "step 2/3, window 2/2" and calls[5][2] == "decoding the video and writing the mp4"


def test_error_messages() -> None:
    assert user_message(MissingFileError("image file not found: x.png; check the path")) == (
        "image file not found: x.png; check the path"
    )
    assert user_message(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")).startswith(
        "out of memory: try a smaller size"
    )
    message = user_message(RuntimeError("boom in /secret/server/path.py"))
    assert "RuntimeError" in message and "/secret" not in message and "server log" in message


def test_summary_shows_the_seed_and_settings() -> None:
    text = summary_markdown(make_settings(**PAGE_DEFAULTS), "Tiny", frames=50, windows=1, seconds=3.21)
    assert "**Seed: 7**" in text and "64x96" in text and "50 frames (2.00 s at 25 fps)" in text
    assert "text guidance: 3.0" in text and "weighting: uniform" in text and "prompt: hi" in text
