"""LoRA files: what the trainer writes and inference reads.

A LoRA folder holds `pytorch_lora_weights.safetensors` (peft LoRA weights of the DiT's linear layers, keys
prefixed `transformer.`, with the adapter config (rank, alpha, target modules) in the file's
`lora_adapter_metadata`, as diffusers' `save_lora_weights` writes it) and `audio_modules.safetensors` (the
audio adapter and audio projections, which LoRA training updates fully). Because the alpha travels with the
weights, every loader (`load_lora`, `inference.py --lora_path`, the app, diffusers' `load_lora_adapter`)
applies the trained scale alpha / rank.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import MissingFileError
from ..models import StableAvatarTransformer3DModel

LORA_FILE = "pytorch_lora_weights.safetensors"
AUDIO_FILE = "audio_modules.safetensors"
# Every linear layer of the DiT blocks except the audio projections (those train fully); anchored at the
# start so the audio adapter's own blocks (`audio_adapter.*.ffn`, trained fully) are never wrapped.
LORA_TARGETS = (
    r"blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)"
    r"|ffn\.net\.(0\.proj|2))"
)


def is_audio_parameter(name: str) -> bool:
    return name.startswith("audio_adapter.") or "_audio." in name


def lora_config(rank: int, alpha: float) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=LORA_TARGETS)


def save_lora(transformer: StableAvatarTransformer3DModel, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora = get_peft_model_state_dict(transformer)
    adapter = next(iter(transformer.peft_config))
    config = {
        f"transformer.{key}": sorted(value) if isinstance(value, set) else value
        for key, value in transformer.peft_config[adapter].to_dict().items()
    }
    save_file(
        {f"transformer.{k}": v.detach().contiguous().cpu() for k, v in lora.items()},
        str(folder / LORA_FILE),
        metadata={"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True)},
    )
    audio = {
        k: v.detach().contiguous().cpu()
        for k, v in transformer.state_dict().items()
        if is_audio_parameter(k) and "lora_" not in k
    }
    save_file(audio, str(folder / AUDIO_FILE))


def load_lora(
    transformer: StableAvatarTransformer3DModel, folder: str | Path, adapter_name: str = "stableavatar"
) -> None:
    """Attach a LoRA folder's adapter and its audio weights to `transformer`."""
    folder = Path(folder)
    for name in (LORA_FILE, AUDIO_FILE):
        if not (folder / name).is_file():
            raise MissingFileError(f"LoRA folder {folder} lacks {name}")
    with safe_open(str(folder / LORA_FILE), framework="pt") as handle:
        if LORA_ADAPTER_METADATA_KEY not in (handle.metadata() or {}):
            warnings.warn(
                f"{folder / LORA_FILE} carries no adapter config (written by an older version): it plays at "
                "scale 1.0, which is its trained strength only if it was trained with alpha = rank",
                stacklevel=2,
            )
    transformer.load_lora_adapter(
        str(folder), weight_name=LORA_FILE, prefix="transformer", adapter_name=adapter_name
    )
    audio = load_file(str(folder / AUDIO_FILE))
    missing = [
        k for k in transformer.state_dict() if is_audio_parameter(k) and "lora_" not in k and k not in audio
    ]
    if missing:
        raise MissingFileError(f"{folder / AUDIO_FILE} lacks {missing[0]}")
    with torch.no_grad():
        transformer.load_state_dict(audio, strict=False)
