"""One runtime-configuration path (`RuntimeOptions` + `configure_pipeline`) for the command line, the app and
the benchmarks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import soundfile
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from tests.test_app_runner import SMALL
from wan.app.logic import make_settings
from wan.app.runner import Runner
from wan.errors import UserFacingError
from wan.generate import build_parser, runtime_options
from wan.pipeline.runtime import RuntimeOptions, configure_pipeline, resolve_device
from wan.pipeline.tiny import build_tiny_pipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "case-1"


def test_configure_applies_solver_shift_and_step_cache_and_can_change_them() -> None:
    pipe = build_tiny_pipeline(seed=0)
    model_shift = pipe.scheduler.config.shift
    configure_pipeline(pipe, RuntimeOptions(device="cpu", solver="unipc", step_cache_threshold=0.2))
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.scheduler.config.flow_shift == model_shift
    assert pipe.transformer.is_cache_enabled
    configure_pipeline(pipe, RuntimeOptions(device="cpu", solver="euler", shift=3.0))
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0
    assert not pipe.transformer.is_cache_enabled
    configure_pipeline(pipe, RuntimeOptions(device="cpu"))
    assert pipe.scheduler.config.shift == model_shift  # the model's own shift, not the last override
    with pytest.raises(ValueError, match="memory_mode cannot change on a loaded pipeline"):
        configure_pipeline(pipe, RuntimeOptions(device="cpu", memory_mode="model_cpu_offload"))
    with pytest.raises(UserFacingError, match="unknown GPU memory mode 'all'"):
        configure_pipeline(build_tiny_pipeline(seed=0), RuntimeOptions(device="cpu", memory_mode="all"))


def test_the_command_line_flags_become_runtime_options() -> None:
    flags = "--sample_solver unipc --sample_shift 4 --enable_teacache --teacache_threshold 0.2 "
    flags += "--GPU_memory_mode model_cpu_offload --device cpu --dtype bf16"
    args = build_parser().parse_args(args_without_cache() + flags.split(" "))
    assert runtime_options(args) == RuntimeOptions(
        device="cpu",
        dtype="bf16",
        memory_mode="model_cpu_offload",
        solver="unipc",
        shift=4.0,
        step_cache_threshold=0.2,
    )
    assert runtime_options(build_parser().parse_args(args_without_cache())).step_cache_threshold is None


def args_without_cache() -> list[str]:
    return ["--validation_reference_path", "a.png", "--validation_driven_audio_path", "a.wav"]


def test_a_cuda_device_without_a_gpu_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserFacingError, match="no CUDA GPU is visible; use --device cpu"):
        resolve_device("cuda")


def test_the_app_offers_the_solver_and_step_cache(tmp_path) -> None:
    samples, rate = soundfile.read(EXAMPLE / "audio.wav", frames=int(16000 * 0.4))
    audio = tmp_path / "speech.wav"
    soundfile.write(audio, samples, rate)
    runner = Runner(tmp_path / "checkpoints", tmp_path / "out", device="cpu")
    settings = make_settings(**SMALL, solver="unipc", step_cache=0.1)
    assert settings.solver == "unipc" and settings.step_cache == 0.1
    runner.generate(EXAMPLE / "reference.png", audio, settings, "s")
    pipe = runner._loaded[1]
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler) and pipe.transformer.is_cache_enabled
    with pytest.raises(UserFacingError, match="unknown solver 'heun'"):
        runner.generate(EXAMPLE / "reference.png", audio, replace(settings, solver="heun"), "s")


@pytest.mark.parametrize("units", [True, False])
def test_the_cpu_computes_in_bfloat16_where_it_has_bfloat16_units(monkeypatch, units) -> None:
    """bfloat16 on a CPU with bfloat16 matrix instructions (benchmarks/cpu_dtype.py: 1.5x on a released-width
    forward, the demo's lip sync unchanged), float32 elsewhere; GPUs bfloat16; an explicit dtype always wins."""
    import torch

    import wan.pipeline.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_bfloat16_units", lambda: units)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert RuntimeOptions().compute_dtype(cpu) == (torch.bfloat16 if units else torch.float32)
    assert RuntimeOptions().compute_dtype(gpu) == torch.bfloat16
    assert RuntimeOptions(dtype="float32").compute_dtype(cpu) == torch.float32
    assert RuntimeOptions(dtype="bfloat16").compute_dtype(cpu) == torch.bfloat16


def test_bfloat16_units_are_read_from_the_cpu() -> None:
    import torch

    from wan.pipeline.runtime import cpu_has_bfloat16_units

    assert cpu_has_bfloat16_units() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
