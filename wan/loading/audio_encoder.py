"""The wav2vec2 audio encoder (a Hugging Face `wav2vec2-base-960h` folder) and its 16 kHz features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from ..errors import MissingFileError
from ..generation_settings import SAMPLE_RATE

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
    model = Wav2Vec2Model.from_pretrained(folder, local_files_only=True, dtype=dtype)
    feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
    return model.eval().requires_grad_(False), feature_extractor


@torch.no_grad()
def encode_audio(
    model: Wav2Vec2Model,
    feature_extractor: Wav2Vec2FeatureExtractor,
    waveform_16k: np.ndarray | torch.Tensor,
) -> torch.Tensor:
    """wav2vec2 `last_hidden_state` [1, Na, hidden] (768 released) of a mono 16 kHz waveform [S].

    The feature extractor normalises the whole chunk to zero mean and unit variance (as configured in the
    folder); Na is about 50 per second (about S / 320 - 1 with the released conv stack).
    """
    if isinstance(waveform_16k, torch.Tensor):
        waveform_16k = waveform_16k.detach().float().cpu().numpy()
    waveform = np.asarray(waveform_16k, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform [S], got shape {waveform.shape}")
    inputs = feature_extractor(waveform, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
    parameter = next(model.parameters())
    # The whole model, not its submodules: only the top-level call assembles the outputs.
    return model(inputs.to(parameter.device, parameter.dtype)).last_hidden_state
