"""The time-step-aware audio adapter: wav2vec2 features -> audio tokens per latent frame.

Each latent frame's window of audio tokens is refined by cross-attending to that frame's (patch-embedded)
video tokens, with adaptive-norm modulation from the diffusion timestep, so what the DiT receives as audio
depends on both the content being denoised and the noise level.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn

from .attention import frame_local_cross_attention


class AudioProjection(nn.Sequential):
    """wav2vec2 features `[B, Na, audio_dim]` -> `[B, Na, dims[-1]]`: one (Linear, LayerNorm) stage per width.

    1.3B: a single 768 -> 1536 stage; 14B: 768 -> 2048 -> 5120.
    """

    def __init__(self, audio_dim: int, dims: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for width in dims:
            layers += [nn.Linear(audio_dim, width, bias=False), nn.LayerNorm(width)]
            audio_dim = width
        super().__init__(*layers)


class AudioAdapterBlock(nn.Module):
    """One adapter block on `[B, F * n, dim]` audio tokens.

    1. A modulated residual without attention: `x += gate1 * (LN(x) * (1 + scale1) + shift1)`.
    2. Frame-local cross-attention of the audio tokens (after an affine LN) to the video tokens.
    3. A modulated feed-forward (GELU-tanh, `ffn_mult * dim`).
    The six modulation vectors are this block's `scale_shift_table` plus the DiT's timestep projection.
    """

    def __init__(self, dim: int, num_heads: int, ffn_mult: int = 2, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.attn = WanAttention(
            dim=dim,
            heads=num_heads,
            dim_head=dim // num_heads,
            eps=eps,
            cross_attention_dim_head=dim // num_heads,
            processor=WanAttnProcessor(),
        )
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = FeedForward(dim, inner_dim=ffn_mult * dim, activation_fn="gelu-approximate")
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        audio_tokens: torch.Tensor,
        video_tokens: torch.Tensor,
        timestep_proj: torch.Tensor,
        num_frames: int,
    ) -> torch.Tensor:
        """
        Args:
            audio_tokens: `[B, F * n, dim]`.
            video_tokens: `[B, F * h * w, dim]` patch-embedded DiT input.
            timestep_proj: `[B, 6, dim]`.
        Returns:
            `[B, F * n, dim]`.
        """
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table + timestep_proj.float()).chunk(
            6, dim=1
        )
        x = audio_tokens
        x = x + ((self.norm1(x.float()) * (1 + scale1) + shift1) * gate1).type_as(x)
        x = x + frame_local_cross_attention(
            self.attn, self.norm2(x.float()).type_as(x), video_tokens, num_frames
        )
        ff_input = (self.norm3(x.float()) * (1 + scale2) + shift2).type_as(x)
        return x + (self.ffn(ff_input).float() * gate2).type_as(x)


class StableAvatarAudioAdapter(nn.Module):
    """Projection, adapter blocks and a modulated output head.

    Its width must equal the DiT width: the blocks attend to the DiT's video tokens and the output is the
    DiT's audio context.
    """

    def __init__(
        self,
        audio_dim: int,
        proj_dims: tuple[int, ...],
        num_layers: int = 2,
        num_heads: int = 8,
        ffn_mult: int = 2,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        dim = proj_dims[-1]
        self.proj_in = AudioProjection(audio_dim, proj_dims)
        self.blocks = nn.ModuleList(
            AudioAdapterBlock(dim, num_heads, ffn_mult, eps) for _ in range(num_layers)
        )
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, dim)

    def project(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        """`[B, Na, audio_dim]` wav2vec2 features -> `[B, Na, dim]`."""
        return self.proj_in(audio_embeds)

    def forward(
        self,
        frame_tokens: torch.Tensor,
        video_tokens: torch.Tensor,
        temb: torch.Tensor,
        timestep_proj: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            frame_tokens: `[B, F, n, dim]` projected audio tokens, already windowed per latent frame.
            video_tokens: `[B, F * h * w, dim]` patch-embedded DiT input.
            temb: `[B, dim]` timestep embedding; timestep_proj: `[B, 6, dim]` its projection.
        Returns:
            `[B, F, n, dim]` audio context for the DiT blocks.
        """
        num_frames = frame_tokens.shape[1]
        x = frame_tokens.flatten(1, 2)
        for block in self.blocks:
            x = block(x, video_tokens, timestep_proj, num_frames)
        shift, scale = (self.scale_shift_table + temb.float().unsqueeze(1)).chunk(2, dim=1)
        x = self.proj_out((self.norm_out(x.float()) * (1 + scale) + shift).type_as(x))
        return x.unflatten(1, (num_frames, -1))
