"""Distillation steps at the real size: peak memory and seconds per step of a 1.3B student (random weights).

    python -m benchmarks.distill_step_gpu --device cuda                 # 1.3B, 480x832, 81 frames, bf16
    python -m benchmarks.distill_step_gpu --device cpu --config tiny --size 32x32 --frames 21   # the check

Runs the real step code of `wan.training.distill_core` on random features of the real shapes (umT5 4096,
CLIP 257x1280, wav2vec2 768): the teacher's guided Euler step (one guidance batch of 3, no gradient: what
the teacher stage costs per step and window), a regression step of the student (forward + backward +
AdamW) and a DMD step (critic update, then teacher + critic denoising and the student update). Teacher
frozen in bf16; student and critic fp32 master weights under bf16 autocast with gradient checkpointing,
AdamW. Prints JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SIZES = {"1.3B": "STABLEAVATAR_1_3B", "tiny": "TINY"}


def random_window(config: dict, frames: int, height: int, width: int, device) -> object:
    """An `EncodedBatch` of one window with random features of the model's shapes."""
    from wan.training.encode import EncodedBatch

    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    generator = torch.Generator().manual_seed(0)

    def draw(*shape):
        return torch.randn(shape, generator=generator).to(device)

    return EncodedBatch(
        latent_mean=draw(*latent),
        latent_std=torch.zeros(latent, device=device),
        condition_mean=draw(*latent),
        condition_std=torch.zeros(latent, device=device),
        text=draw(1, 64, config["text_dim"]),
        image=draw(1, 257, config["image_dim"]),
        audio=draw(1, 2 * (frames + 3) - 1, config["audio_dim"]),
        face_masks=torch.ones(1, 1, frames, height, width, device=device),
        lip_masks=torch.zeros(1, 1, frames, height, width, device=device),
    )


def measure(config_name: str, size: tuple[int, int], frames: int, device: str, steps: int) -> dict:
    import wan.models as models
    from wan.models import StableAvatarTransformer3DModel
    from wan.pipeline.guidance import PublishedGuidance
    from wan.training.distill_core import (
        distribution_matching_losses,
        guided_flow,
        trajectory_regression_loss,
    )

    config = getattr(models, SIZES[config_name])
    width, height = size
    device = torch.device(device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    teacher = StableAvatarTransformer3DModel(**config).to(device, torch.bfloat16).eval().requires_grad_(False)
    student = StableAvatarTransformer3DModel(**config).to(device).train()
    critic = StableAvatarTransformer3DModel(**config).to(device).train()
    for model in (student, critic):
        model.enable_gradient_checkpointing()
    optimizers = {m: torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (student, critic)}
    window = random_window(config, frames, height, width, device)
    negative = torch.randn(1, 48, config["text_dim"], device=device)
    guidance = PublishedGuidance(text_scale=1.0, audio_scale=2.0)
    noise = torch.randn(window.latent_mean.shape, device=device)
    schedule = torch.linspace(1.0, 0.0, 1001)[:-1]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def update(model: torch.nn.Module, loss: torch.Tensor) -> None:
        optimizers[model].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizers[model].step()

    def teacher_step() -> None:
        with torch.no_grad(), autocast:
            guided_flow(
                teacher, noise, torch.ones(1, device=device), window, negative, guidance, torch.bfloat16
            )

    def regression_step() -> None:
        with autocast:
            loss = trajectory_regression_loss(
                student, window, noise, window.latent_mean, torch.ones(1, device=device), torch.bfloat16
            )
        update(student, loss)

    def dmd_step() -> None:
        generator = torch.Generator().manual_seed(1)
        with autocast:
            critic_loss, student_loss = distribution_matching_losses(
                student,
                critic,
                teacher,
                window,
                noise,
                negative,
                guidance,
                schedule,
                generator,
                torch.bfloat16,
            )
        update(critic, critic_loss)
        update(student, student_loss)

    def timed(step) -> tuple[float, float]:
        step()  # warm-up (allocations, kernels)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        return seconds, peak

    rows = []
    for name, step in (
        ("teacher guided step (batch 3, no grad)", teacher_step),
        ("regression step (student fwd+bwd+AdamW)", regression_step),
        ("DMD step (critic update + teacher + student update)", dmd_step),
    ):
        seconds, peak = timed(step)
        rows.append({"step": name, "s_per_step": seconds, "peak_GiB": peak})
    tokens = window.latent_mean.shape[2] * (height // 16) * (width // 16)
    return {
        "model": config_name,
        "size": f"{width}x{height}",
        "frames": frames,
        "tokens": tokens,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "parameters_B": sum(p.numel() for p in student.parameters()) / 1e9,
        "rows": rows,
    }


def computed_memory(size: tuple[int, int]) -> list[dict]:
    """GiB per GPU of the 1.3B recipe, counted on the meta device (`benchmarks.train_step.memory_row`:
    activations with gradient checkpointing, batch 1, 81 frames, bf16 autocast): every student weight trained
    (fp32 weights + gradients + two AdamW states, 16 bytes a parameter), the teacher frozen in bf16 (2 bytes),
    and for DMD the critic as the student. Student and critic backward one after the other: one set of
    activations at a time."""
    from benchmarks.train_step import GIB, memory_row
    from wan.models import STABLEAVATAR_1_3B

    row = memory_row("1.3B", STABLEAVATAR_1_3B, size, lora=False, checkpointing=True)
    parameters = row["params_B"] * 1e9
    trained = 16 * parameters / GIB
    teacher = 2 * parameters / GIB
    activations = row["activations"]
    rows = []
    for method, models in (("regression", 1), ("dmd", 2)):
        total = models * trained + teacher + activations
        rows.append(
            {
                "method": method,
                "size": row["size"],
                "student (+critic) weights, grads, AdamW": models * trained,
                "teacher bf16": teacher,
                "activations": activations,
                "total_GiB": total,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", choices=sorted(SIZES), default="1.3B")
    parser.add_argument("--size", default="832x480", help="WIDTHxHEIGHT (832x480 or 480x832: same tokens)")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one warm-up)")
    parser.add_argument("--table", action="store_true", help="only the computed memory table (no device)")
    args = parser.parse_args(argv)
    if args.table:
        rows = [row for size in ((512, 512), (832, 480)) for row in computed_memory(size)]
        print(json.dumps(rows, indent=1))
        columns = list(rows[0])
        print("| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
        for row in rows:
            print(
                "| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()) + " |"
            )
        return 0
    width, height = (int(v) for v in args.size.lower().split("x"))
    result = measure(args.config, (width, height), args.frames, args.device, args.steps)
    print(json.dumps(result, indent=1))
    print(
        f"\n{result['model']} student and teacher, {result['size']}, {result['frames']} frames "
        f"({result['tokens']} tokens), {result['device']}:\n"
    )
    print("| step | seconds | peak GiB |\n| --- | --- | --- |")
    for row in result["rows"]:
        print(f"| {row['step']} | {row['s_per_step']:.2f} | {row['peak_GiB']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
