"""Where the weights live during generation (the published `--GPU_memory_mode` choices)."""

from __future__ import annotations

import torch

from ..errors import UserFacingError

MEMORY_MODES = {
    "model_full_load": "every component on the device (fastest; 1.3B at 480x832 needs about 18 GB)",
    "model_cpu_offload": "each component moves to the device only while it runs (saves the encoders' memory)",
    "sequential_cpu_offload": "layer by layer to the device and back (least memory, much slower)",
    "model_cpu_offload_and_qfloat8": "the transformer stored in float8 (e4m3), computed in the compute dtype, "
    "plus model offload (about half the transformer's memory; outputs differ slightly)",
}


def apply_memory_mode(pipeline, mode: str, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Place the pipeline's components for `mode` (see MEMORY_MODES)."""
    if mode not in MEMORY_MODES:
        raise UserFacingError(f"unknown GPU memory mode {mode!r}; choose one of {', '.join(MEMORY_MODES)}")
    if mode == "model_cpu_offload_and_qfloat8":
        # Norms, embeddings and the patch projection stay in full precision (diffusers' skip patterns).
        pipeline.transformer.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype
        )
    if mode == "model_full_load":
        pipeline.to(device)
    elif mode == "sequential_cpu_offload":
        # diffusers' group offloading at leaf level: what accelerate's sequential offload does, but it also
        # handles the text encoder's tied embedding (accelerate's hooks fail on it with transformers 5).
        pipeline.enable_group_offload(onload_device=device, offload_type="leaf_level")
    else:
        pipeline.enable_model_cpu_offload(device=device)


QUANTIZATIONS = {
    "int8_weight_only": "DiT linear weights stored as int8 with per-channel scales (torchao), computed in the "
    "compute dtype: about a quarter of float32's weight memory",
}


def quantize_transformer(transformer, mode: str) -> None:
    """Quantize the DiT blocks' linear layers in place (torchao); embeddings, norms and the audio adapter
    stay in full precision."""
    if mode not in QUANTIZATIONS:
        raise UserFacingError(f"unknown quantization {mode!r}; choose one of {', '.join(QUANTIZATIONS)}")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise UserFacingError(
            "--quantize needs torchao >= 0.16 (pip install torchao); it is optional because newer releases "
            "make diffusers 0.42 print warnings and older ones break peft"
        ) from None
    quantize_(
        transformer,
        Int8WeightOnlyConfig(),
        filter_fn=lambda module, name: isinstance(module, torch.nn.Linear) and name.startswith("blocks."),
    )
