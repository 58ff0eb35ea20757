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


def _two_window_sampling(
    num_inference_steps: int,
) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]]]:
    """Sample 5 latent frames as windows [0, 4) and [1, 5) (overlap 3); returns the result and each window's
    latents after its solver step, before blending."""
    from wan.pipeline.sampler import SamplingConditions, SlidingWindowSampler
    from wan.pipeline.solvers import build_scheduler
    from wan.pipeline.tiny import build_tiny_pipeline

    transformer = build_tiny_pipeline(seed=0).transformer
    generator = torch.Generator().manual_seed(2)
    height, width, window_length, overlap = 4, 6, 4, 3
    conditions = SamplingConditions(
        prompt_embeds=torch.randn(1, 4, transformer.config.text_dim, generator=generator),
        negative_prompt_embeds=torch.randn(1, 2, transformer.config.text_dim, generator=generator),
        image_embeds=torch.randn(1, 257, transformer.config.image_dim, generator=generator),
        condition=torch.randn(1, 20, window_length, height, width, generator=generator),
    )
    audio = torch.randn(1, 2 * 13 + 8, 768, generator=generator)
    noise = torch.randn(1, 16, 5, height, width, generator=generator)
    seen: list[tuple[int, int, torch.Tensor]] = []
    sampler = SlidingWindowSampler(
        transformer, build_scheduler("euler"), window_length=window_length, overlap=overlap
    )

    def record(step: int, window: int, timestep: torch.Tensor, latents: torch.Tensor) -> None:
        seen.append((step, window, latents.detach().clone()))

    out = sampler(
        noise, conditions, lambda window: audio, num_inference_steps, progress=False, step_end=record
    )
    return out, seen


def test_one_step_sampling_still_blends_the_overlaps() -> None:
    """The published sampler blends overlaps from the second step on, so a one-step (distilled) sampler would
    never blend and each window would overwrite its predecessor's frames: a hard seam. With one step the
    overlap is blended at that step."""
    out, seen = _two_window_sampling(1)
    (_, _, first), (_, _, second) = seen
    weights = blend_weights(3).view(1, 1, -1, 1, 1)
    expected = second[:, :, :3] * weights + first[:, :, 1:4] * (1 - weights)
    assert torch.allclose(out[:, :, 1:4], expected, atol=1e-6)
    assert not torch.allclose(out[:, :, 1:4], second[:, :, :3], atol=1e-4)  # the seam the defect left


def test_several_steps_blend_from_the_second_step_as_published() -> None:
    out, seen = _two_window_sampling(2)
    last_first, last_second = seen[2][2], seen[3][2]
    weights = blend_weights(3).view(1, 1, -1, 1, 1)
    expected = last_second[:, :, :3] * weights + last_first[:, :, 1:4] * (1 - weights)
    assert torch.allclose(out[:, :, 1:4], expected, atol=1e-6)
