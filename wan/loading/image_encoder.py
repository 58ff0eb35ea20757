"""The open-clip ViT-H/14 vision tower (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, keys
`visual.*`) as `transformers.CLIPVisionModel` (the encoding itself: `wan.pipeline.encoders.encode_image`).

Both towers compute patch conv (no bias) + class token + learned positions, then the pre-norm (`ln_pre`,
HF `pre_layrnorm`), then pre-norm blocks with biased q/k/v, 1/sqrt(head_dim) attention and a GELU MLP.
The released file also holds the XLM-R text tower, the learned logit scale and the vision projection
`visual.head`; Wan uses none of them, so they are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from .state_dict import Source, StateDictOrPath, load_converted

RELEASED_CLIP_REFERENCE_CONFIG: dict[str, Any] = {
    "image_size": 224,
    "patch_size": 14,
    "dim": 1280,
    "mlp_ratio": 4,
    "num_heads": 16,
    "num_layers": 32,
    "pool_type": "token",
    "pre_norm": True,
    "post_norm": False,
    "activation": "gelu",
    "norm_eps": 1e-5,
}

_LAYER_PARTS = {
    "self_attn.out_proj": "attn.proj",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}
_QKV_INDEX = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


def clip_vision_config(reference: Mapping[str, Any] | None = None) -> CLIPVisionConfig:
    """`CLIPVisionConfig` from a Wan/open-clip vision config (`image_size`, `patch_size`, `dim`,
    `mlp_ratio`, `num_heads`, `num_layers`, `norm_eps`, `activation`); `None`, and any key left out, take
    the released ViT-H/14 values."""
    reference = {**RELEASED_CLIP_REFERENCE_CONFIG, **(reference or {})}
    # CLIPVisionModel's layout: class token, pre-norm before the blocks, pre-norm blocks.
    if reference["pool_type"] != "token" or not reference["pre_norm"] or reference["post_norm"]:
        raise ValueError(
            "only class-token ViTs with a pre-norm and pre-norm blocks are supported, got "
            f"pool_type={reference['pool_type']} pre_norm={reference['pre_norm']} post_norm={reference['post_norm']}"
        )
    if reference["activation"] not in ("gelu", "quick_gelu"):
        raise ValueError(f"unsupported activation {reference['activation']!r}")
    dim = int(reference["dim"])
    return CLIPVisionConfig(
        hidden_size=dim,
        intermediate_size=int(dim * reference["mlp_ratio"]),
        num_hidden_layers=int(reference["num_layers"]),
        num_attention_heads=int(reference["num_heads"]),
        image_size=int(reference["image_size"]),
        patch_size=int(reference["patch_size"]),
        hidden_act=reference["activation"],  # "gelu" is the exact (erf) GELU in both
        layer_norm_eps=float(reference["norm_eps"]),
        attention_dropout=0.0,
    )


def _clip_source(target: str) -> Source:
    """Released name (and reshaping) of a `CLIPVisionModel` parameter."""
    simple = {
        "embeddings.patch_embedding.weight": "visual.patch_embedding.weight",
        "pre_layrnorm.weight": "visual.pre_norm.weight",
        "pre_layrnorm.bias": "visual.pre_norm.bias",
        # Unused by Wan (it stops before the last block), mapped so every parameter is the released one.
        "post_layernorm.weight": "visual.post_norm.weight",
        "post_layernorm.bias": "visual.post_norm.bias",
    }
    if target in simple:
        return simple[target], None
    if target == "embeddings.class_embedding":  # [1, 1, dim] -> [dim]
        return "visual.cls_embedding", lambda w: w.reshape(-1)
    if target == "embeddings.position_embedding.weight":  # [1, 1 + patches, dim] -> [1 + patches, dim]
        return "visual.pos_embedding", lambda w: w.reshape(w.shape[-2], w.shape[-1])
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv]_proj)\.(weight|bias)", target):
        index = _QKV_INDEX[m[2]]  # the fused projection's rows are [q; k; v]
        return f"visual.transformer.{m[1]}.attn.to_qkv.{m[3]}", lambda w: w.chunk(3, dim=0)[index]
    if (m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", target)) and m[2] in _LAYER_PARTS:
        return f"visual.transformer.{m[1]}.{_LAYER_PARTS[m[2]]}.{m[3]}", None
    raise RuntimeError(f"no released open-clip key is known for CLIPVisionModel parameter '{target}'")


def _ignored(key: str) -> bool:
    """Released keys Wan does not use: the text tower, the logit scale and the vision projection."""
    return not key.startswith("visual.") or key == "visual.head"


def load_clip_vision_encoder(
    path_or_state_dict: StateDictOrPath,
    config: CLIPVisionConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> CLIPVisionModel:
    """Load the vision tower of the released open-clip file (or its state dict) into `CLIPVisionModel`.

    `config`: see `clip_vision_config`; `None` means the released ViT-H/14 (224 px, 257 tokens x 1280).
    """
    config = clip_vision_config() if config is None else config
    return load_converted(
        lambda: CLIPVisionModel(config),
        path_or_state_dict,
        _clip_source,
        ignored=_ignored,
        dtype=dtype,
        what="CLIP vision tower",
    )
