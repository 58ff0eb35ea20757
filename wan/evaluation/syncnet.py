"""SyncNet (Chung & Zisserman, "Out of time: automated lip sync in the wild", 2016): two streams that map
5 video frames of a mouth and the 0.2 s of MFCCs beside them into one embedding space, where matching pairs
lie close together.

The layer layout (and so the state-dict names `netcnnaud.*`, `netfcaud.*`, `netcnnlip.*`, `netfclip.*`) is
that of the public evaluation model, so its published weights (`syncnet_v2.model`) load unchanged when a user
has them; nothing is downloaded. `width` scales every channel count, for tiny random-weight test networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserFacingError
from ..loading.state_dict import load_state_dict_file

EMBEDDING_DIM = 1024
CROP_SIZE = 224  # pixels of the square face crop the lip stream reads
WINDOW_FRAMES = 5  # video frames per lip window
MFCC_PER_FRAME = 4  # MFCC frames (100 per second) per video frame (25 per second)
MFCC_WINDOW = WINDOW_FRAMES * MFCC_PER_FRAME  # 20 MFCC frames beside each 5-frame window


@dataclass(frozen=True)
class _Stage:
    """conv -> batch norm -> ReLU (-> max pool)."""

    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...] | int = 1
    padding: tuple[int, ...] | int = 0
    pool: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | int] | None = (
        None  # kernel, stride, padding
    )


# Audio stream on [B, 1, 13, 20] MFCCs; the final 5x4 convolution leaves a 1x1 map.
_AUDIO_STAGES = (
    _Stage(64, (3, 3), 1, 1, pool=((1, 1), (1, 1), 0)),
    _Stage(192, (3, 3), 1, 1, pool=((3, 3), (1, 2), 0)),
    _Stage(384, (3, 3), 1, 1),
    _Stage(256, (3, 3), 1, 1),
    _Stage(256, (3, 3), 1, 1, pool=((3, 3), (2, 2), 0)),
    _Stage(512, (5, 4), 1, 0),
)
# Lip stream on [B, 3, 5, 224, 224] BGR frames in 0..255; the first convolution spans all 5 frames.
_LIP_STAGES = (
    _Stage(96, (5, 7, 7), (1, 2, 2), 0, pool=((1, 3, 3), (1, 2, 2), 0)),
    _Stage(256, (1, 5, 5), (1, 2, 2), (0, 1, 1), pool=((1, 3, 3), (1, 2, 2), (0, 1, 1))),
    _Stage(256, (1, 3, 3), 1, (0, 1, 1)),
    _Stage(256, (1, 3, 3), 1, (0, 1, 1)),
    _Stage(256, (1, 3, 3), 1, (0, 1, 1), pool=((1, 3, 3), (1, 2, 2), 0)),
    _Stage(512, (1, 6, 6), 1, 0),
)


def _conv_stack(stages: tuple[_Stage, ...], in_channels: int, width: float, dims: int) -> nn.Sequential:
    conv, norm, pool = (
        (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)
    )
    layers: list[nn.Module] = []
    for stage in stages:
        channels = max(1, round(stage.out_channels * width))
        layers += [
            conv(in_channels, channels, stage.kernel, stage.stride, stage.padding),
            norm(channels),
            nn.ReLU(),
        ]
        if stage.pool is not None:
            layers.append(pool(*stage.pool))
        in_channels = channels
    return nn.Sequential(*layers)


def _head(in_features: int, embedding_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, in_features),
        nn.BatchNorm1d(in_features),
        nn.ReLU(),
        nn.Linear(in_features, embedding_dim),
    )


class SyncNet(nn.Module):
    """The two SyncNet streams.

    Args:
        width: channel multiplier (1.0 is the published model; the tests use small ones).
        embedding_dim: output width (1024 published).
    """

    def __init__(self, width: float = 1.0, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.netcnnaud = _conv_stack(_AUDIO_STAGES, 1, width, dims=2)
        self.netcnnlip = _conv_stack(_LIP_STAGES, 3, width, dims=3)
        features = max(1, round(512 * width))
        self.netfcaud = _head(features, embedding_dim)
        self.netfclip = _head(features, embedding_dim)

    def forward_audio(self, mfcc_windows: torch.Tensor) -> torch.Tensor:
        """`[B, 1, 13, 20]` MFCC windows -> `[B, embedding_dim]`."""
        return self.netfcaud(self.netcnnaud(mfcc_windows).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """`[B, 3, 5, 224, 224]` BGR face crops (0..255) -> `[B, embedding_dim]`."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(path: str | Path) -> SyncNet:
    """The published SyncNet weights (a state dict: `.safetensors`, or a PyTorch file read with
    `weights_only=True`), in evaluation mode."""
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"SyncNet weights not found: {path}; pass the path of syncnet_v2.model")
    state = load_state_dict_file(path)
    model = SyncNet()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserFacingError(
            f"{path.name} is not a SyncNet state dict ({len(missing)} missing keys, e.g. "
            f"{(missing or unexpected)[0]}); pass syncnet_v2.model from the public SyncNet evaluation"
        )
    return model.eval()
