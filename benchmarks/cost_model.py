"""Compute per second of generated video for the released configs, counted on the meta device (no weights,
no compute), and the GPU time that implies.

    python -m benchmarks.cost_model [--steps 50] [--overlap 5] [--utilization 0.4]

FLOPs of one transformer forward of a guidance batch of three (one 81-frame window) are counted with
torch's FlopCounterMode (matmuls and attention); the VAE, text and audio encoders are left out (they run
once per video or per window, a few percent of the total). Windows per second of video follow the sampler's
schedule. GPU time = FLOPs / (utilization x peak dense bf16 throughput).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import print_table
from wan.models import (
    STABLEAVATAR_1_3B,
    STABLEAVATAR_14B,
    CrossAttentionCache,
    StableAvatarTransformer3DModel,
)
from wan.pipeline.pipeline import latent_frames_for_video
from wan.pipeline.windows import plan_windows

SIZES = ((512, 512), (480, 832), (832, 480))
# Peak dense bf16 tensor throughput, TFLOP/s (vendor figures, no sparsity).
GPUS = {"RTX 4090": 165.2, "H100 SXM": 989.0}


def forward_flops(
    config: dict, width: int, height: int, batch: int = 3, frames: int = 81, cached_text_image: bool = False
) -> int:
    """FLOPs of one forward; `cached_text_image`: of a later forward that reads the text/image keys and
    values from the `CrossAttentionCache` the first one filled (what the sampler does)."""
    with torch.device("meta"):
        model = StableAvatarTransformer3DModel(**config).to(torch.bfloat16)
    latent_frames = (frames - 1) // 4 + 1
    inputs = {
        "hidden_states": torch.empty(
            batch, 36, latent_frames, height // 8, width // 8, device="meta", dtype=torch.bfloat16
        ),
        "timestep": torch.empty(batch, device="meta"),
        "encoder_hidden_states": torch.empty(batch, 512, 4096, device="meta", dtype=torch.bfloat16),
        "encoder_hidden_states_image": torch.empty(batch, 257, 1280, device="meta", dtype=torch.bfloat16),
        "audio_embeds": torch.empty(batch, 2 * (frames + 3), 768, device="meta", dtype=torch.bfloat16),
    }
    cache = CrossAttentionCache() if cached_text_image else None
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        if cache is not None:
            model(**inputs, audio_sources=(None, 2, 2) if batch == 3 else None, context_cache=cache)
        with counter:
            model(**inputs, audio_sources=(None, 2, 2) if batch == 3 else None, context_cache=cache)
    return counter.get_total_flops()


def windows_for(seconds: float, overlap: int, fps: int = 25) -> int:
    return len(plan_windows(latent_frames_for_video(int(seconds * fps)), 21, overlap))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--overlap", type=int, default=5)
    parser.add_argument("--utilization", type=float, default=0.4, help="fraction of peak the kernels reach")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="video length the per-second cost averages over"
    )
    args = parser.parse_args()
    windows = windows_for(args.seconds, args.overlap)
    calls_per_second = windows * args.steps * 3 / args.seconds
    rows = []
    for name, config in (("1.3B", STABLEAVATAR_1_3B), ("14B", STABLEAVATAR_14B)):
        for width, height in SIZES:
            flops = forward_flops(config, width, height)
            cached = forward_flops(config, width, height, cached_text_image=True)
            per_second = cached * windows * args.steps / args.seconds  # the sampler caches by default
            row = {
                "model": name,
                "size": f"{width}x{height}",
                "TFLOP_per_window_step": flops / 1e12,
                "PFLOP_per_video_s": per_second / 1e15,
                "text_image_cache_saves": f"{1 - cached / flops:.2%}",
            }
            for gpu, peak in GPUS.items():
                row[f"{gpu}_s_per_video_s"] = per_second / (args.utilization * peak * 1e12)
            rows.append(row)
    print(
        f"{args.steps} steps, overlap {args.overlap}, guidance every step: {windows} windows for {args.seconds:.0f} s, "
        f"{calls_per_second:.1f} sample-forwards per video second; utilization {args.utilization:.0%}"
    )
    print_table(rows, list(rows[0]))
    five = windows_for(5.0, args.overlap)
    flops = forward_flops(STABLEAVATAR_1_3B, 480, 832)
    seconds = flops * five * args.steps / (args.utilization * GPUS["RTX 4090"] * 1e12)
    print(
        f"published figure: 5 s of 480x832, 1.3B, 50 steps on an RTX 4090 in about 3 minutes; this model: {five} "
        f"windows -> {seconds / 60:.1f} min of transformer time at {args.utilization:.0%} utilization"
    )


if __name__ == "__main__":
    main()
