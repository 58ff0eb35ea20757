"""The speed/quality benchmark counts the transformer work that really runs."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.speed_quality_curve import WorkCounter, _kept_rows
from wan.pipeline.guidance import PublishedGuidance
from wan.pipeline.sampler import SamplingConditions, SlidingWindowSampler
from wan.pipeline.solvers import build_scheduler, enable_step_cache
from wan.pipeline.tiny import build_tiny_pipeline


def _sample(transformer, interval=(0.0, 1.0)) -> None:
    g = torch.Generator().manual_seed(0)
    conditions = SamplingConditions(
        torch.randn(1, 5, 32, generator=g),
        torch.randn(1, 6, 32, generator=g),
        torch.randn(1, 5, 32, generator=g),
        torch.randn(1, 20, 6, 4, 4, generator=g),
    )
    sampler = SlidingWindowSampler(
        transformer,
        build_scheduler("euler"),
        window_length=6,
        overlap=2,
        guidance=PublishedGuidance(interval=interval),
    )
    sampler(
        torch.randn(1, 16, 6, 4, 4, generator=g),
        conditions,
        lambda w: torch.randn(1, 8 * w.length, 768),
        num_inference_steps=4,
        progress=False,
    )


@pytest.mark.parametrize(("interval", "expected"), [((0.0, 1.0), 12.0), ((0.0, 0.5), 8.0)])
def test_guided_forwards_count_three_and_single_ones_one(interval, expected) -> None:
    transformer = build_tiny_pipeline(seed=0).transformer
    counter = WorkCounter(transformer)
    _sample(transformer, interval)
    counter.remove()
    assert counter.total == pytest.approx(expected)


def test_blocks_skipped_by_the_step_cache_do_not_count() -> None:
    transformer = build_tiny_pipeline(seed=0).transformer
    enable_step_cache(transformer, 1e9)  # every step after the first reuses the cached residual
    counter = WorkCounter(transformer)
    _sample(transformer)
    blocks = len(transformer.blocks)
    assert counter.total == pytest.approx(3 + 3 * 3 / blocks)  # step 1 in full, then only the first block


def test_an_only_run_keeps_the_other_rows_of_the_earlier_curve(tmp_path) -> None:
    path = tmp_path / "curve.json"
    path.write_text(json.dumps([{"name": "euler 5", "lipsync_right": 0.6}, {"name": "student 1 step"}]))
    assert _kept_rows(path, ["student 1 step"]) == {"euler 5": {"name": "euler 5", "lipsync_right": 0.6}}
    assert _kept_rows(path, None) == {}  # a full run measures every row again
    assert _kept_rows(tmp_path / "missing.json", ["student 1 step"]) == {}
