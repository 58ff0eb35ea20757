"""Measured training step of the released 1.3B transformer on a GPU: peak memory and seconds per step.

    python -m benchmarks.train_step_gpu --device cuda                 # 1.3B, 512x512, 81 frames
    python -m benchmarks.train_step_gpu --device cpu --config tiny --size 32 --frames 21   # a CPU check

Random weights at the released size (`wan.models.STABLEAVATAR_1_3B`) and random inputs of the shapes
cached features have (`EncodedBatch`: VAE posteriors, umT5/CLIP/wav2vec2 features, masks), so no encoder
and no download is needed. Each mode (full finetune of the published trainable set, LoRA rank 128 /
alpha 64 + audio modules) runs the real objective (`flow_matching_loss`) with gradient checkpointing, bf16
autocast over fp32 master weights and AdamW: one warm-up step, then `--steps` timed optimizer steps.
Peak memory is `torch.cuda.max_memory_allocated` over the whole run of that mode (weights, gradients,
optimizer states, activations). Prints JSON, then a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from wan.loading.lora import is_audio_parameter, lora_config
from wan.loading.released import SCHEDULER_CONFIG
from wan.models import STABLEAVATAR_1_3B, TINY, StableAvatarTransformer3DModel
from wan.training.encode import EncodedBatch
from wan.training.loop import step_generator
from wan.training.objective import ObjectiveConfig, flow_matching_loss

GIB = 2**30
CONFIGS = {"1.3B": STABLEAVATAR_1_3B, "tiny": TINY}
PUBLISHED_TRAINABLE = ("blocks.", "audio")  # TrainConfig.trainable_patterns


def random_batch(config: dict, size: int, frames: int, device: str) -> EncodedBatch:
    """Random tensors shaped as one cached sample of `frames` frames at `size` x `size`."""
    latent_frames, cells = (frames - 1) // 4 + 1, size // 8
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device)

    latent = (1, 16, latent_frames, cells, cells)
    return EncodedBatch(
        latent_mean=randn(*latent),
        latent_std=randn(*latent).abs() * 0.1,
        condition_mean=randn(*latent),
        condition_std=randn(*latent).abs() * 0.1,
        text=randn(1, 512, config["text_dim"]),
        image=randn(1, 257, config["image_dim"]),
        audio=randn(1, 2 * frames, config["audio_dim"]),
        face_masks=torch.ones(1, 1, frames, size, size, device=device),
        lip_masks=torch.zeros(1, 1, frames, size, size, device=device),
    )


def measure(config: dict, lora: bool, size: int, frames: int, steps: int, device: str) -> dict:
    """One mode: build, one warm-up step, `steps` timed steps; peak memory and seconds per step."""
    torch.manual_seed(0)
    model = StableAvatarTransformer3DModel(**config).to(device)
    model.requires_grad_(False)
    if lora:
        model.add_adapter(lora_config(128, 64))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_("lora_" in name or is_audio_parameter(name))
    else:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(any(pattern in name for pattern in PUBLISHED_TRAINABLE))
    model.enable_gradient_checkpointing()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=3e-2, eps=1e-10)
    batch = random_batch(config, size, frames, device)
    sigmas = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).sigmas.float()
    objective = ObjectiveConfig()
    device_type = torch.device(device).type
    losses = []

    def step(index: int) -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            loss = flow_matching_loss(
                model, batch, sigmas, step_generator(0, index, 0, 0), objective, torch.bfloat16
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 0.05)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    step(0)
    _synchronize(device)
    started = time.perf_counter()
    for index in range(1, steps + 1):
        step(index)
    _synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated() / GIB if device_type == "cuda" else None
    row = {
        "mode": "LoRA r128 + audio" if lora else "full (published set)",
        "trained_parameters_M": sum(p.numel() for p in trainable) / 1e6,
        "peak_GiB": peak,
        "s_per_step": seconds,
        "losses": losses,
    }
    return row


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="1.3B")
    parser.add_argument("--size", type=int, default=512, help="square pixel size (multiple of 16)")
    parser.add_argument("--frames", type=int, default=81, help="video frames, 4k+1")
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps after one warm-up")
    args = parser.parse_args(argv)
    if args.size % 16 or (args.frames - 1) % 4:
        parser.error("--size must be a multiple of 16 and --frames 4k+1")
    rows = []
    for lora in (False, True):
        gc.collect()
        if torch.device(args.device).type == "cuda":  # the previous mode's tensors are gone by now
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        rows.append(measure(CONFIGS[args.config], lora, args.size, args.frames, args.steps, args.device))
    setting = {
        "config": args.config,
        "size": args.size,
        "frames": args.frames,
        "device": torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else args.device,
        "precision": "bf16 autocast, fp32 master weights, AdamW",
        "gradient_checkpointing": True,
    }
    print(json.dumps({"setting": setting, "rows": rows}, indent=1))
    print(f"\n{args.config}, {args.size}x{args.size}, {args.frames} frames, batch 1, {setting['device']}:\n")
    print("| mode | trained params (M) | peak memory (GiB) | s/step |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        peak = "n/a (CPU)" if row["peak_GiB"] is None else f"{row['peak_GiB']:.1f}"
        print(f"| {row['mode']} | {row['trained_parameters_M']:.1f} | {peak} | {row['s_per_step']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
