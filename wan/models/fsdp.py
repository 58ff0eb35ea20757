"""Sharding the DiT's weights across processes for inference (FSDP2): each process keeps 1/N of every block
and gathers a block's weights only while it runs. Combine with sequence parallelism to split the work too."""

from __future__ import annotations

import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from .transformer_stableavatar import StableAvatarTransformer3DModel


def shard_transformer(
    model: StableAvatarTransformer3DModel, device_type: str
) -> StableAvatarTransformer3DModel:
    """Shard `model` in place over all processes of the default group (one block per unit)."""
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)  # inference: no backward to keep them for
    return model


def local_parameter_count(model: StableAvatarTransformer3DModel) -> int:
    """Parameters this process holds (its shards, for a sharded model)."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
