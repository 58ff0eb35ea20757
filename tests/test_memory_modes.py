"""The memory modes give the same video (offloading) or a close one (float8 storage) on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan.errors import UserFacingError
from wan.pipeline.memory import MEMORY_MODES, apply_memory_mode
from wan.pipeline.tiny import build_tiny_pipeline


def _latents(mode: str | None) -> torch.Tensor:
    pipe = build_tiny_pipeline(seed=0)
    if mode is not None:
        apply_memory_mode(pipe, mode, torch.device("cpu"), torch.float32)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    audio = np.random.default_rng(1).standard_normal(9 * 640).astype(np.float32) * 0.1
    return pipe(image, audio, height=32, width=32, num_inference_steps=2, clip_length=21, overlap=2, seed=0,
                output_type="latent", progress=False).latents  # fmt: skip


@pytest.fixture(scope="module")
def baseline() -> torch.Tensor:
    return _latents(None)


@pytest.mark.parametrize("mode", ["model_full_load", "model_cpu_offload", "sequential_cpu_offload"])
def test_offloading_does_not_change_the_result(baseline, mode) -> None:
    assert (_latents(mode) - baseline).norm() / baseline.norm() < 1e-6


def test_float8_storage_changes_the_result_only_slightly(baseline) -> None:
    fp8 = _latents("model_cpu_offload_and_qfloat8")
    error = float((fp8 - baseline).norm() / baseline.norm())
    assert 0 < error < 0.05


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(UserFacingError, match="model_full_load"):
        apply_memory_mode(build_tiny_pipeline(), "all_on_gpu", torch.device("cpu"), torch.float32)
    assert set(MEMORY_MODES) >= {"model_full_load", "model_cpu_offload", "sequential_cpu_offload"}
