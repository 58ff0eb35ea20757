"""The sliding-window schedule: which latent frames each window denoises and how overlaps are fused."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..generation_settings import PUBLISHED_FPS, SAMPLE_RATE

WEIGHTING_SCHEMES = ("uniform", "log")

# Pixel frames per latent frame: the Wan VAE's temporal compression, which the audio adapter's alignment
# (each latent frame attends to its 4 frames of audio) is trained for. The pipeline checks `vae.config` agrees.
FRAMES_PER_LATENT = 4


@dataclass(frozen=True)
class Window:
    """Latent frames `[start, end)`; the first `overlap` of them were also computed by the previous window."""

    start: int
    end: int
    overlap: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_windows(num_latent_frames: int, window_length: int, overlap: int) -> list[Window]:
    """Windows of `window_length` latent frames, each starting `window_length - overlap` after the last.

    Unlike the published sampler (which hangs when the video is exactly one window long, renders nothing
    when it is shorter, and gives the last window a ragged length), every window here has the full length
    except when the whole video is shorter than one window, and the last window is aligned to the end, so it
    overlaps its predecessor by at least `overlap` frames.
    """
    if num_latent_frames < 1:
        raise ValueError("the video needs at least one latent frame")
    if window_length < 1 or not 0 <= overlap < window_length:
        raise ValueError(
            f"need 0 <= overlap < window length, got overlap {overlap} and window {window_length}"
        )
    if num_latent_frames <= window_length:
        return [Window(0, num_latent_frames, 0)]
    stride = window_length - overlap
    windows = [Window(0, window_length, 0)]
    while windows[-1].end < num_latent_frames:
        previous = windows[-1]
        start = min(previous.start + stride, num_latent_frames - window_length)
        windows.append(Window(start, start + window_length, previous.end - start))
    return windows


def blend_weights(length: int, scheme: str = "uniform") -> torch.Tensor:
    """Weights `[length]` of the *new* window's frames across an overlap, rising from 0 to 1.

    'uniform': j / (length - 1); 'log': ln(1 + (e - 1) j / (length - 1)), min-max normalised.
    """
    if scheme not in WEIGHTING_SCHEMES:
        raise ValueError(
            f"unknown overlap weighting {scheme!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}"
        )
    if length == 1:
        return torch.zeros(1)
    if scheme == "uniform":
        return torch.arange(length, dtype=torch.float32) / (length - 1)
    weights = torch.log1p(torch.linspace(0, 1, length) * (torch.exp(torch.tensor(1.0)) - 1))
    return (weights - weights.min()) / (weights.max() - weights.min())


def window_audio_span(window: Window, samples_per_frame: int) -> tuple[int, int]:
    """(first sample, number of samples) of the audio a window is conditioned on: `FRAMES_PER_LATENT` video
    frames per latent frame."""
    samples_per_latent = FRAMES_PER_LATENT * samples_per_frame
    return window.start * samples_per_latent, window.length * samples_per_latent


def video_frames_for_audio(num_samples: int, fps: int = PUBLISHED_FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Whole video frames the audio spans: floor(samples / (sample_rate / fps))."""
    return num_samples // (sample_rate // fps)


def latent_frames_for_video(num_frames: int) -> int:
    """Latent frames whose decoding covers `num_frames` (the VAE gives 1 + 4(L-1)); extra frames are cut."""
    return math.ceil((num_frames - 1) / FRAMES_PER_LATENT) + 1


def video_frames_for_latents(num_latent_frames: int) -> int:
    """Pixel frames `1 + 4(L-1)` that `num_latent_frames` decode to (a clip of that length encodes to L)."""
    return FRAMES_PER_LATENT * (num_latent_frames - 1) + 1


def latent_frames_for_clip(clip_length: int) -> int:
    """Latent frames of a `clip_length`-frame clip (`4k+1` frames -> `k+1`): the window length."""
    return (clip_length - 1) // FRAMES_PER_LATENT + 1
