"""The wav2vec2 audio encoder (a Hugging Face `wav2vec2-base-960h` folder) (the features: `wan.pipeline.encoders.encode_audio`)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from ..errors import MissingFileError
from .state_dict import library_load_errors

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_wav2vec2(
    folder: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[Wav2Vec2Model, Wav2Vec2FeatureExtractor]:
    """Load the model (`config.json` + weights) and feature extractor (`preprocessor_config.json`) from a
    local folder; nothing is downloaded. A CTC checkpoint works too (its head is dropped).

    The model is returned in eval mode with gradients off (it is always frozen).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"wav2vec2 folder not found: {folder}")
    for name in ("config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise MissingFileError(f"wav2vec2 folder {folder} lacks {name}")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise MissingFileError(f"wav2vec2 folder {folder} holds no weights ({' or '.join(_WEIGHT_FILES)})")
    with library_load_errors(folder):
        model = Wav2Vec2Model.from_pretrained(folder, local_files_only=True, dtype=dtype)
    feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
    return model.eval().requires_grad_(False), feature_extractor
