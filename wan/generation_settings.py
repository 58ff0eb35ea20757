"""Generation settings a model folder recommends (`generation_settings.json`), over the published ones.

The released models were trained at 512x512 (and 480x832 / 832x480) with 81-frame windows and sample well
with 50 steps and guidance 3 (text) / 5 (audio); a small model such as the demo model is trained at other
sizes and says so in its folder, so the app and scripts can start from what the model was made for.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserFacingError

SETTINGS_FILE = "generation_settings.json"
SAMPLE_RATE = 16000  # Hz: what wav2vec2 takes and every audio path of the project resamples to
PUBLISHED_FPS = 25  # video frames per second the released models were trained at

# Keyword arguments of StableAvatarPipeline.__call__, as the published inference script sets them.
PUBLISHED_SETTINGS: dict[str, float | int] = {
    "height": 512,
    "width": 512,
    "num_inference_steps": 50,
    "text_guidance_scale": 3.0,
    "audio_guidance_scale": 5.0,
    "clip_length": 81,
    "overlap": 5,
}


def recommended_settings(model_dir: str | Path | None) -> dict[str, float | int]:
    """`PUBLISHED_SETTINGS` updated with the folder's `generation_settings.json` (when it has one)."""
    settings = dict(PUBLISHED_SETTINGS)
    path = Path(model_dir) / SETTINGS_FILE if model_dir is not None else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UserFacingError(f"{path} is not valid JSON ({error}); fix or delete it") from None
        unknown = sorted(set(stored) - set(PUBLISHED_SETTINGS))
        if unknown:
            raise UserFacingError(
                f"{path} has unknown settings {unknown}; known: {sorted(PUBLISHED_SETTINGS)}"
            )
        settings.update(stored)
    return settings


def save_recommended_settings(model_dir: str | Path, settings: dict[str, float | int]) -> Path:
    """Write `settings` (a subset of `PUBLISHED_SETTINGS`' keys) to the folder's settings file."""
    unknown = sorted(set(settings) - set(PUBLISHED_SETTINGS))
    if unknown:
        raise ValueError(f"unknown generation settings {unknown}")
    path = Path(model_dir) / SETTINGS_FILE
    path.write_text(json.dumps(settings, indent=1) + "\n")
    return path
