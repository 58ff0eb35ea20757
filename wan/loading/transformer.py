"""Released transformer checkpoints (original Wan / StableAvatar key naming) -> `StableAvatarTransformer3DModel`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, MissingFileError
from ..models import StableAvatarTransformer3DModel, config_from_reference
from .state_dict import load_state_dict_file

# Ordered (pattern, replacement) pairs; the first that matches a key renames it. Patterns are anchored.
_BLOCK = r"blocks\.(\d+)\."
_ADAPTER_BLOCK = r"vocal_projector\.blocks\.(\d+)\."
_RENAMES: list[tuple[str, str]] = [
    # audio adapter (before the DiT block rules: its blocks are also called `blocks`)
    (r"vocal_projector\.proj_model\.proj\.", "audio_adapter.proj_in.0."),
    (r"vocal_projector\.proj_model\.norm\.", "audio_adapter.proj_in.1."),
    (r"vocal_projector\.proj_model\.proj_1\.", "audio_adapter.proj_in.0."),
    (r"vocal_projector\.proj_model\.norm_1\.", "audio_adapter.proj_in.1."),
    (r"vocal_projector\.proj_model\.proj_2\.", "audio_adapter.proj_in.2."),
    (r"vocal_projector\.proj_model\.norm_2\.", "audio_adapter.proj_in.3."),
    (_ADAPTER_BLOCK + r"modulation$", r"audio_adapter.blocks.\1.scale_shift_table"),
    (_ADAPTER_BLOCK + r"norm3\.", r"audio_adapter.blocks.\1.norm2."),
    (_ADAPTER_BLOCK + r"cross_attn\.([qkv])\.", r"audio_adapter.blocks.\1.attn.to_\2."),
    (_ADAPTER_BLOCK + r"cross_attn\.o\.", r"audio_adapter.blocks.\1.attn.to_out.0."),
    (_ADAPTER_BLOCK + r"cross_attn\.norm_([qk])\.", r"audio_adapter.blocks.\1.attn.norm_\2."),
    (_ADAPTER_BLOCK + r"ffn\.0\.", r"audio_adapter.blocks.\1.ffn.net.0.proj."),
    (_ADAPTER_BLOCK + r"ffn\.2\.", r"audio_adapter.blocks.\1.ffn.net.2."),
    (r"vocal_projector\.final_head\.modulation$", "audio_adapter.scale_shift_table"),
    (r"vocal_projector\.final_head\.final_proj\.", "audio_adapter.proj_out."),
    # DiT blocks
    (_BLOCK + r"modulation$", r"blocks.\1.scale_shift_table"),
    (_BLOCK + r"self_attn\.([qkv])\.", r"blocks.\1.attn1.to_\2."),
    (_BLOCK + r"self_attn\.o\.", r"blocks.\1.attn1.to_out.0."),
    (_BLOCK + r"self_attn\.norm_([qk])\.", r"blocks.\1.attn1.norm_\2."),
    (_BLOCK + r"cross_attn\.([qkv])\.", r"blocks.\1.attn2.to_\2."),
    (_BLOCK + r"cross_attn\.o\.", r"blocks.\1.attn2.to_out.0."),
    (_BLOCK + r"cross_attn\.norm_([qk])\.", r"blocks.\1.attn2.norm_\2."),
    (_BLOCK + r"cross_attn\.([kv])_img\.", r"blocks.\1.attn2.add_\2_proj."),
    (_BLOCK + r"cross_attn\.norm_k_img\.", r"blocks.\1.attn2.norm_added_k."),
    (_BLOCK + r"cross_attn\.([kv])_vocal\.", r"blocks.\1.attn2.to_\2_audio."),
    (_BLOCK + r"norm3\.", r"blocks.\1.norm2."),
    (_BLOCK + r"ffn\.0\.", r"blocks.\1.ffn.net.0.proj."),
    (_BLOCK + r"ffn\.2\.", r"blocks.\1.ffn.net.2."),
    # embeddings and head
    (r"patch_embedding\.", "patch_embedding."),
    (r"text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"time_projection\.1\.", "condition_embedder.time_proj."),
    (r"img_emb\.proj\.0\.", "condition_embedder.image_embedder.norm1."),
    (r"img_emb\.proj\.1\.", "condition_embedder.image_embedder.ff.net.0.proj."),
    (r"img_emb\.proj\.3\.", "condition_embedder.image_embedder.ff.net.2."),
    (r"img_emb\.proj\.4\.", "condition_embedder.image_embedder.norm2."),
    (r"head\.modulation$", "scale_shift_table"),
    (r"head\.head\.", "proj_out."),
]
_COMPILED = [(re.compile("^" + pattern), replacement) for pattern, replacement in _RENAMES]
# Prefixes that wrappers (DDP, DeepSpeed, accelerate) put in front of every key.
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
AUDIO_KEY_MARKERS = ("audio_adapter.", "_audio.")


def rename_reference_key(key: str) -> str:
    """One original-naming key -> our (diffusers) naming. Raises CheckpointError for an unknown key."""
    key = _strip_wrappers(key)
    for pattern, replacement in _COMPILED:
        renamed, count = pattern.subn(replacement, key, count=1)
        if count:
            return renamed
    raise CheckpointError(f"unexpected key in the transformer checkpoint: {key!r}")


def convert_reference_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole original-naming state dict -> our naming. A state dict already in our naming (one we saved)
    passes through with only wrapper prefixes removed."""
    ours = any("condition_embedder." in key for key in state_dict)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new_key = _strip_wrappers(key) if ours else rename_reference_key(key)
        if new_key in converted:
            raise CheckpointError(f"two checkpoint keys map onto {new_key!r} (one of them is {key!r})")
        converted[new_key] = tensor
    return converted


def _strip_wrappers(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def load_transformer_weights(model: StableAvatarTransformer3DModel, path: str | Path) -> None:
    """Replace `model`'s weights with a file in either naming (a released `.pt` or a trainer checkpoint)."""
    load_converted_state_dict(model, convert_reference_state_dict(load_state_dict_file(path)))


def load_converted_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], allow_missing_audio: bool = False
) -> None:
    """Copy a converted state dict into `model`, strictly.

    Every parameter of the model must be set and every key used, with the same shape; the first offender is
    named in a CheckpointError. `allow_missing_audio` lets a base Wan checkpoint (no audio weights) load,
    leaving the audio modules at their initialisation.
    """
    expected = model.state_dict()
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"unexpected key in the transformer checkpoint: {unexpected[0]!r} ({len(unexpected)} in all)"
        )
    missing = sorted(
        k for k in set(expected) - set(state_dict) if not (allow_missing_audio and _is_audio_key(k))
    )
    if missing:
        raise CheckpointError(
            f"the transformer checkpoint lacks {missing[0]!r} ({len(missing)} keys missing in all)"
        )
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"checkpoint key {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=False, assign=any(p.is_meta for p in model.parameters()))


def _is_audio_key(key: str) -> bool:
    return any(marker in key for marker in AUDIO_KEY_MARKERS)


def read_reference_config(base_model_dir: str | Path) -> dict:
    """Our config from a Fun-InP base folder's `config.json` (original naming)."""
    path = Path(base_model_dir) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{path} not found: pass the Wan2.1-Fun-V1.1-*-InP folder you downloaded")
    return config_from_reference(json.loads(path.read_text()))


def _find_base_weights(base_model_dir: Path) -> list[Path]:
    files = sorted(base_model_dir.glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        raise MissingFileError(f"no diffusion_pytorch_model*.safetensors in {base_model_dir}")
    return files


def load_stableavatar_transformer(
    base_model_dir: str | Path,
    transformer_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> StableAvatarTransformer3DModel:
    """Build the transformer from the downloaded layout.

    Args:
        base_model_dir: `Wan2.1-Fun-V1.1-1.3B-InP/` (its `config.json`; its weights when no transformer_path).
        transformer_path: `StableAvatar-1.3B/transformer3d-square.pt` (or `.safetensors`): the full state
            dict, base and audio. Without it the base weights load and the audio modules stay initialised.
        dtype: dtype of the returned model's weights (diffusers' fp32-sensitive modules stay fp32).
    """
    base_model_dir = Path(base_model_dir)
    config = read_reference_config(base_model_dir)
    if transformer_path is not None:
        state_dict = convert_reference_state_dict(load_state_dict_file(transformer_path))
        allow_missing_audio = False
    else:
        state_dict = {}
        for file in _find_base_weights(base_model_dir):
            state_dict.update(convert_reference_state_dict(load_state_dict_file(file)))
        allow_missing_audio = True
    config.update(_widths_from_weights(state_dict))
    if allow_missing_audio:
        # The audio modules are absent from a base checkpoint and keep their (zero-output) initialisation.
        model = StableAvatarTransformer3DModel(**config)
    else:
        with torch.device("meta"):
            model = StableAvatarTransformer3DModel(**config)
    load_converted_state_dict(model, state_dict, allow_missing_audio=allow_missing_audio)
    model.rebuild_buffers()
    return _cast(model, dtype)


def _widths_from_weights(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Config entries that the weights determine (CLIP width, audio projection stages), so home-made
    checkpoints of other sizes load too."""
    widths: dict = {}
    image_norm = state_dict.get("condition_embedder.image_embedder.norm1.weight")
    if image_norm is not None:
        widths["image_dim"] = image_norm.shape[0]
    stages = sorted(
        int(k.split(".")[2]) for k in state_dict if re.fullmatch(r"audio_adapter\.proj_in\.\d+\.weight", k)
    )
    linear_stages = [i for i in stages if state_dict[f"audio_adapter.proj_in.{i}.weight"].ndim == 2]
    if linear_stages:
        widths["audio_proj_dims"] = tuple(
            state_dict[f"audio_adapter.proj_in.{i}.weight"].shape[0] for i in linear_stages
        )
        widths["audio_dim"] = state_dict["audio_adapter.proj_in.0.weight"].shape[1]
    return widths


def _cast(model: StableAvatarTransformer3DModel, dtype: torch.dtype) -> StableAvatarTransformer3DModel:
    """Cast to `dtype`, keeping in float32 what diffusers' `from_pretrained` keeps there."""
    keep = set(model._keep_in_fp32_modules)
    for name, parameter in model.named_parameters():
        parameter.data = parameter.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model.eval()
