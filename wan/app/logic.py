"""The app's pure logic, free of Gradio and of torch: sizes, model discovery, seeds, input checks, error
messages and the summary of a run. Everything here is unit-tested without a browser."""

from __future__ import annotations

import importlib.util
import math
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserFacingError
from ..generation_settings import recommended_settings

SIZE_MULTIPLE = 16
MIN_SIDE = 16
MAX_SIDE = 2048
CUSTOM_SIZE = "Custom"
# label -> (width, height); the three sizes the released models were trained at.
SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "512x512 (square)": (512, 512),
    "480x832 (portrait)": (480, 832),
    "832x480 (landscape)": (832, 480),
}
MAX_STEPS = 200
MAX_GUIDANCE = 20.0
MAX_SEED = 2**32 - 1

TINY_MODEL_KEY = "tiny-random"
DEMO_MODEL_DIR = "demo"
SEPARATION_MODEL_FILE = "Kim_Vocal_2.onnx"
SEPARATION_MODULE = "wan.preprocess.separation"

AUDIO_FROM_AUDIO = "Audio file or microphone"
AUDIO_FROM_VIDEO = "Audio track of a video"
AUDIO_SOURCES = (AUDIO_FROM_AUDIO, AUDIO_FROM_VIDEO)


# ------------------------------------------------------------------------------------------------ sizes


def nearest_multiples(value: float, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """The multiples of `multiple` just below and just above `value` (equal when it is one)."""
    low = max(multiple, math.floor(value / multiple) * multiple)
    return low, max(low, math.ceil(value / multiple) * multiple)


def check_side(name: str, value: float | None) -> int:
    """A width or height typed by the user, as an int; a readable UserFacingError when it is unusable."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise UserFacingError(f"enter a {name} in pixels (a multiple of {SIZE_MULTIPLE}, e.g. 512)")
    if value != int(value):
        raise UserFacingError(f"the {name} must be a whole number of pixels, got {value}")
    side = int(value)
    if not MIN_SIDE <= side <= MAX_SIDE:
        raise UserFacingError(f"the {name} must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {side}")
    if side % SIZE_MULTIPLE:
        low, high = nearest_multiples(side)
        raise UserFacingError(
            f"the {name} must be a multiple of {SIZE_MULTIPLE}, got {side}; try {low} or {high}"
        )
    return side


def resolve_size(preset: str, width: float | None, height: float | None) -> tuple[int, int]:
    """(width, height) for a preset label, or the checked custom size for `CUSTOM_SIZE`."""
    if preset in SIZE_PRESETS:
        return SIZE_PRESETS[preset]
    if preset != CUSTOM_SIZE:
        raise UserFacingError(
            f"unknown size {preset!r}; choose one of {', '.join([*SIZE_PRESETS, CUSTOM_SIZE])}"
        )
    return check_side("width", width), check_side("height", height)


def fit_to_image(image_width: int, image_height: int, area: float = 512 * 512) -> tuple[int, int]:
    """A size with the image's aspect ratio and about `area` pixels, both sides multiples of 16 within
    [16, 2048] (so the reference is not stretched)."""
    if image_width <= 0 or image_height <= 0:
        raise UserFacingError(f"the image is empty ({image_width}x{image_height} pixels)")
    area = min(max(area, MIN_SIDE * MIN_SIDE), MAX_SIDE * MAX_SIDE)
    aspect = image_width / image_height
    width, height = math.sqrt(area * aspect), math.sqrt(area / aspect)

    def snap(side: float) -> int:
        return int(min(MAX_SIDE, max(MIN_SIDE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)))

    return snap(width), snap(height)


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model menu: `key` is what the page sends back, `path` None for the tiny model."""

    key: str
    label: str
    path: Path | None

    @property
    def is_random(self) -> bool:
        return self.path is None

    def settings(self) -> dict[str, float | int]:
        """The size, steps, guidance and windows this model was made for (the published ones by default)."""
        return recommended_settings(self.path)


def size_choice(width: int, height: int) -> str:
    """The size preset label for (width, height), or `CUSTOM_SIZE`."""
    return next((label for label, size in SIZE_PRESETS.items() if size == (width, height)), CUSTOM_SIZE)


def discover_models(checkpoints_dir: str | Path) -> list[ModelChoice]:
    """The model menu: first the demo model (`checkpoints/demo`) or, without it, the tiny random model;
    then every converted folder (one holding `model_index.json`) up to two levels below `checkpoints_dir`.
    Hidden folders (such as a conversion still being written) are skipped."""
    root = Path(checkpoints_dir)
    demo = root / DEMO_MODEL_DIR
    if (demo / "model_index.json").is_file():
        first = ModelChoice(str(demo), f"Demo model ({demo})", demo)
    else:
        first = ModelChoice(TINY_MODEL_KEY, "Tiny RANDOM model (no trained weights: noise, not a face)", None)
    found = {
        index.parent
        for pattern in ("*/model_index.json", "*/*/model_index.json")
        for index in root.glob(pattern)
        if index.is_file()
    }
    others = sorted(
        folder
        for folder in found
        if folder != demo and not any(part.startswith(".") for part in folder.relative_to(root).parts)
    )
    return [first] + [
        ModelChoice(str(folder), f"{folder.relative_to(root)} ({folder})", folder) for folder in others
    ]


def resolve_model(key: str | None, choices: list[ModelChoice]) -> ModelChoice:
    """The menu entry for `key`; only discovered folders can be loaded, never an arbitrary path."""
    for choice in choices:
        if choice.key == key:
            if choice.path is not None and not (choice.path / "model_index.json").is_file():
                raise UserFacingError(
                    f"the model folder {choice.path} is gone; restart the app to rescan checkpoints"
                )
            return choice
    raise UserFacingError(f"unknown model {key!r}; choose one from the list")


def separation_model(checkpoints_dir: str | Path) -> Path | None:
    """The vocal-separation model file when it and the separation code are both present, else None (the
    page then hides the option)."""
    path = Path(checkpoints_dir) / SEPARATION_MODEL_FILE
    if not path.is_file():
        return None
    try:
        found = importlib.util.find_spec(SEPARATION_MODULE) is not None
    except ModuleNotFoundError:
        found = False
    return path if found else None


# ------------------------------------------------------------------------------------------------ inputs


def resolve_seed(value: float | None) -> int:
    """The seed to use: empty or negative means a fresh random one (shown after the run)."""
    if value is None or value < 0:
        return secrets.randbelow(2**31 - 1)
    if value != int(value) or value > MAX_SEED:
        raise UserFacingError(
            f"the seed must be a whole number from 0 to {MAX_SEED} (or -1 for random), got {value}"
        )
    return int(value)


def resolve_audio(source: str, audio_path: str | None, video_path: str | None) -> Path:
    """The file the driving audio is read from, by the chosen source."""
    if source == AUDIO_FROM_VIDEO:
        if not video_path:
            raise UserFacingError("upload a video to take the audio from, or switch the audio source")
        return Path(video_path)
    if source != AUDIO_FROM_AUDIO:
        raise UserFacingError(f"unknown audio source {source!r}")
    if not audio_path:
        raise UserFacingError("upload or record the driving audio (speech or singing)")
    return Path(audio_path)


@dataclass(frozen=True)
class Settings:
    """What one generation is asked to do (after the page's values were checked)."""

    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    text_guidance: float
    audio_guidance: float
    clip_length: int
    overlap: int
    weighting: str
    seed: int
    memory_mode: str
    separate_vocals: bool = False
    solver: str = "euler"
    step_cache: float | None = None  # first-block step-cache threshold; None: off


def check_number(name: str, value: float | None, low: float, high: float, whole: bool = False) -> float:
    if value is None or not math.isfinite(value) or not low <= value <= high:
        raise UserFacingError(f"{name} must be between {low:g} and {high:g}, got {value}")
    if whole and value != int(value):
        raise UserFacingError(f"{name} must be a whole number, got {value}")
    return int(value) if whole else float(value)


def make_settings(
    *,
    model: str,
    prompt: str | None,
    negative_prompt: str | None,
    preset: str,
    width: float | None,
    height: float | None,
    steps: float | None,
    text_guidance: float | None,
    audio_guidance: float | None,
    clip_length: float | None,
    overlap: float | None,
    weighting: str,
    seed: float | None,
    memory_mode: str,
    separate_vocals: bool = False,
    solver: str = "euler",
    step_cache: float | None = 0.0,
) -> Settings:
    """Check the page's values and resolve the size and seed. Clip length and overlap are checked in
    full by the pipeline (before any model is loaded)."""
    width_px, height_px = resolve_size(preset, width, height)
    return Settings(
        model=model,
        prompt=(prompt or "").strip(),
        negative_prompt=(negative_prompt or "").strip(),
        width=width_px,
        height=height_px,
        steps=int(check_number("steps", steps, 1, MAX_STEPS, whole=True)),
        text_guidance=check_number("text guidance", text_guidance, 0, MAX_GUIDANCE),
        audio_guidance=check_number("audio guidance", audio_guidance, 0, MAX_GUIDANCE),
        clip_length=int(check_number("clip length", clip_length, 5, 1001, whole=True)),
        overlap=int(check_number("overlap", overlap, 0, 250, whole=True)),
        weighting=weighting,
        seed=resolve_seed(seed),
        memory_mode=memory_mode,
        separate_vocals=bool(separate_vocals),
        solver=solver,
        step_cache=check_number("step cache", step_cache or 0.0, 0, 1) or None,  # 0: off
    )


# ------------------------------------------------------------------------------------------------ output


def progress_fraction(step: int, window: int, steps: int, windows: int) -> tuple[int, int, str]:
    """(done, total, text) for the pipeline's callback(step, window, steps, windows), called after each
    window of each step: the bar counts steps x windows; after the last one the video is decoded."""
    done, total = step * windows + window + 1, steps * windows
    if done == total:  # the pipeline decodes next, with no further callbacks
        return done, total, "decoding the video and writing the mp4"
    return done, total, f"step {step + 1}/{steps}, window {window + 1}/{windows}"


def user_message(error: BaseException) -> str:
    """The one line shown in the page for an error: the UserFacingError's own text, advice for running
    out of memory, and for anything else only its type (the traceback goes to the server log)."""
    if isinstance(error, UserFacingError):
        return str(error)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return (
            "out of memory: try a smaller size, a shorter clip length, or the memory mode "
            "model_cpu_offload or sequential_cpu_offload"
        )
    return f"generation failed ({type(error).__name__}); the server log has the details"


def summary_markdown(
    settings: Settings,
    model_label: str,
    frames: int,
    windows: int,
    seconds: float,
    fps: int = 25,
    default_negative_prompt: str | None = None,
) -> str:
    """The seed and settings of a finished run, as shown under the video (the long default negative
    prompt is named, not repeated)."""
    lines = [
        f"**Seed: {settings.seed}** (type it in the Seed box to make this video again)",
        "",
        f"- model: {model_label}",
        f"- video: {frames} frames ({frames / fps:.2f} s at {fps} fps), {settings.width}x{settings.height}",
        f"- sampling: {windows} window(s) x {settings.steps} steps in {seconds:.1f} s",
    ]
    for name in (
        "text_guidance",
        "audio_guidance",
        "clip_length",
        "overlap",
        "weighting",
        "memory_mode",
        "solver",
        "step_cache",
        "separate_vocals",
        "prompt",
        "negative_prompt",
    ):
        value = getattr(settings, name)
        if name == "negative_prompt" and value == default_negative_prompt:
            value = "the default (published) one"
        lines.append(f"- {name.replace('_', ' ')}: {value}")
    return "\n".join(lines)
