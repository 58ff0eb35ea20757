"""The window schedule covers every latent frame, terminates, and blends as the published sampler does."""

from __future__ import annotations

import math

import pytest
import torch

from wan.pipeline.windows import Window, blend_weights, plan_windows


@pytest.mark.parametrize("num_frames", [1, 2, 20, 21, 22, 25, 37, 38, 100, 1000])
@pytest.mark.parametrize(("window", "overlap"), [(21, 5), (21, 0), (6, 2), (6, 5)])
def test_windows_cover_the_video_with_full_length_windows(num_frames: int, window: int, overlap: int) -> None:
    windows = plan_windows(num_frames, window, overlap)
    assert windows[0].start == 0 and windows[-1].end == num_frames
    covered = torch.zeros(num_frames, dtype=torch.bool)
    for previous, current in zip(windows, windows[1:], strict=False):
        assert current.start < previous.end or overlap == 0
        assert current.overlap == previous.end - current.start >= overlap
        assert current.start > previous.start  # progress: no endless loop
    for w in windows:
        covered[w.start : w.end] = True
        assert w.length == min(window, num_frames)
    assert covered.all()
    if num_frames > window:
        assert len(windows) == math.ceil((num_frames - window) / (window - overlap)) + 1


def test_reference_fixture_schedules() -> None:
    """The two fixture cases: the last window lands exactly where the published loop puts it."""
    assert plan_windows(14, 6, 2) == [Window(0, 6, 0), Window(4, 10, 2), Window(8, 14, 2)]
    assert [w.start for w in plan_windows(15, 6, 3)] == [0, 3, 6, 9]


def test_short_and_single_window_videos() -> None:
    assert plan_windows(1, 21, 5) == [Window(0, 1, 0)]
    assert plan_windows(20, 21, 5) == [Window(0, 20, 0)]
    assert plan_windows(21, 21, 5) == [Window(0, 21, 0)]
    assert plan_windows(22, 21, 5) == [Window(0, 21, 0), Window(1, 22, 20)]


def test_blend_weights() -> None:
    assert torch.allclose(blend_weights(5, "uniform"), torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    log = blend_weights(5, "log")
    assert log[0] == 0 and log[-1] == 1 and (log.diff() > 0).all()
    assert (log[1:-1] > blend_weights(5, "uniform")[1:-1]).all()  # log rises faster early
    with pytest.raises(ValueError, match="weighting"):
        blend_weights(3, "cosine")


def test_invalid_overlap_is_rejected() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(30, 6, 6)
