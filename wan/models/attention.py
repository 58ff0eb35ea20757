"""Cross-attention of the StableAvatar DiT blocks: image + text + per-latent-frame audio.

The base projections keep diffusers' `WanAttention` layout (`to_q`, `to_k`, `to_v`, `to_out.0`, `norm_q`,
`norm_k`, `add_k_proj`, `add_v_proj`, `norm_added_k`) so LoRA, fused projections, attention backends and
offloading hooks work unchanged; the audio path adds `to_k_audio` / `to_v_audio`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    dispatch_attention_fn,
)
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn

# diffusers' Wan attention places exactly this many text tokens after the image tokens.
TEXT_SEQ_LEN = 512

# diffusers attention backends that add a float `attn_mask` to the logits (PyTorch SDPA and its variants).
FLOAT_MASK_BACKENDS = frozenset(
    {AttentionBackendName.NATIVE, AttentionBackendName._NATIVE_EFFICIENT, AttentionBackendName._NATIVE_MATH}
)


def compress_text_padding(text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's non-zero text rows plus one zero row standing for all of its zero (padding) rows.

    Cross-attention has no positions, so the n zero rows of a sample (its padding to `TEXT_SEQ_LEN`, and any
    zero row inside) all give the same key and value: attending to them equals attending to one of them
    whose logit gets + log(n). The returned bias carries that: 0 for real rows, log(n) for the pad row
    (-inf when n = 0), -inf for filler rows of samples shorter than the longest.

    Args:
        text: `[B, L, C]`, L <= `TEXT_SEQ_LEN`; rows beyond L count as zero rows.
    Returns:
        `[B, R + 1, C]` packed rows (R: the most real rows of any sample) and the additive attention bias
        `[B, R + 1]` (float32).
    """
    real = text.ne(0).any(dim=-1)
    counts = real.sum(dim=1)
    width = int(counts.max()) + 1
    text = F.pad(text, (0, 0, 0, 1))  # at least one zero row per sample
    real = F.pad(real, (0, 1))
    # Real rows first (in their order), then zero rows; `width` rows keep every real row and one zero row.
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)[:, :width]
    packed = text.gather(1, order.unsqueeze(-1).expand(-1, -1, text.shape[-1]))
    position = torch.arange(width, device=text.device)
    pad_count = (TEXT_SEQ_LEN - counts).float()
    bias = torch.where(position < counts[:, None], 0.0, -math.inf)
    bias = torch.where(position == counts[:, None], pad_count.log()[:, None], bias)
    return packed, bias


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

    def takes_attention_bias(self) -> bool:
        """Whether this processor's attention backend adds a float `attn_mask` (needed by packed text)."""
        backend = self._attention_backend
        if backend is None:
            backend, _ = _AttentionBackendRegistry.get_active_backend()
        return self._parallel_config is None and AttentionBackendName(backend) in FLOAT_MASK_BACKENDS

    def _attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        if bias is not None:
            bias = bias.to(query.dtype)
        out = dispatch_attention_fn(
            query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False, backend=self._attention_backend
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
        text_bias: torch.Tensor | None = None,
        audio_rows: Sequence[int | None] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: `[B, S, dim]` video tokens, S = F * tokens per frame.
            encoder_hidden_states: `[B, 257 + T, dim]` image tokens then text tokens (unused when
                `context_slot` already holds their keys and values); T = 512, or the packed length with
                `text_bias`.
            audio_hidden_states: `[B, F, n, dim]` audio tokens per latent frame, `[B, M, dim]` for clip-level
                audio attention (every query sees every audio token), or None for no audio path.
            context_slot: this block's entry of a `CrossAttentionCache`: read when filled, filled otherwise.
            text_bias: `[B, T]` additive text attention bias of packed text (see `compress_text_padding`).
            audio_rows: per sample, the first sample whose audio tokens its own repeat, or None for zero audio
                tokens; the audio keys/values are projected once per distinct row. None: all distinct.
        Returns:
            `[B, S, dim]`.
        """
        batch, seq_len, _ = hidden_states.shape
        heads = attn.heads
        if context_slot:
            context = context_slot
        else:
            context = self._context_keys_values(attn, encoder_hidden_states, text_bias)
            if context_slot is not None:
                context_slot.update({name: tensor.detach() for name, tensor in context.items()})

        query = _heads(attn.norm_q(attn.to_q(hidden_states)), heads)
        out = self._attend(query, context["text_key"], context["text_value"], context.get("text_bias"))
        if "image_key" in context:
            out = out + self._attend(query, context["image_key"], context["image_value"])

        if audio_hidden_states is not None and seq_len > 0:  # a sequence-parallel share may hold no frames
            key_audio = _heads(_project_rows(attn.to_k_audio, audio_hidden_states, audio_rows), heads)
            value_audio = _heads(_project_rows(attn.to_v_audio, audio_hidden_states, audio_rows), heads)
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
        attn: StableAvatarCrossAttention, encoder_hidden_states: torch.Tensor, text_bias: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Keys/values `[B, L, heads, head_dim]` of the text tokens and (when present) the image tokens, and
        the text bias `[B, 1, 1, T]` of packed text."""
        text_len = TEXT_SEQ_LEN if text_bias is None else text_bias.shape[-1]
        image_len = encoder_hidden_states.shape[1] - text_len
        text_states = encoder_hidden_states[:, image_len:]
        context = {
            "text_key": _heads(attn.norm_k(attn.to_k(text_states)), attn.heads),
            "text_value": _heads(attn.to_v(text_states), attn.heads),
        }
        if text_bias is not None:
            context["text_bias"] = text_bias[:, None, None, :]
        if attn.add_k_proj is not None and image_len > 0:
            image_states = encoder_hidden_states[:, :image_len]
            context["image_key"] = _heads(attn.norm_added_k(attn.add_k_proj(image_states)), attn.heads)
            context["image_value"] = _heads(attn.add_v_proj(image_states), attn.heads)
        return context


def _project_rows(layer: nn.Module, states: torch.Tensor, rows: Sequence[int | None] | None) -> torch.Tensor:
    """`layer(states)`, computed once per distinct sample of `rows` (see the processor's `audio_rows`).

    Zero samples get the layer's output for one zero token (its bias), broadcast.
    """
    if rows is None:
        return layer(states)
    picked = sorted({row for row in rows if row is not None})
    if len(picked) == len(rows):
        return layer(states)
    table = [layer(states[picked])] if picked else []
    if None in rows:
        zero = states.new_zeros((1,) * (states.ndim - 1) + states.shape[-1:])
        table.append(layer(zero).expand(1, *states.shape[1:-1], -1))
    index = [len(picked) if row is None else picked.index(row) for row in rows]
    return torch.cat(table)[index]


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
