"""The runtime encoders: text (umT5), reference image (CLIP), audio (wav2vec2) and video (the Wan VAE's
normalised latents). The pipeline and training both encode through these; `wan.loading` only builds the
models from checkpoint files."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from transformers import (
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    UMT5EncoderModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from ..generation_settings import SAMPLE_RATE

MAX_TEXT_TOKENS = 512
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@torch.no_grad()
def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: UMT5EncoderModel,
    prompt: str,
    device: torch.device | str,
) -> torch.Tensor:
    """umT5 embeddings `[1, L, dim]` of the prompt's real tokens (padding cut off; the DiT zero-pads to 512)."""
    tokens = tokenizer(
        [prompt],
        padding="max_length",
        max_length=MAX_TEXT_TOKENS,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    length = int(tokens.attention_mask.sum())
    hidden = text_encoder(
        tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
    ).last_hidden_state
    return hidden[:, :length].float().cpu()


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: UMT5EncoderModel,
    prompts: list[str],
    device: torch.device | str,
) -> torch.Tensor:
    """umT5 embeddings `[B, L, dim]` of several prompts, each as `encode_prompt` gives it, zero-padded to the
    longest (the DiT zero-pads to 512 anyway)."""
    embeds = [encode_prompt(tokenizer, text_encoder, prompt, device)[0] for prompt in prompts]
    return torch.nn.utils.rnn.pad_sequence(embeds, batch_first=True)


@torch.no_grad()
def encode_image(image_encoder: CLIPVisionModel, frames: torch.Tensor) -> torch.Tensor:
    """Wan's CLIP features of images `frames` `[B, 3, H, W]` in [-1, 1] -> `[B, 1 + patches, dim]` float32 on
    the CPU.

    Bicubic resize (no antialias) to the model's square size, [-1, 1] -> [0, 1], CLIP mean/std, then the
    hidden state after all blocks but the last, without the final norm (released: [B, 257, 1280]).
    """
    parameter = next(image_encoder.parameters())
    size = image_encoder.config.image_size
    pixels = F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    pixels = (pixels * 0.5 + 0.5 - mean) / std
    outputs = image_encoder(
        pixel_values=pixels.to(parameter.device, parameter.dtype), output_hidden_states=True
    )
    # hidden_states = (embeddings after the pre-norm, block 1, ..., block N): [-2] is block N - 1.
    return outputs.hidden_states[-2].float().cpu()


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


def latent_stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std shaped [1, z_dim, 1, 1, 1], on `like`'s device and dtype."""
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=like.dtype, device=like.device).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=like.dtype, device=like.device).view(shape)
    return mean, std


@torch.no_grad()
def encode_to_normalised_latents(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    """Posterior mean of `video` [B, 3, T, H, W] in [-1, 1], normalised per channel as (mu - mean) / std.

    Returns [B, z_dim, 1 + (T - 1) // 4, H / 8, W / 8] (released VAE), in the VAE's dtype.
    """
    parameter = next(vae.parameters())
    mu = vae.encode(video.to(parameter.device, parameter.dtype)).latent_dist.mode()
    mean, std = latent_stats(vae, mu)
    return (mu - mean) / std


@torch.no_grad()
def decode_normalised_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_to_normalised_latents`: latents [B, z_dim, F, h, w] -> video [B, 3, 1 + 4(F - 1),
    8h, 8w] clamped to [-1, 1] (released VAE)."""
    parameter = next(vae.parameters())
    latents = latents.to(parameter.device, parameter.dtype)
    mean, std = latent_stats(vae, latents)
    return vae.decode(latents * std + mean).sample.clamp(-1.0, 1.0)
