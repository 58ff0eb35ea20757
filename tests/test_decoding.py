"""Streaming decode computes what one whole-video `vae.decode` computes."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from tests.reference import relative_error
from wan.pipeline.decoding import stream_decode
from wan.pipeline.encoders import decode_normalised_latents


def test_stream_decode_matches_whole_video_decode() -> None:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.5, 2.0, 1.0],
    ).eval()
    latents = torch.randn(1, 4, 6, 4, 5)
    whole = decode_normalised_latents(vae, latents)
    for frames_per_chunk in (1, 4):
        chunks = list(stream_decode(vae, latents, frames_per_chunk))
        assert [c.shape[2] for c in chunks][0] == (1 if frames_per_chunk == 1 else 13)
        streamed = torch.cat(chunks, dim=2)
        assert streamed.shape == whole.shape == (1, 3, 21, 32, 40)
        assert relative_error(streamed, whole) < 1e-6
