"""Chunk-by-chunk decoding through the Wan VAE's causal cache, so pixel frames never pile up in memory."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from diffusers import AutoencoderKLWan


@torch.no_grad()
def stream_decode(
    vae: AutoencoderKLWan, latents: torch.Tensor, frames_per_chunk: int = 4
) -> Iterator[torch.Tensor]:
    """Decode normalised latents frame by frame, yielding pixels as soon as they exist.

    The Wan decoder is causal with a per-layer feature cache: feeding latent frames one at a time with the
    cache carried along computes exactly what one `vae.decode` call over the whole video does (that call
    loops over frames the same way internally), but only one latent frame and its cache are ever on the
    device, and the caller can write each chunk out before the next is decoded.

    Args:
        latents: `[1, z_dim, L, h, w]` normalised as `(mu - mean) / std`, on any device (host memory is fine).
        frames_per_chunk: latent frames decoded per yield.
    Yields:
        `[1, 3, T_chunk, 8h, 8w]` float32 pixels in [-1, 1] on the CPU; 1 + 4(L-1) frames in all.
    """
    parameter = next(vae.parameters())
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=parameter.device, dtype=parameter.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=parameter.device, dtype=parameter.dtype).view(shape)
    vae.clear_cache()
    try:
        for chunk_start in range(0, latents.shape[2], frames_per_chunk):
            pieces = []
            for index in range(chunk_start, min(chunk_start + frames_per_chunk, latents.shape[2])):
                z = latents[:, :, index : index + 1].to(parameter.device, parameter.dtype) * std + mean
                vae._conv_idx = [0]
                pieces.append(
                    vae.decoder(
                        vae.post_quant_conv(z),
                        feat_cache=vae._feat_map,
                        feat_idx=vae._conv_idx,
                        first_chunk=index == 0,
                    )
                )
            yield torch.cat(pieces, dim=2).clamp(-1.0, 1.0).float().cpu()
    finally:
        vae.clear_cache()
