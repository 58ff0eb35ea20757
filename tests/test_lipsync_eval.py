"""The lip-sync benchmark's measures on constructed data whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.lipsync_eval import (
    CONTROL_SEED,
    FPS,
    HELD_OUT_SEED,
    LIPSYNC_SECONDS,
    TARGETS,
    best_lag,
    frame_changes,
    identity_similarity,
    latent_frame_split,
    linear_drop,
    mouth_box,
    mouth_opening,
    pearson,
    per_second,
    pooled_audio_ceiling,
    seam_frames,
    seam_statistics,
)
from wan.training.synthetic import FaceStyle, draw_face, loudness_per_frame, speech_audio


def test_pearson_of_known_signals() -> None:
    x = np.sin(np.linspace(0, 20, 500))
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(x, np.ones_like(x)) == 0.0
    noise = np.random.default_rng(0).standard_normal((2, 5000))
    assert abs(pearson(*noise)) < 0.05
    with pytest.raises(ValueError):
        pearson(x, x[:-1])


def test_best_lag_finds_a_delay() -> None:
    signal = np.random.default_rng(1).standard_normal(300)
    delayed = np.concatenate([np.zeros(2), signal[:-2]])  # delayed[t] = signal[t - 2]
    lag, correlation = best_lag(delayed, signal)
    assert lag == 2 and correlation == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_mouth_opening_follows_the_drawn_mouth(seed) -> None:
    rng = np.random.default_rng(seed)
    style = FaceStyle.random(rng)
    openings = rng.uniform(0, 1, 60)
    offsets = rng.uniform(-1, 1, (60, 2)) * (0.02, 0.015)
    size = 64
    frames = np.stack(
        [
            np.asarray(draw_face(style, (128, 128), m, True, tuple(o))[0].resize((size, size)))
            for m, o in zip(openings, offsets, strict=True)
        ]
    )
    box = mouth_box(style.face_width, style.face_height, size)
    assert pearson(mouth_opening(frames, box), openings) > 0.95


def test_pooled_audio_ceiling_is_set_by_how_far_a_window_reaches_past_its_frames() -> None:
    rng = np.random.default_rng(5)
    # loudness constant over each latent frame's 4 video frames, independent between them
    chunked = np.concatenate([rng.uniform(0, 1, 1), np.repeat(rng.uniform(0, 1, 200), 4)])
    tight, released = pooled_audio_ceiling(chunked, 0), pooled_audio_ceiling(chunked, 4)
    assert tight > 0.95  # 8 of its 9 tokens are its own frames'
    assert released < 0.8  # 17 tokens: 9 of them belong to the neighbours
    slow = np.sin(np.linspace(0, 6, 801))  # barely changes over a window: nothing is lost
    assert pooled_audio_ceiling(slow, 4) > 0.99


def test_latent_frame_split_separates_the_means_of_latent_frames_from_what_is_inside_them() -> None:
    # independent frames: 3/4 of the variance is inside groups of 4
    loudness = np.random.default_rng(2).uniform(0, 1, 4001)
    assert latent_frame_split(loudness, loudness) == pytest.approx(
        {"grouped": 1.0, "within": 1.0, "within_share": 0.75}, abs=0.02
    )
    # a mouth holding each latent frame's mean loudness: right across latent frames, nothing inside
    held = np.concatenate([loudness[:1], np.repeat(loudness[1:].reshape(-1, 4).mean(axis=1), 4)])
    split = latent_frame_split(held, loudness)
    assert split["grouped"] == pytest.approx(1.0) and split["within"] == 0.0 and split["within_share"] == 0.0
    # the reverse: right inside latent frames, the means constant (up to rounding, so not their correlation)
    inside = loudness - np.concatenate([[0.0], np.repeat(loudness[1:].reshape(-1, 4).mean(axis=1), 4)])
    split = latent_frame_split(inside, loudness)
    assert split["within"] == pytest.approx(1.0) and split["within_share"] == pytest.approx(1.0)


def test_mouth_box_holds_the_lips_at_every_head_offset() -> None:
    for seed in range(20):
        style = FaceStyle.random(np.random.default_rng(seed))
        x0, y0, x1, y1 = mouth_box(style.face_width, style.face_height, 128)
        for offset in [(-0.02, -0.015), (0.02, 0.015), (-0.02, 0.015), (0.02, -0.015)]:
            lips = np.asarray(draw_face(style, (128, 128), 1.0, True, offset)[2]) > 0
            inside = np.zeros_like(lips)
            inside[y0:y1, x0:x1] = True
            assert lips.any() and not (lips & ~inside).any(), (seed, offset)


def test_identity_similarity_ignores_the_excluded_region() -> None:
    reference = np.full((16, 16, 3), 100, np.uint8)
    frames = np.stack([reference] * 3)
    frames[1, 4:8, 4:8] = 255  # only inside the box
    frames[2] = 151  # everything 51/255 = 0.2 off
    similarity = identity_similarity(frames, reference, exclude=(4, 4, 8, 8))
    assert similarity[:2] == pytest.approx([1.0, 1.0])
    assert similarity[2] == pytest.approx(0.8)


def test_per_second_and_linear_drop() -> None:
    values = np.repeat(np.arange(4.0), 25)
    assert per_second(values) == pytest.approx([0, 1, 2, 3])
    falling = 0.9 - 0.001 * np.arange(60)
    assert linear_drop(falling) == pytest.approx(0.06)
    assert linear_drop(falling, span=30) == pytest.approx(0.03)
    assert linear_drop(np.full(60, 0.8)) == pytest.approx(0.0, abs=1e-12)


def test_seam_frames_match_the_window_plan() -> None:
    # 41 frames = 11 latent frames; windows of 6 with overlap 2: [0, 6), [4, 10), [5, 11) (end-aligned).
    # Hand-overs at latents 4 and 6 (second window), 5 and 10 (third); latent k starts at frame 4k - 3.
    assert seam_frames(41, 21, 2) == [13, 17, 21, 37]
    assert seam_frames(21, 21, 2) == []  # one window: no seams


def test_seam_statistics_on_constructed_changes() -> None:
    frames = np.zeros((41, 4, 4, 3), np.uint8)
    steps = np.full(41, 2, np.uint8)
    steps[[13, 17, 21, 37]] = 6
    frames[:] = np.cumsum(steps)[:, None, None, None].astype(np.uint8)
    changes = frame_changes(frames)
    assert np.isnan(changes[0]) and changes[1] == pytest.approx(2 / 255)
    statistics = seam_statistics(changes, [13, 17, 21, 37])
    assert statistics["seams"] == 4
    assert statistics["seam_ratio"] == pytest.approx(3.0)
    assert statistics["max_seam_ratio"] == pytest.approx(3.0)


def test_the_control_speech_is_unrelated_to_the_held_out_speech() -> None:
    """Over the lip-sync videos' length, the loudness of the control speech must not follow the held-out
    speech's (else a mouth that follows the right audio would pass as following the wrong one too)."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    FaceStyle.random(rng)  # write_clip draws the face before the speech
    held_out = speech_audio(LIPSYNC_SECONDS, rng)
    control = speech_audio(LIPSYNC_SECONDS, np.random.default_rng(CONTROL_SEED))
    frames = int(LIPSYNC_SECONDS * FPS)
    correlation = pearson(loudness_per_frame(held_out, frames), loudness_per_frame(control, frames))
    assert abs(correlation) < TARGETS["lipsync_wrong"] / 2
