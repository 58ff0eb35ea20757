"""The StableAvatar transformer: the Wan2.1 I2V DiT with an audio adapter and audio attention in every block."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
)
from diffusers.utils import apply_lora_scale
from diffusers.utils.torch_utils import maybe_allow_in_graph
from torch import nn

from .attention import (
    TEXT_SEQ_LEN,
    CrossAttentionCache,
    StableAvatarCrossAttention,
    StableAvatarCrossAttnProcessor,
    compress_text_padding,
)
from .audio_adapter import StableAvatarAudioAdapter
from .audio_alignment import DEFAULT_WINDOW_PADDING, split_audio_tokens_per_frame
from .sequence_parallel import SEQUENCE_PARALLEL_MODES, SequenceParallel, SequenceParallelSelfAttnProcessor


@maybe_allow_in_graph
class StableAvatarTransformerBlock(nn.Module):
    """A Wan DiT block whose cross-attention also attends to audio (diffusers' `WanTransformerBlock` layout).

    Order: modulated self-attention with RoPE; affine LN + cross-attention to image, text and audio;
    modulated feed-forward.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, image_dim: int | None) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(
            dim=dim, heads=num_heads, dim_head=dim // num_heads, eps=eps, processor=WanAttnProcessor()
        )
        self.attn2 = StableAvatarCrossAttention(dim, num_heads, eps, image_dim)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        audio_hidden_states: torch.Tensor | None,
        context_slot: dict[str, torch.Tensor] | None = None,
        text_bias: torch.Tensor | None = None,
        audio_rows: Sequence[int | None] | None = None,
        shared_input: bool = False,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: `[B, S, dim]` video tokens.
            encoder_hidden_states: `[B, 257 + T, dim]` image then text tokens (T = 512, or packed with
                `text_bias`).
            temb: `[B, 6, dim]` timestep projection.
            rotary_emb: cos/sin, each `[1, S, 1, head_dim]`.
            audio_hidden_states: `[B, F, n, dim]` (frame-local) or `[B, M, dim]` (clip-level) or None.
            context_slot: this block's text/image keys and values (see `CrossAttentionCache`), or None.
            text_bias: `[B, T]` attention bias of packed text (see `compress_text_padding`), or None.
            audio_rows: which samples share audio tokens (see `StableAvatarCrossAttnProcessor`), or None.
            shared_input: every sample has the same `hidden_states` and `temb`: the modulated self-attention
                runs on sample 0 only and is broadcast (the caller vouches for it).
        """
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = (
            self.scale_shift_table + temb.float()
        ).chunk(6, dim=1)

        if shared_input:
            first = self._self_attention(
                hidden_states[:1], shift_msa[:1], scale_msa[:1], gate_msa[:1], rotary_emb
            )
            hidden_states = first.expand_as(hidden_states)
        else:
            hidden_states = self._self_attention(hidden_states, shift_msa, scale_msa, gate_msa, rotary_emb)

        norm_hidden = self.norm2(hidden_states.float()).type_as(hidden_states)
        attn_out = self.attn2(
            norm_hidden,
            encoder_hidden_states,
            audio_hidden_states=audio_hidden_states,
            context_slot=context_slot,
            text_bias=text_bias,
            audio_rows=audio_rows,
        )
        hidden_states = hidden_states + attn_out

        norm_hidden = (self.norm3(hidden_states.float()) * (1 + c_scale) + c_shift).type_as(hidden_states)
        ff_out = self.ffn(norm_hidden)
        return (hidden_states.float() + ff_out.float() * c_gate).type_as(hidden_states)

    def _self_attention(
        self,
        hidden_states: torch.Tensor,
        shift: torch.Tensor,
        scale: torch.Tensor,
        gate: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """`hidden_states` `[B, S, dim]` plus its gated, modulated self-attention (modulation `[B, 1, dim]`)."""
        norm_hidden = (self.norm1(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        attn_out = self.attn1(norm_hidden, None, None, rotary_emb)
        return (hidden_states.float() + attn_out * gate).type_as(hidden_states)


# Where diffusers' block caches (first-block cache, MagCache, ...) find the block's output: it returns the
# video tokens alone (no text stream).
TransformerBlockRegistry.register(
    model_class=StableAvatarTransformerBlock,
    metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
)


class StableAvatarTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin):
    r"""Wan2.1 image-to-video DiT with StableAvatar's time-step-aware audio adapter.

    The base part keeps diffusers' `WanTransformer3DModel` state-dict layout; audio adds
    `blocks.*.attn2.to_k_audio` / `to_v_audio` and `audio_adapter.*`.

    Args:
        patch_size: 3-D patch (t, h, w).
        num_attention_heads, attention_head_dim: DiT heads; the width is their product.
        in_channels: 36 = 16 noisy latents + 4 mask + 16 reference latents.
        out_channels: 16 latent channels.
        text_dim: text-encoder width (umT5-XXL: 4096).
        freq_dim: sinusoidal timestep width.
        ffn_dim: DiT feed-forward width.
        num_layers: DiT blocks.
        cross_attn_norm, qk_norm: kept for config compatibility with diffusers' Wan (both always on here).
        eps: norm epsilon.
        image_dim: CLIP token width (1280); None for a model without image conditioning.
        added_kv_proj_dim: width of the image key/value projections' input (equals the DiT width here).
        rope_max_seq_len: RoPE table length.
        audio_dim: wav2vec2 feature width (768).
        audio_proj_dims: widths of the audio projection stages; the last must equal the DiT width.
        audio_adapter_layers, audio_adapter_heads, audio_adapter_ffn_mult: adapter size.
        audio_window_padding: tokens added on both sides of each latent frame's audio window.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]
    _no_split_modules = ["StableAvatarTransformerBlock"]
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]
    _repeated_blocks = ["StableAvatarTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = 1280,
        added_kv_proj_dim: int | None = 1536,
        rope_max_seq_len: int = 1024,
        audio_dim: int = 768,
        audio_proj_dims: tuple[int, ...] = (1536,),
        audio_adapter_layers: int = 2,
        audio_adapter_heads: int = 8,
        audio_adapter_ffn_mult: int = 2,
        audio_window_padding: int = DEFAULT_WINDOW_PADDING,
    ) -> None:
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        if audio_proj_dims[-1] != inner_dim:
            raise ValueError(
                f"the audio adapter width {audio_proj_dims[-1]} must equal the DiT width {inner_dim}"
            )
        if added_kv_proj_dim is not None and added_kv_proj_dim != inner_dim:
            raise ValueError(f"added_kv_proj_dim {added_kv_proj_dim} must equal the DiT width {inner_dim}")

        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=inner_dim,
            time_freq_dim=freq_dim,
            time_proj_dim=inner_dim * 6,
            text_embed_dim=text_dim,
            image_embed_dim=image_dim,
        )
        self.audio_adapter = StableAvatarAudioAdapter(
            audio_dim,
            tuple(audio_proj_dims),
            audio_adapter_layers,
            audio_adapter_heads,
            audio_adapter_ffn_mult,
            eps,
        )
        self.blocks = nn.ModuleList(
            StableAvatarTransformerBlock(inner_dim, ffn_dim, num_attention_heads, eps, added_kv_proj_dim)
            for _ in range(num_layers)
        )
        self.norm_out = FP32LayerNorm(inner_dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(inner_dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, inner_dim) / inner_dim**0.5)
        self.gradient_checkpointing = False
        self.sequence_parallel: SequenceParallel | None = None
        # Skip work that cannot change the output (see `forward`); False computes everything, for comparison.
        self.exact_savings = True

    def enable_sequence_parallel(
        self, group: torch.distributed.ProcessGroup | None = None, mode: str = "all-gather"
    ) -> None:
        """Share every forward between the processes of `group` (default: all); see sequence_parallel.py.
        Every process must call the model with the same inputs; each gets the whole output.

        Args:
            mode: how self-attention sees the other processes' tokens: 'all-gather', 'ulysses' (the heads
                must divide by the number of processes) or 'ring'.
        """
        if mode not in SEQUENCE_PARALLEL_MODES:
            raise ValueError(
                f"unknown sequence-parallel mode {mode!r}; choose one of {SEQUENCE_PARALLEL_MODES}"
            )
        parallel = SequenceParallel(group, mode=mode)
        heads = self.config.num_attention_heads
        if mode == "ulysses" and heads % parallel.world_size:
            raise ValueError(
                f"Ulysses splits the {heads} attention heads between processes: {parallel.world_size} processes "
                f"do not divide them; use a divisor of {heads}, or the ring mode"
            )
        self.sequence_parallel = parallel
        for block in self.blocks:
            block.attn1.set_processor(SequenceParallelSelfAttnProcessor(self.sequence_parallel))

    def rebuild_buffers(self) -> None:
        """Recompute the (non-persistent) RoPE tables, e.g. after building the model on the meta device."""
        self.rope = WanRotaryPosEmbed(
            self.config.attention_head_dim, self.config.patch_size, self.config.rope_max_seq_len
        ).to(self.patch_embedding.weight.device)

    def _embed_timestep(
        self, timestep: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`temb` `[B, dim]` and the flat modulation projection `[B, 6 * dim]`, as the condition embedder
        computes them (without its text and image embedders)."""
        embedder = self.condition_embedder
        projected = embedder.timesteps_proj(timestep)
        embedder_dtype = next(iter(embedder.time_embedder.parameters())).dtype
        if projected.dtype != embedder_dtype and embedder_dtype != torch.int8:
            projected = projected.to(embedder_dtype)
        temb = embedder.time_embedder(projected).to(dtype)
        return temb, embedder.time_proj(embedder.act_fn(temb))

    def _packs_text(self) -> bool:
        """Whether the text padding is compressed: every block's cross-attention takes an attention bias."""
        return self.exact_savings and all(
            isinstance(block.attn2.processor, StableAvatarCrossAttnProcessor)
            and block.attn2.processor.takes_attention_bias()
            for block in self.blocks
        )

    @staticmethod
    def _audio_rows(audio_sources: Sequence[int | None] | None) -> tuple[int | None, ...] | None:
        """For each sample, the first sample with the same audio source (None for no audio)."""
        if audio_sources is None:
            return None
        sources = list(audio_sources)
        return tuple(None if source is None else sources.index(source) for source in sources)

    def compute_audio_context(
        self,
        audio_embeds: torch.Tensor,
        video_tokens: torch.Tensor,
        temb: torch.Tensor,
        timestep_proj: torch.Tensor,
        num_video_frames: int,
        audio_sources: Sequence[int | None] | None = None,
        clip_level_audio: bool = False,
    ) -> torch.Tensor:
        """The audio adapter's refined audio context for the DiT blocks.

        Args:
            audio_embeds: `[B, Na, audio_dim]` wav2vec2 features of the clip.
            video_tokens: `[B, S, dim]` patch-embedded input.
            temb: `[B, dim]`; timestep_proj: `[B, 6, dim]`.
            num_video_frames: pixel frames the audio covers (drives the alignment).
            audio_sources: see `forward`; None: every sample uses its own audio.
            clip_level_audio: flatten the frames so every video token sees all audio tokens (a training option).
        Returns:
            `[B, F, n, dim]`, or `[B, F * n, dim]` with `clip_level_audio`.
        """
        batch = audio_embeds.shape[0]
        sources = list(range(batch)) if audio_sources is None else list(audio_sources)
        if len(sources) != batch or any(s is not None and not 0 <= s < batch for s in sources):
            raise ValueError(
                f"audio_sources needs one entry per sample (a sample index in [0, {batch}) or None), "
                f"got {audio_sources!r} for a batch of {batch}"
            )
        # The adapter runs once per distinct source sample; the others copy its output or get zeros.
        unique = sorted({s for s in sources if s is not None})
        if unique != list(range(batch)):
            picked = unique or [0]
            audio_embeds, video_tokens, temb, timestep_proj = (
                t[picked] for t in (audio_embeds, video_tokens, temb, timestep_proj)
            )
        tokens = self.audio_adapter.project(audio_embeds)
        frame_tokens = split_audio_tokens_per_frame(
            tokens, num_video_frames, self.config.audio_window_padding
        )
        if not unique:
            context = torch.zeros_like(frame_tokens).expand(batch, -1, -1, -1)
        else:
            context = self.audio_adapter(frame_tokens, video_tokens, temb, timestep_proj)
            if unique != sources:
                zeros = torch.zeros_like(context[:1])
                context = torch.cat([zeros if s is None else context[unique.index(s)][None] for s in sources])
        return context.flatten(1, 2) if clip_level_audio else context

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None,
        audio_embeds: torch.Tensor,
        num_video_frames: int | None = None,
        audio_sources: Sequence[int | None] | None = None,
        clip_level_audio: bool = False,
        context_cache: CrossAttentionCache | None = None,
        shared_input: bool = False,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the flow (noise minus data) for a batch of clips.

        Args:
            hidden_states: `[B, 36, F, H, W]`: noisy latents (16) + mask (4) + reference latents (16).
            timestep: `[B]` in [0, 1000].
            encoder_hidden_states: `[B, L, text_dim]` text embeddings, L <= 512 (zero-padded to 512 here).
            encoder_hidden_states_image: `[B, 257, image_dim]` CLIP tokens.
            audio_embeds: `[B, Na, audio_dim]` wav2vec2 features of the clip's audio.
            num_video_frames: pixel frames the audio covers; default `4 (F - 1) + 1`.
            audio_sources: for each sample, the index of the sample whose refined audio it receives, or None
                for no audio (a zero audio context). The adapter runs once per distinct source. Default: every
                sample its own audio (independent clips). Guidance batches set it: the published sampler's
                [no audio, audio, audio] is `(None, 2, 2)` (see `wan.pipeline.guidance`).
            clip_level_audio: every video token attends to all of the clip's audio tokens.
            context_cache: text/image keys and values kept across calls with the same text and image
                (filled by the first call; see `CrossAttentionCache`). Inference only.
            shared_input: every sample has the same `hidden_states` and `timestep` (a guidance batch built
                from one sample's latents; the caller vouches, nothing compares them): the patch embedding
                and block 0's self-attention run once and are broadcast.
            return_dict: return a `Transformer2DModelOutput` (else a tuple).
            attention_kwargs: `{"scale": s}` scales every LoRA adapter's contribution by `s` for this call
                (diffusers' convention; 0 gives the base model). No other keys are used.
        Returns:
            `[B, 16, F, H, W]` in `sample`.

        With `exact_savings` (default) work that cannot change the output is skipped: the zero text padding
        is packed into one key per sample with a log-count bias (`compress_text_padding`; where every
        cross-attention backend takes a float mask), `shared_input` runs block 0's self-attention once, and
        samples sharing an audio source share their audio key/value projections.
        """
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)
        if num_video_frames is None:
            num_video_frames = 4 * (frames - 1) + 1

        shared_input = shared_input and self.exact_savings and batch > 1
        rotary_emb = self.rope(hidden_states)
        if shared_input:
            hidden_states = self.patch_embedding(hidden_states[:1]).flatten(2).transpose(1, 2)
            hidden_states = hidden_states.expand(batch, -1, -1)
        else:
            hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        text_len = encoder_hidden_states.shape[1]
        if text_len > TEXT_SEQ_LEN:
            raise ValueError(f"text embeddings have {text_len} tokens; at most {TEXT_SEQ_LEN} are supported")
        context_slots = context_cache.slots(len(self.blocks), batch) if context_cache is not None else None
        text_bias = None
        if context_cache is not None and context_cache.filled:
            # The blocks read the text/image keys and values from the cache: only the timestep is embedded.
            temb, timestep_proj = self._embed_timestep(timestep, encoder_hidden_states.dtype)
            encoder_hidden_states = None
        else:
            # (Meta tensors, e.g. FLOP counting, hold no values to find the padding in.)
            if self._packs_text() and not encoder_hidden_states.is_meta:
                encoder_hidden_states, text_bias = compress_text_padding(encoder_hidden_states)
            else:
                encoder_hidden_states = F.pad(encoder_hidden_states, (0, 0, 0, TEXT_SEQ_LEN - text_len))
            temb, timestep_proj, encoder_hidden_states, image_states = self.condition_embedder(
                timestep, encoder_hidden_states, encoder_hidden_states_image
            )
            if image_states is not None:
                encoder_hidden_states = torch.cat([image_states, encoder_hidden_states], dim=1)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))

        audio_context = self.compute_audio_context(
            audio_embeds,
            hidden_states,
            temb,
            timestep_proj,
            num_video_frames,
            audio_sources,
            clip_level_audio,
        )
        if not clip_level_audio and audio_context.shape[1] != grid[0]:
            raise ValueError(
                f"audio for {num_video_frames} video frames gives {audio_context.shape[1]} latent frames, "
                f"but the latents have {grid[0]}"
            )

        parallel = self.sequence_parallel
        if parallel is not None:
            tokens_per_frame = grid[1] * grid[2]
            ranges = parallel.frame_ranges(grid[0])
            parallel.token_counts = [(end - start) * tokens_per_frame for start, end in ranges]
            first, last = ranges[parallel.rank]
            hidden_states = hidden_states[:, first * tokens_per_frame : last * tokens_per_frame]
            rotary_emb = tuple(r[:, first * tokens_per_frame : last * tokens_per_frame] for r in rotary_emb)
            if not clip_level_audio:
                audio_context = audio_context[:, first:last]

        audio_rows = self._audio_rows(audio_sources) if self.exact_savings else None
        for index, block in enumerate(self.blocks):
            slot = context_slots[index] if context_slots is not None else None
            args = (
                hidden_states,
                encoder_hidden_states,
                timestep_proj,
                rotary_emb,
                audio_context,
                slot,
                text_bias,
                audio_rows,
                shared_input and index == 0,
            )
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, *args)
            else:
                hidden_states = block(*args)

        if parallel is not None:
            hidden_states = parallel.gather(hidden_states)
        shift, scale = (self.scale_shift_table + temb.float().unsqueeze(1)).chunk(2, dim=1)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)

        hidden_states = hidden_states.reshape(batch, *grid, p_t, p_h, p_w, -1)
        output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
