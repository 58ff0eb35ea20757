"""The umT5 text encoder (`models_t5_umt5-xxl-enc-bf16.pth`, original Wan naming) as
`transformers.UMT5EncoderModel`.

Both compute the same thing: RMS layer norms (eps 1e-6, no mean subtraction, no bias), un-scaled
dot-product attention with a learned relative position bias in every layer (bidirectional buckets, max
distance 128), gated tanh-GELU feed-forward `fc2(fc1(x) * gelu(gate(x)))`, no biases anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from transformers import UMT5Config, UMT5EncoderModel

from .state_dict import Source, StateDictOrPath, load_converted

RELATIVE_MAX_DISTANCE = 128
RELEASED_T5_REFERENCE_CONFIG: dict[str, Any] = {
    "vocab": 256384,
    "dim": 4096,
    "dim_attn": 4096,
    "dim_ffn": 10240,
    "num_heads": 64,
    "num_layers": 24,
    "num_buckets": 32,
    "shared_pos": False,
}

_LAYER_PARTS = {
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.0.layer_norm.weight": "norm1.weight",
    # HF applies the activation to wi_0: Wan's `gate` (GELU branch) is wi_0, its linear `fc1` is wi_1.
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
}


def umt5_config(reference: Mapping[str, Any] | None = None) -> UMT5Config:
    """`UMT5Config` from a Wan T5 config (`vocab`, `dim`, `dim_attn`, `dim_ffn`, `num_heads`, `num_layers`,
    `num_buckets`); `None` gives the released umT5-XXL encoder."""
    reference = dict(RELEASED_T5_REFERENCE_CONFIG if reference is None else reference)
    if reference.get("shared_pos", False):
        raise ValueError(
            "a T5 with one shared position bias is not umT5; only per-layer biases are supported"
        )
    num_heads = int(reference["num_heads"])
    if int(reference["dim_attn"]) % num_heads:
        raise ValueError(f"dim_attn {reference['dim_attn']} is not a multiple of num_heads {num_heads}")
    return UMT5Config(
        vocab_size=int(reference["vocab"]),
        d_model=int(reference["dim"]),
        d_kv=int(reference["dim_attn"]) // num_heads,
        d_ff=int(reference["dim_ffn"]),
        num_layers=int(reference["num_layers"]),
        num_heads=num_heads,
        relative_attention_num_buckets=int(reference["num_buckets"]),
        relative_attention_max_distance=RELATIVE_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",  # gelu_new: the tanh approximation Wan uses
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
    )


def _t5_source(target: str) -> Source:
    """Released name of a `UMT5EncoderModel` parameter (the tied input embedding has two names)."""
    if target in ("shared.weight", "encoder.embed_tokens.weight"):
        return "token_embedding.weight", None
    if target == "encoder.final_layer_norm.weight":
        return "norm.weight", None
    if (m := re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", target)) and m[2] in _LAYER_PARTS:
        return f"blocks.{m[1]}.{_LAYER_PARTS[m[2]]}", None
    raise RuntimeError(f"no released umT5 key is known for UMT5EncoderModel parameter '{target}'")


def load_umt5_encoder(
    path_or_state_dict: StateDictOrPath,
    config: UMT5Config | None = None,
    dtype: torch.dtype = torch.float32,
) -> UMT5EncoderModel:
    """Load `models_t5_umt5-xxl-enc-bf16.pth` (or its state dict) into `UMT5EncoderModel`.

    `config`: see `umt5_config`; `None` means the released umT5-XXL. Call the model with `input_ids` and
    `attention_mask` [B, L]; `last_hidden_state` [B, L, dim] is what Wan's encoder returns (padded
    positions included).
    """
    config = umt5_config() if config is None else config
    model = load_converted(
        lambda: UMT5EncoderModel(config), path_or_state_dict, _t5_source, dtype=dtype, what="umT5"
    )
    # Both embedding names got the same tensor as separate parameters; one parameter keeps `.to()` from
    # copying the 256k x 4096 table twice.
    model.tie_weights()
    return model
