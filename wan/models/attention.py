"""Cross-attention of the StableAvatar DiT blocks: image + text + per-latent-frame audio.

The base projections keep diffusers' `WanAttention` layout (`to_q`, `to_k`, `to_v`, `to_out.0`, `norm_q`,
`norm_k`, `add_k_proj`, `add_v_proj`, `norm_added_k`) so LoRA, fused projections, attention backends and
offloading hooks work unchanged; the audio path adds `to_k_audio` / `to_v_audio`.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn

# diffusers' Wan attention places exactly this many text tokens after the image tokens.
TEXT_SEQ_LEN = 512


class CrossAttentionCache:
    """Text and image keys/values of every block, kept from the first forward and reused by later ones.

    Text and image tokens do not depend on the noisy latents or the timestep, so within one video (fixed
    prompt, negative prompt and reference image) their projections are the same at every step and window.
    The caller owns the cache and must use one per distinct batch layout (e.g. the guidance triple and
    the single prompt batch each get their own). Entries are stored detached; training passes no cache.
    """

    def __init__(self) -> None:
        self.blocks: list[dict[str, torch.Tensor]] = []
        self.batch_size: int | None = None

    @property
    def filled(self) -> bool:
        return bool(self.blocks) and all(self.blocks)

    def slots(self, num_blocks: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """One dict per block (empty until its first forward fills it)."""
        if self.batch_size is None:
            self.batch_size = batch_size
            self.blocks = [{} for _ in range(num_blocks)]
        if (self.batch_size, len(self.blocks)) != (batch_size, num_blocks):
            raise ValueError(
                f"this cross-attention cache holds a batch of {self.batch_size} for {len(self.blocks)} blocks; "
                f"got {batch_size} for {num_blocks}: use one cache per batch layout"
            )
        return self.blocks


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """`[..., L, H*D]` -> `[..., L, H, D]`."""
    return tensor.unflatten(-1, (heads, -1))


class StableAvatarCrossAttnProcessor:
    """Query attends separately to image, text and audio tokens; the three results are summed before `to_out`.

    Audio attention is frame-local: the queries of latent frame f see only the audio tokens of frame f.
    """

    _attention_backend = None
    _parallel_config = None

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = dispatch_attention_fn(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self._attention_backend
        )
        return out.flatten(2, 3).type_as(query)

    def __call__(
        self,
        attn: StableAvatarCrossAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        audio_hidden_states: torch.Tensor | None = None,
        context_slot: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: `[B, S, dim]` video tokens, S = F * tokens per frame.
            encoder_hidden_states: `[B, 257 + 512, dim]` image tokens then text tokens (unused when
                `context_slot` already holds their keys and values).
            audio_hidden_states: `[B, F, n, dim]` audio tokens per latent frame, `[B, M, dim]` for clip-level
                audio attention (every query sees every audio token), or None for no audio path.
            context_slot: this block's entry of a `CrossAttentionCache`: read when filled, filled otherwise.
        Returns:
            `[B, S, dim]`.
        """
        batch, seq_len, _ = hidden_states.shape
        heads = attn.heads
        context = context_slot if context_slot else self._context_keys_values(attn, encoder_hidden_states)
        if context_slot is not None and not context_slot:
            context_slot.update({name: tensor.detach() for name, tensor in context.items()})

        query = _heads(attn.norm_q(attn.to_q(hidden_states)), heads)
        out = self._attend(query, context["text_key"], context["text_value"])
        if "image_key" in context:
            out = out + self._attend(query, context["image_key"], context["image_value"])

        if audio_hidden_states is not None and seq_len > 0:  # a sequence-parallel share may hold no frames
            key_audio = _heads(attn.to_k_audio(audio_hidden_states), heads)
            value_audio = _heads(attn.to_v_audio(audio_hidden_states), heads)
            if audio_hidden_states.ndim == 4:
                frames = audio_hidden_states.shape[1]
                if seq_len % frames:
                    raise ValueError(f"{seq_len} video tokens do not split into {frames} latent frames")
                frame_query = query.reshape(batch * frames, seq_len // frames, heads, -1)
                audio_out = self._attend(frame_query, key_audio.flatten(0, 1), value_audio.flatten(0, 1))
                audio_out = audio_out.reshape(batch, seq_len, -1)
            else:
                audio_out = self._attend(query, key_audio, value_audio)
            out = out + audio_out

        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    @staticmethod
    def _context_keys_values(
        attn: StableAvatarCrossAttention, encoder_hidden_states: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Keys/values `[B, L, heads, head_dim]` of the text tokens and (when present) the image tokens."""
        image_len = encoder_hidden_states.shape[1] - TEXT_SEQ_LEN
        text_states = encoder_hidden_states[:, image_len:]
        context = {
            "text_key": _heads(attn.norm_k(attn.to_k(text_states)), attn.heads),
            "text_value": _heads(attn.to_v(text_states), attn.heads),
        }
        if attn.add_k_proj is not None and image_len > 0:
            image_states = encoder_hidden_states[:, :image_len]
            context["image_key"] = _heads(attn.norm_added_k(attn.add_k_proj(image_states)), attn.heads)
            context["image_value"] = _heads(attn.add_v_proj(image_states), attn.heads)
        return context


class StableAvatarCrossAttention(WanAttention):
    """`WanAttention` (I2V cross-attention) plus the audio key/value projections `to_k_audio`, `to_v_audio`.

    The audio projections start at zero, so a base Wan model with this layer computes exactly what it did
    without it until training moves them.
    """

    _default_processor_cls = StableAvatarCrossAttnProcessor
    _available_processors = [StableAvatarCrossAttnProcessor, WanAttnProcessor]

    def __init__(self, dim: int, heads: int, eps: float, image_dim: int | None) -> None:
        super().__init__(
            dim=dim,
            heads=heads,
            dim_head=dim // heads,
            eps=eps,
            added_kv_proj_dim=image_dim,
            cross_attention_dim_head=dim // heads,
            processor=StableAvatarCrossAttnProcessor(),
        )
        self.to_k_audio = nn.Linear(dim, dim)
        self.to_v_audio = nn.Linear(dim, dim)
        for layer in (self.to_k_audio, self.to_v_audio):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def frame_local_cross_attention(
    attn: WanAttention, queries: torch.Tensor, keys_values: torch.Tensor, num_frames: int
) -> torch.Tensor:
    """Cross-attention in which frame f's queries see only frame f's keys/values.

    Args:
        attn: a cross-attention `WanAttention` (no added image projections).
        queries: `[B, F * n, dim]`, frame-major.
        keys_values: `[B, F * m, dim]`, frame-major.
    Returns:
        `[B, F * n, dim]`.
    """
    batch = queries.shape[0]
    frame_queries = queries.reshape(batch * num_frames, -1, queries.shape[-1])
    frame_keys = keys_values.reshape(batch * num_frames, -1, keys_values.shape[-1])
    out = attn(frame_queries, frame_keys)
    return out.reshape(batch, -1, out.shape[-1])
