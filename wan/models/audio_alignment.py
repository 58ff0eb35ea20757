"""Which wav2vec2 tokens belong to which latent frame.

The Wan VAE packs 4 video frames into one latent frame (the first latent frame holds the first video frame
alone), so a clip of N = 4(F-1)+1 video frames has F latent frames. The published model was trained with
each latent frame attending to a fixed-size window of audio tokens around its centre; these functions
reproduce that alignment exactly, so released checkpoints see what they were trained on.
"""

from __future__ import annotations

import torch

# Tokens added on both sides of every window (the published model's `expand_length`).
DEFAULT_WINDOW_PADDING = 4


def latent_frames_for(num_video_frames: int) -> int:
    """Latent frames F of a clip of `num_video_frames` = 4(F-1)+1 frames (rounded down like the VAE)."""
    return (num_video_frames - 1) // 4 + 1


def audio_token_ranges(num_tokens: int, num_video_frames: int) -> list[tuple[int, int]]:
    """Inclusive token ranges `[start, end]`, one per latent frame, before widening.

    With `tpf = num_tokens / num_video_frames` tokens per video frame and `half = int(2 * tpf)`, latent frame
    i >= 1 is centred on `int(tpf * (4i - 1)) - 1`; latent frame 0 (the reference frame) takes the window
    just before latent frame 1's. Ranges may reach outside `[0, num_tokens)`; those positions become zeros.
    """
    if num_tokens < 1 or num_video_frames < 1:
        raise ValueError(
            f"need at least one audio token and one video frame, got {num_tokens} and {num_video_frames}"
        )
    tokens_per_frame = num_tokens / num_video_frames
    half = int(tokens_per_frame * 4 / 2)
    centres = [int(tokens_per_frame * (4 * i - 1)) - 1 for i in range(1, latent_frames_for(num_video_frames))]
    # Latent frame 1's start is defined even for single-latent-frame clips, so frame 0 always has a window.
    first_centre = int(tokens_per_frame * 3) - 1
    first_start = first_centre - half
    ranges = [(first_start - 2 * half, first_start)]
    ranges += [(centre - half, centre + half) for centre in centres]
    return ranges


def split_audio_tokens_per_frame(
    tokens: torch.Tensor, num_video_frames: int, window_padding: int = DEFAULT_WINDOW_PADDING
) -> torch.Tensor:
    """Cut audio tokens into one equal-length window per latent frame.

    Args:
        tokens: `[B, Na, C]` audio tokens of the whole clip.
        num_video_frames: pixel frames N the audio belongs to.
        window_padding: tokens added on both sides of each window.

    Returns:
        `[B, F, n, C]` with `n = 4 * int(2 * Na / N) + 1 + 2 * window_padding`. A window's tokens that fall
        outside the clip are dropped and the window is filled up with zeros *at its end* (not in place), as
        the published model was trained; the zeros are not masked.
    """
    batch, num_tokens, channels = tokens.shape
    ranges = [
        (s - window_padding, e + window_padding) for s, e in audio_token_ranges(num_tokens, num_video_frames)
    ]
    window = ranges[0][1] - ranges[0][0] + 1
    offsets = torch.arange(window)
    index_rows = []
    for start, end in ranges:
        first, last = max(start, 0), min(end, num_tokens - 1)
        valid = max(last - first + 1, 0)
        # Positions past the valid part point at an extra all-zero token appended below.
        index_rows.append(torch.where(offsets < valid, first + offsets, torch.full_like(offsets, num_tokens)))
    index = torch.stack(index_rows).to(tokens.device)  # [F, n]
    padded = torch.cat([tokens, tokens.new_zeros(batch, 1, channels)], dim=1)
    return padded[:, index]
