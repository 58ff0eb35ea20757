"""Configurations of the released StableAvatar transformers, and translation from the reference config."""

from __future__ import annotations

from typing import Any

# Wan2.1-Fun-V1.1-1.3B-InP + StableAvatar-1.3B (audio adapter 1536 wide, one projection stage).
STABLEAVATAR_1_3B: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 36,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "eps": 1e-6,
    "image_dim": 1280,
    "added_kv_proj_dim": 1536,
    "audio_dim": 768,
    "audio_proj_dims": (1536,),
}

# Wan2.1 I2V 14B + StableAvatar-14B (adapter 5120 wide, 768 -> 2048 -> 5120 projection).
STABLEAVATAR_14B: dict[str, Any] = {
    **STABLEAVATAR_1_3B,
    "num_attention_heads": 40,
    "ffn_dim": 13824,
    "num_layers": 40,
    "added_kv_proj_dim": 5120,
    "audio_proj_dims": (2048, 5120),
}

# Width of the first of two audio projection stages (the 14B layout).
_TWO_STAGE_FIRST_WIDTH = 2048


def config_from_reference(
    reference: dict[str, Any], two_stage_audio_projection: bool | None = None
) -> dict[str, Any]:
    """Our constructor arguments from the published code's (`dim`, `ffn_dim`, `num_heads`, `in_dim`, ...).

    `two_stage_audio_projection` None: two stages (768 -> 2048 -> dim) for models wider than 2048, as released.
    """
    dim = int(reference["dim"])
    heads = int(reference["num_heads"])
    if reference.get("model_type", "i2v") != "i2v":
        raise ValueError("StableAvatar builds on the image-to-video Wan model (model_type 'i2v')")
    if two_stage_audio_projection is None:
        two_stage_audio_projection = dim > _TWO_STAGE_FIRST_WIDTH
    return {
        "patch_size": tuple(reference.get("patch_size", (1, 2, 2))),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": int(reference.get("in_dim", 36)),
        "out_channels": int(reference.get("out_dim", 16)),
        "text_dim": int(reference.get("text_dim", 4096)),
        "freq_dim": int(reference.get("freq_dim", 256)),
        "ffn_dim": int(reference["ffn_dim"]),
        "num_layers": int(reference["num_layers"]),
        "eps": float(reference.get("eps", 1e-6)),
        "image_dim": 1280,
        "added_kv_proj_dim": dim,
        "audio_dim": 768,
        "audio_proj_dims": (_TWO_STAGE_FIRST_WIDTH, dim) if two_stage_audio_projection else (dim,),
    }


# A small model of the same architecture, for tests, benchmarks and trying the program out. Its width (96)
# exceeds a latent patch's 64 values, so it can represent the identity and really learn.
TINY: dict[str, Any] = {
    **STABLEAVATAR_1_3B,
    "num_attention_heads": 2,
    "attention_head_dim": 48,
    "text_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "image_dim": 32,
    "added_kv_proj_dim": 96,
    "audio_dim": 768,
    "audio_proj_dims": (96,),
    "audio_adapter_heads": 2,
}
