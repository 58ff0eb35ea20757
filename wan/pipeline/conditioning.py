"""Turning the user's inputs into the tensors the sampler conditions on (computed once per video)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from PIL import Image

from .encoders import encode_to_normalised_latents
from .windows import video_frames_for_latents

# The negative prompt the published code uses (Wan's default; it is Chinese and lists unwanted traits:
# garish colours, overexposure, static, blurry details, subtitles, low quality, JPEG artefacts, deformed
# hands and faces, extra fingers, cluttered background, many people, walking backwards).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)


def image_to_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """Stretch (no crop) to `width` x `height` with bicubic resampling -> `[1, 3, H, W]` in [-1, 1]."""
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()).permute(2, 0, 1)
    return (pixels / 255.0 - 0.5).mul(2.0).unsqueeze(0)


def first_frame_mask(window_length: int, height: int, width: int) -> torch.Tensor:
    """`[1, 4, W, h, w]`: ones on latent frame 0 (the known reference frame), zeros elsewhere."""
    mask = torch.zeros(1, 4, window_length, height, width)
    mask[:, :, 0] = 1.0
    return mask


@torch.no_grad()
def encode_window_condition(vae: AutoencoderKLWan, image: torch.Tensor, window_length: int) -> torch.Tensor:
    """`[1, 20, W, h, w]`: the first-frame mask and the VAE latents of (reference frame, then zero-valued (mid-grey) frames)
    for one window of `4(W-1)+1` frames. The same tensor serves every window.

    Args:
        image: `[1, 3, H, W]` in [-1, 1].
    """
    num_frames = video_frames_for_latents(window_length)
    video = torch.zeros(1, 3, num_frames, *image.shape[-2:])
    video[:, :, 0] = image[:, :, :]
    latents = encode_to_normalised_latents(vae, video).float().cpu()
    return torch.cat([first_frame_mask(window_length, *latents.shape[-2:]), latents], dim=1)
