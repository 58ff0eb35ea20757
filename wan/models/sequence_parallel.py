"""Sequence-parallel inference: the DiT's video tokens split across processes by whole latent frames.

Each process runs every block on its own frames' tokens. Cross-attention needs nothing from other
processes, and because the split follows latent-frame boundaries each process holds the audio tokens of
exactly its frames, keeping the frame-local audio attention aligned (the published multi-GPU path
misaligned it). Self-attention must see the whole clip; three ways (`SEQUENCE_PARALLEL_MODES`):

* all-gather: every process gathers all keys and values (simplest; each holds the clip's keys/values).
* ulysses: an all-to-all swaps the token split for a head split, each process attends all tokens with
  heads / N heads, and a second all-to-all swaps back (heads must divide by N).
* ring: keys and values travel around the ring of processes, one block per step; each process merges the
  partial results of its queries by their log-sum-exp, so no process ever holds more than two blocks.

Frames need not divide evenly: shares are padded to the longest for the collectives and trimmed after.
Every mode equals the single-process forward (to float rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from diffusers.models.attention_dispatch import dispatch_attention_fn


@dataclass
class SequenceParallel:
    """A process group that shares one forward. `token_counts` is set by the model for each forward."""

    group: dist.ProcessGroup | None = None
    token_counts: list[int] = field(default_factory=list)
    mode: str = "all-gather"

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


SEQUENCE_PARALLEL_MODES = ("all-gather", "ulysses", "ring")


def _pad_tokens(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """`[B, S, ...]` zero-padded to `[B, length, ...]`."""
    padding = [0, 0] * (tensor.ndim - 2) + [0, length - tensor.shape[1]]
    return torch.nn.functional.pad(tensor, padding).contiguous()


def _ulysses_to_heads(parallel: SequenceParallel, local: torch.Tensor) -> torch.Tensor:
    """`[B, S_local, H, D]` (this process's tokens, all heads) -> `[B, S, H / N, D]` (all tokens, its heads)."""
    longest = max(parallel.token_counts)
    chunks = [chunk.contiguous() for chunk in _pad_tokens(local, longest).chunk(parallel.world_size, dim=2)]
    received = [torch.empty_like(chunk) for chunk in chunks]
    dist.all_to_all(received, chunks, group=parallel.group)
    return torch.cat(
        [piece[:, :count] for piece, count in zip(received, parallel.token_counts, strict=True)], 1
    )


def _ulysses_to_tokens(parallel: SequenceParallel, heads: torch.Tensor) -> torch.Tensor:
    """The inverse of `_ulysses_to_heads`: `[B, S, H / N, D]` -> `[B, S_local, H, D]`."""
    longest = max(parallel.token_counts)
    pieces = [_pad_tokens(piece, longest) for piece in heads.split(parallel.token_counts, dim=1)]
    received = [torch.empty_like(piece) for piece in pieces]
    dist.all_to_all(received, pieces, group=parallel.group)
    return torch.cat(received, dim=2)[:, : parallel.token_counts[parallel.rank]]


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention `[B, Sq, H, D]` and its log-sum-exp `[B, H, Sq]` (float32), for merging blocks.

    Uses the fused kernels that return the log-sum-exp (flash on CUDA, the CPU flash kernel on CPU) and
    plain float32 math elsewhere.
    """
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    elif q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
    else:
        scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
        lse = scores.logsumexp(dim=-1)
        out = ((scores - lse.unsqueeze(-1)).exp() @ v.float()).to(q.dtype)
    return out.transpose(1, 2), lse.float()


def _ring_attention(
    parallel: SequenceParallel, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """Local queries `[B, S_local, H, D]` over every process's keys/values, passed around the ring."""
    rank, world = parallel.rank, parallel.world_size
    group = parallel.group
    send_to, receive_from = ((rank + 1) % world, (rank - 1) % world)
    if group is not None:  # point-to-point calls take global ranks
        send_to, receive_from = (
            dist.get_global_rank(group, send_to),
            dist.get_global_rank(group, receive_from),
        )
    longest = max(parallel.token_counts)
    block = torch.stack([_pad_tokens(key, longest), _pad_tokens(value, longest)])
    out = lse = None
    for step in range(world):
        if step < world - 1:  # start passing this block on while it is used
            incoming = torch.empty_like(block)
            requests = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, block, send_to, group),
                    dist.P2POp(dist.irecv, incoming, receive_from, group),
                ]
            )
        count = parallel.token_counts[(rank - step) % world]
        if count and query.shape[1]:
            block_out, block_lse = attention_with_lse(query, block[0][:, :count], block[1][:, :count])
            if out is None:
                out, lse = block_out.float(), block_lse
            else:
                merged = torch.logaddexp(lse, block_lse)
                out = out * (lse - merged).exp().transpose(1, 2).unsqueeze(-1) + block_out.float() * (
                    block_lse - merged
                ).exp().transpose(1, 2).unsqueeze(-1)
                lse = merged
        if step < world - 1:
            for request in requests:
                request.wait()
            block = incoming
    return query.new_zeros(query.shape) if out is None else out.to(query.dtype)


def _rotate(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs. hidden `[B, S, H, D]`, cos/sin `[1, S, 1, D]`."""
    x1, x2 = hidden.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(hidden)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden)


class SequenceParallelSelfAttnProcessor:
    """Self-attention of local queries over the keys and values of all processes (`parallel.mode`)."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, parallel: SequenceParallel) -> None:
        self.parallel = parallel

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return dispatch_attention_fn(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self._attention_backend
        )

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        parallel = self.parallel
        if parallel.mode == "ring":
            out = _ring_attention(parallel, query, key, value)
        elif parallel.mode == "ulysses":
            query, key, value = (_ulysses_to_heads(parallel, t) for t in (query, key, value))
            out = _ulysses_to_tokens(parallel, self._attend(query, key, value))
        else:
            out = self._attend(query, parallel.gather(key), parallel.gather(value))
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))
