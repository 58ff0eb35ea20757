"""The Wan causal video VAE (`Wan2.1_VAE.pth`, original Wan naming, no prefix) as `diffusers.AutoencoderKLWan`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import AutoencoderKLWan

from .state_dict import StateDictOrPath, load_converted

# Per-channel statistics of the released VAE's posterior mean (z_dim 16), used to normalise latents.
RELEASED_LATENTS_MEAN = [
    -0.7571,
    -0.7089,
    -0.9113,
    0.1075,
    -0.1745,
    0.9653,
    -0.1517,
    1.5508,
    0.4134,
    -0.0715,
    0.5517,
    -0.3632,
    -0.1922,
    -0.9497,
    0.2503,
    -0.2921,
]
RELEASED_LATENTS_STD = [
    2.8184,
    1.4541,
    2.3275,
    2.6558,
    1.2196,
    1.7708,
    2.6052,
    2.0743,
    3.2687,
    2.1526,
    2.8652,
    1.5579,
    1.6382,
    1.1253,
    2.8251,
    1.9160,
]
RELEASED_VAE_REFERENCE_CONFIG: dict[str, Any] = {
    "dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}


def wan_vae_config(
    reference: Mapping[str, Any] | None = None,
    latents_mean: Sequence[float] | None = None,
    latents_std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """`AutoencoderKLWan` arguments from a reference config (`dim`, `z_dim`, `dim_mult`, `num_res_blocks`,
    `attn_scales`, `temperal_downsample`); `None` gives the released VAE (base 96, 16 latent channels).

    `latents_mean`/`latents_std` (z_dim values each) default to `reference["latents_mean"/"latents_std"]`,
    then to the released statistics.
    """
    reference = dict(RELEASED_VAE_REFERENCE_CONFIG if reference is None else reference)
    if reference.get("attn_scales"):
        raise ValueError("Wan VAE configs with attention in the down/up blocks are not supported")
    z_dim = int(reference["z_dim"])
    mean = latents_mean or reference.get("latents_mean") or RELEASED_LATENTS_MEAN
    std = latents_std or reference.get("latents_std") or RELEASED_LATENTS_STD
    if len(mean) != z_dim or len(std) != z_dim:
        raise ValueError(f"latents_mean/latents_std need {z_dim} values, got {len(mean)}/{len(std)}")
    return {
        "base_dim": int(reference["dim"]),
        "z_dim": z_dim,
        "dim_mult": list(reference["dim_mult"]),
        "num_res_blocks": int(reference["num_res_blocks"]),
        "attn_scales": [],
        "temperal_downsample": list(reference["temperal_downsample"]),
        "dropout": 0.0,
        "latents_mean": [float(v) for v in mean],
        "latents_std": [float(v) for v in std],
    }


_RESNET_PARTS = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.weight": "residual.2.weight",
    "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma",
    "conv2.weight": "residual.6.weight",
    "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight",
    "conv_shortcut.bias": "shortcut.bias",
}


def _vae_source_name(target: str, num_res_blocks: int) -> str:
    """Released name of an `AutoencoderKLWan` parameter (released layout: flat `downsamples`/`upsamples`
    lists; `middle` = resnet, attention, resnet; `head` = norm, SiLU, conv; `conv1`/`conv2` around z)."""
    fixed = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    if m := re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", target):
        return f"{fixed[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.conv_in\.(weight|bias)", target):
        return f"{m[1]}.conv1.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.norm_out\.gamma", target):
        return f"{m[1]}.head.0.gamma"
    if m := re.fullmatch(r"(encoder|decoder)\.conv_out\.(weight|bias)", target):
        return f"{m[1]}.head.2.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", target):
        return f"{m[1]}.middle.1.{m[2]}"
    if (m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", target)) and m[
        3
    ] in _RESNET_PARTS:
        return f"{m[1]}.middle.{2 * int(m[2])}.{_RESNET_PARTS[m[3]]}"
    # The encoder's down_blocks already mirror the released flat list; resample parts keep their names.
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", target):
        return f"encoder.downsamples.{m[1]}.{_RESNET_PARTS.get(m[2], m[2])}"
    # Decoder level l holds num_res_blocks + 1 resnets, then (except the last level) one upsampler.
    per_level = num_res_blocks + 2
    if (m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", target)) and m[
        3
    ] in _RESNET_PARTS:
        return f"decoder.upsamples.{int(m[1]) * per_level + int(m[2])}.{_RESNET_PARTS[m[3]]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", target):
        return f"decoder.upsamples.{int(m[1]) * per_level + num_res_blocks + 1}.{m[2]}"
    raise RuntimeError(f"no released Wan VAE key is known for AutoencoderKLWan parameter '{target}'")


def load_wan_vae(
    path_or_state_dict: StateDictOrPath,
    config: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> AutoencoderKLWan:
    """Load `Wan2.1_VAE.pth` (or its state dict) into `AutoencoderKLWan`.

    `config` holds `AutoencoderKLWan` arguments (see `wan_vae_config`); `None` means the released VAE.
    """
    config = dict(wan_vae_config() if config is None else config)
    num_res_blocks = int(config.get("num_res_blocks", 2))
    return load_converted(
        lambda: AutoencoderKLWan(**config),
        path_or_state_dict,
        lambda target: (_vae_source_name(target, num_res_blocks), None),
        dtype=dtype,
        what="Wan VAE",
    )
