"""Chunk-by-chunk decoding through the Wan VAE's causal cache, so pixel frames never pile up in memory."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from diffusers import AutoencoderKLWan

from .encoders import latent_stats


class StreamingDecoder:
    """Decodes normalised latents frame by frame as they become final, carrying the Wan VAE's causal cache.

    The Wan decoder is causal with a per-layer feature cache: feeding latent frames one at a time with the
    cache carried along computes exactly what one `vae.decode` call over the whole video does (that call
    loops over frames the same way internally), but only one latent frame and its cache are ever on the
    device. The VAE's cache lives in the VAE, so one decoder at a time per VAE; `close()` clears it.
    """

    def __init__(self, vae: AutoencoderKLWan) -> None:
        self.vae = vae
        parameter = next(vae.parameters())
        self._device, self._dtype = parameter.device, parameter.dtype
        self._mean, self._std = latent_stats(vae, torch.empty(0, device=self._device, dtype=self._dtype))
        self.frames_decoded = 0  # latent frames so far
        vae.clear_cache()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """`[1, z_dim, n, h, w]` the next n latent frames (any device) -> `[1, 3, T, 8h, 8w]` float32 pixels in
        [-1, 1] on the CPU: 1 + 4(n-1) frames for the video's first latent frames, 4n after."""
        pieces = []
        for index in range(latents.shape[2]):
            z = latents[:, :, index : index + 1].to(self._device, self._dtype) * self._std + self._mean
            self.vae._conv_idx = [0]
            pieces.append(
                self.vae.decoder(
                    self.vae.post_quant_conv(z),
                    feat_cache=self.vae._feat_map,
                    feat_idx=self.vae._conv_idx,
                    first_chunk=self.frames_decoded == 0,
                )
            )
            self.frames_decoded += 1
        return torch.cat(pieces, dim=2).clamp(-1.0, 1.0).float().cpu()

    def close(self) -> None:
        self.vae.clear_cache()


@torch.no_grad()
def stream_decode(
    vae: AutoencoderKLWan, latents: torch.Tensor, frames_per_chunk: int = 4
) -> Iterator[torch.Tensor]:
    """Decode normalised latents frame by frame (`StreamingDecoder`), yielding pixels as soon as they exist,
    so the caller can write each chunk out before the next is decoded.

    Args:
        latents: `[1, z_dim, L, h, w]` normalised as `(mu - mean) / std`, on any device (host memory is fine).
        frames_per_chunk: latent frames decoded per yield.
    Yields:
        `[1, 3, T_chunk, 8h, 8w]` float32 pixels in [-1, 1] on the CPU; 1 + 4(L-1) frames in all.
    """
    decoder = StreamingDecoder(vae)
    try:
        for chunk_start in range(0, latents.shape[2], frames_per_chunk):
            yield decoder.decode(latents[:, :, chunk_start : chunk_start + frames_per_chunk])
    finally:
        decoder.close()
