"""How a loaded pipeline runs: device, dtype, solver, step cache, memory mode, attention backend, quantization,
compilation. One set of options (`RuntimeOptions`) and one function that applies them (`configure_pipeline`),
used by the command line, the app and the benchmarks.

None of these options changes the model; the solver and the step cache change the sampling (and so the
video), the others only how it is computed and where the weights live.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cli import parse_dtype
from ..errors import UserFacingError
from .memory import MEMORY_MODES, apply_memory_mode, quantize_transformer
from .solvers import build_scheduler, enable_step_cache

# Applied once per loaded pipeline: changing them means loading the model again.
LOAD_TIME_OPTIONS = ("device", "dtype", "memory_mode", "quantize", "compile", "attention_backend")


@dataclass(frozen=True)
class RuntimeOptions:
    """Args:
    device: 'auto' (CUDA when available), 'cuda', 'cuda:1' or 'cpu'.
    dtype: compute dtype name ('bfloat16', 'float32', ...); None: bfloat16 on a GPU and on a CPU with
        bfloat16 matrix instructions (`cpu_has_bfloat16_units`), float32 on other CPUs.
    memory_mode: where the weights live during generation (see `MEMORY_MODES`).
    solver: 'euler' (as published), 'unipc' or 'dpm++' (see `SOLVERS`).
    shift: the flow-matching shift; None keeps the model's scheduler's.
    step_cache_threshold: first-block step caching (per window) at this threshold; None: off.
    attention_backend: a diffusers attention backend ('native', 'flash', 'sage', ...); None: the default.
    quantize: a `QUANTIZATIONS` mode for the DiT's linear weights; None: off.
    compile: torch.compile the repeated DiT blocks.
    """

    device: str = "auto"
    dtype: str | None = None
    memory_mode: str = "model_full_load"
    solver: str = "euler"
    shift: float | None = None
    step_cache_threshold: float | None = None
    attention_backend: str | None = None
    quantize: str | None = None
    compile: bool = False

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def compute_dtype(self, device: torch.device | None = None) -> torch.dtype:
        if self.dtype:
            return parse_dtype(self.dtype)
        device = device or self.torch_device()
        if device.type == "cuda" or device.type == "cpu" and cpu_has_bfloat16_units():
            return torch.bfloat16
        return torch.float32


def cpu_has_bfloat16_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX, as oneDNN reports): there
    bfloat16 is faster than float32 (benchmarks/cpu_dtype.py); elsewhere it is emulated and slower."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without oneDNN
        return False


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else the CPU; a CUDA device without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserFacingError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserFacingError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def configure_pipeline(pipeline, options: RuntimeOptions, device: torch.device | None = None) -> torch.device:
    """Apply `options` to a loaded `StableAvatarPipeline`; returns the device it runs on.

    Call it again on the same pipeline to change the solver, shift or step cache (they are replaced); the
    load-time options (`LOAD_TIME_OPTIONS`) are applied once and cannot change without loading again.

    Args:
        device: overrides `options.device` (e.g. the device torchrun gave this process).
    """
    if options.memory_mode not in MEMORY_MODES:
        raise UserFacingError(
            f"unknown GPU memory mode {options.memory_mode!r}; choose one of {', '.join(MEMORY_MODES)}"
        )
    device = device or options.torch_device()
    previous: RuntimeOptions | None = getattr(pipeline, "_runtime_options", None)
    if previous is not None:
        changed = [name for name in LOAD_TIME_OPTIONS if getattr(previous, name) != getattr(options, name)]
        if changed:
            raise ValueError(f"{', '.join(changed)} cannot change on a loaded pipeline; load the model again")
    transformer = pipeline.transformer
    if not hasattr(pipeline, "_model_shift"):  # the loaded scheduler's shift, before any solver replaced it
        config = pipeline.scheduler.config
        pipeline._model_shift = config.get("shift", config.get("flow_shift", 5.0))
    shift = options.shift if options.shift is not None else pipeline._model_shift
    pipeline.scheduler = build_scheduler(options.solver, shift)
    if previous is None and options.attention_backend:
        transformer.set_attention_backend(options.attention_backend)
    if transformer.is_cache_enabled:
        transformer.disable_cache()
    if options.step_cache_threshold is not None:
        enable_step_cache(transformer, options.step_cache_threshold)
    if previous is None:
        if options.quantize:
            quantize_transformer(transformer, options.quantize)
        if options.compile:
            transformer.compile_repeated_blocks(fullgraph=False)
        apply_memory_mode(pipeline, options.memory_mode, device, options.compute_dtype(device))
    pipeline._runtime_options = options
    return device
