"""Sync-C, Sync-D and the audio-video offset, as the public SyncNet evaluation defines them.

For every 5-frame window of the face crop (start t) and every 20-frame MFCC window (start 4t), SyncNet gives
one embedding each. For each offset k in [-vshift, vshift] the distance of video window t to audio window
t - k is averaged over t (audio windows outside the clip count as zero embeddings). Then

    Sync-D = min_k mean_dist(k),   Sync-C = median_k mean_dist(k) - Sync-D,   offset = argmin_k mean_dist(k)

Offset k > 0: the video window at t matches the audio at t - k (the picture trails the sound by k frames).
The per-frame confidence is the median of the mean distances minus each window's distance at the best
offset, median-filtered over 9 frames: a curve over time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import medfilt

from ..errors import UserFacingError
from .mfcc import mfcc
from .syncnet import MFCC_PER_FRAME, MFCC_WINDOW, WINDOW_FRAMES, SyncNet

VSHIFT = 15  # frames searched on each side


@dataclass
class SyncResult:
    """Sync measures of one video.

    offset: frames (positive: the picture trails the sound); sync_d / sync_c: see the module docstring.
    mean_distances: `[2 * vshift + 1]` per offset -vshift .. vshift.
    framewise_confidence: `[windows]` median-filtered confidence per 5-frame window.
    """

    offset: int
    sync_d: float
    sync_c: float
    mean_distances: np.ndarray = field(repr=False)
    framewise_confidence: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        return {
            "sync_c": self.sync_c,
            "sync_d": self.sync_d,
            "av_offset": self.offset,
            "mean_distance_per_offset": np.round(self.mean_distances, 5).tolist(),
        }


def offset_distances(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """`[T, 2 * vshift + 1]`: distance of video embedding t to audio embedding t - k for k = -vshift..vshift
    (entry `vshift + k`), audio zero-padded beyond its ends.

    Args:
        video, audio: `[T, D]` embeddings of the same windows.
    """
    if video.shape != audio.shape:
        raise ValueError(
            f"video and audio embeddings differ in shape: {tuple(video.shape)}, {tuple(audio.shape)}"
        )
    padded = F.pad(audio, (0, 0, vshift, vshift))
    count = 2 * vshift + 1
    # audio index t - k sits at padded row t - k + vshift; k = vshift - j for window row j = 0..2 vshift
    rows = torch.arange(video.shape[0])[:, None] + torch.arange(count)[None, :]
    distances = F.pairwise_distance(video[:, None, :].expand(-1, count, -1), padded[rows], eps=1e-6)
    return distances.flip(1)  # column j -> offset k = j - vshift


def sync_scores(distances: torch.Tensor, vshift: int = VSHIFT) -> SyncResult:
    """Offset, Sync-D and Sync-C from `[T, 2 * vshift + 1]` distances (columns: offsets -vshift..vshift)."""
    mean = distances.mean(dim=0)
    best = int(torch.argmin(mean))
    median = float(torch.median(mean))
    framewise = median - distances[:, best].numpy()
    return SyncResult(
        offset=best - vshift,
        sync_d=float(mean[best]),
        sync_c=median - float(mean[best]),
        mean_distances=mean.numpy(),
        framewise_confidence=medfilt(framewise, kernel_size=9),
    )


def lip_windows(crops: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """`[stop - start, 3, 5, H, W]` BGR float windows from `[T, H, W, 3]` RGB uint8 crops."""
    bgr = torch.from_numpy(np.ascontiguousarray(crops[start : stop + WINDOW_FRAMES - 1, :, :, ::-1])).float()
    frames = bgr.permute(3, 0, 1, 2)  # [3, T, H, W]
    return torch.stack([frames[:, t : t + WINDOW_FRAMES] for t in range(stop - start)])


def mfcc_windows(features: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """`[stop - start, 1, 13, 20]` MFCC windows for video windows start..stop-1 from `[13, N]` MFCCs."""
    tensor = torch.from_numpy(features).float()
    return torch.stack(
        [tensor[None, :, MFCC_PER_FRAME * t : MFCC_PER_FRAME * t + MFCC_WINDOW] for t in range(start, stop)]
    )


def check_audio(waveform: np.ndarray, name: str, silence: float = 1e-3) -> None:
    """Refuse audio SyncNet cannot judge: silent (peak below `silence`)."""
    peak = float(np.max(np.abs(waveform))) if len(waveform) else 0.0
    if peak < silence:
        raise UserFacingError(
            f"the audio of {name} is silent (peak {peak:.1e}); lip sync needs the speech that drove the video"
        )


@torch.no_grad()
def embed_windows(
    model: SyncNet, crops: np.ndarray, waveform: np.ndarray, batch_size: int = 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """SyncNet embeddings `[W, D]` of every lip window and its MFCC window.

    As the public evaluation: the clip is cut to min(frames, samples / 640) frames and windows start at
    every frame up to 5 frames before its end.

    Args:
        crops: `[T, 224, 224, 3]` RGB uint8 face crops at 25 fps.
        waveform: mono float audio at 16 kHz.
    """
    features = mfcc(waveform)
    length = min(len(crops), len(waveform) // 640)
    windows = length - WINDOW_FRAMES
    if windows < 1:
        raise UserFacingError(
            f"{length} frames of face and audio: Sync-C needs at least {WINDOW_FRAMES + 1} (0.24 s)"
        )
    model.eval()
    device = next(model.parameters()).device
    video, audio = [], []
    for start in range(0, windows, batch_size):
        stop = min(windows, start + batch_size)
        video.append(model.forward_lip(lip_windows(crops, start, stop).to(device)).cpu())
        audio.append(model.forward_audio(mfcc_windows(features, start, stop).to(device)).cpu())
    return torch.cat(video), torch.cat(audio)


def measure_sync(
    model: SyncNet, crops: np.ndarray, waveform: np.ndarray, name: str = "video", vshift: int = VSHIFT
) -> SyncResult:
    """Sync-C, Sync-D and the offset of face crops `[T, 224, 224, 3]` against 16 kHz audio."""
    check_audio(waveform, name)
    video, audio = embed_windows(model, crops, waveform)
    return sync_scores(offset_distances(video, audio, vshift), vshift)
