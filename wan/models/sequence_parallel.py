"""Sequence-parallel inference: the DiT's video tokens split across processes by whole latent frames.

Each process runs every block on its own frames' tokens. Self-attention all-gathers the keys and values of
all processes (queries stay local), so every token still attends to the whole clip; cross-attention needs
nothing from other processes, and because the split follows latent-frame boundaries each process holds the
audio tokens of exactly its frames, keeping the frame-local audio attention aligned (the published
multi-GPU path misaligned it). The result equals the single-process forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from diffusers.models.attention_dispatch import dispatch_attention_fn


@dataclass
class SequenceParallel:
    """A process group that shares one forward. `token_counts` is set by the model for each forward."""

    group: dist.ProcessGroup | None = None
    token_counts: list[int] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    def frame_ranges(self, num_frames: int) -> list[tuple[int, int]]:
        """Contiguous latent-frame ranges, one per process, sizes differing by at most one."""
        base, extra = divmod(num_frames, self.world_size)
        ranges, start = [], 0
        for rank in range(self.world_size):
            end = start + base + (rank < extra)
            ranges.append((start, end))
            start = end
        return ranges

    def gather(self, local: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Concatenate every process's `local` along `dim` (sizes from `token_counts`), in rank order."""
        longest = max(self.token_counts)
        padding = [0, 0] * (local.ndim - dim - 1) + [0, longest - local.shape[dim]]
        padded = torch.nn.functional.pad(local, padding).contiguous()
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded, group=self.group)
        return torch.cat(
            [piece.narrow(dim, 0, count) for piece, count in zip(pieces, self.token_counts, strict=True)],
            dim=dim,
        )


def _rotate(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs. hidden `[B, S, H, D]`, cos/sin `[1, S, 1, D]`."""
    x1, x2 = hidden.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(hidden)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden)


class SequenceParallelSelfAttnProcessor:
    """Self-attention of local queries over the keys and values of all processes."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, parallel: SequenceParallel) -> None:
        self.parallel = parallel

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        key, value = self.parallel.gather(key), self.parallel.gather(value)
        out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend)  # fmt: skip
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))
