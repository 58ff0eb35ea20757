"""The memory modes give the same video (offloading) or a close one (float8 storage) on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan.errors import UserFacingError
from wan.pipeline.memory import MEMORY_MODES, apply_memory_mode, quantize_transformer
from wan.pipeline.tiny import build_tiny_pipeline


def _generate(pipe) -> torch.Tensor:
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    audio = np.random.default_rng(1).standard_normal(9 * 640).astype(np.float32) * 0.1
    return pipe(
        image,
        audio,
        height=32,
        width=32,
        num_inference_steps=2,
        clip_length=21,
        overlap=2,
        seed=0,
        output_type="latent",
        progress=False,
    ).latents


def _latents(mode: str | None) -> torch.Tensor:
    pipe = build_tiny_pipeline(seed=0)
    if mode is not None:
        apply_memory_mode(pipe, mode, torch.device("cpu"), torch.float32)
    return _generate(pipe)


@pytest.fixture(scope="module")
def baseline() -> torch.Tensor:
    return _latents(None)


@pytest.mark.parametrize("mode", ["model_full_load", "model_cpu_offload", "sequential_cpu_offload"])
def test_offloading_does_not_change_the_result(baseline, mode) -> None:
    assert (_latents(mode) - baseline).norm() / baseline.norm() < 1e-6


def test_float8_storage_computes_with_the_rounded_weights(baseline) -> None:
    """Weights are stored in float8 (a quarter of float32) and computed in float32: the result equals a
    float32 run whose weights were rounded to float8, and differs from the unrounded one."""
    fp8_pipe = build_tiny_pipeline(seed=0)
    apply_memory_mode(fp8_pipe, "model_cpu_offload_and_qfloat8", torch.device("cpu"), torch.float32)
    stored = dict(fp8_pipe.transformer.named_parameters())
    rounded = [name for name, p in stored.items() if p.dtype == torch.float8_e4m3fn]
    fp8_bytes = sum(p.numel() * p.element_size() for p in stored.values())
    fp32_bytes = sum(p.numel() * 4 for p in stored.values())
    assert rounded and fp8_bytes < 0.5 * fp32_bytes

    simulated = build_tiny_pipeline(seed=0)
    with torch.no_grad():
        for name, parameter in simulated.transformer.named_parameters():
            if name in rounded:
                parameter.copy_(stored[name].float())
    fp8 = _generate(fp8_pipe)
    assert (fp8 - _generate(simulated)).norm() / fp8.norm() < 1e-5
    assert (fp8 - baseline).norm() / baseline.norm() > 1e-3


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(UserFacingError, match="model_full_load"):
        apply_memory_mode(build_tiny_pipeline(), "all_on_gpu", torch.device("cpu"), torch.float32)
    assert set(MEMORY_MODES) >= {"model_full_load", "model_cpu_offload", "sequential_cpu_offload"}


def test_int8_quantization_computes_with_the_dequantized_weights(baseline) -> None:
    pytest.importorskip("torchao")
    quantized = build_tiny_pipeline(seed=0)
    quantize_transformer(quantized.transformer, "int8_weight_only")
    simulated = build_tiny_pipeline(seed=0)
    pairs = zip(quantized.transformer.named_modules(), simulated.transformer.modules(), strict=True)
    linears = [(name, module, twin) for (name, module), twin in pairs if isinstance(module, torch.nn.Linear)]
    rounded = [name for name, module, _ in linears if type(module.weight) is not torch.nn.Parameter]
    assert rounded == [name for name, _, _ in linears if name.startswith("blocks.")]  # DiT blocks only
    with torch.no_grad():
        for _, module, twin in linears:
            if type(module.weight) is not torch.nn.Parameter:  # a torchao int8 tensor
                twin.weight.copy_(module.weight.dequantize())
    ours = _generate(quantized)
    assert (ours - _generate(simulated)).norm() / ours.norm() < 1e-5
    assert (ours - baseline).norm() / baseline.norm() > 1e-4
    with pytest.raises(UserFacingError, match="int8_weight_only"):
        quantize_transformer(simulated.transformer, "int4")
