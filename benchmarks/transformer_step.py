"""Time and peak memory of one StableAvatar transformer forward at the released width (1536).

    python -m benchmarks.transformer_step [--layers 2] [--frames 21] [--sizes 512x512 480x832]

A guidance batch of three (what the sampler runs per window step) with a few DiT layers, on the CPU unless
CUDA is available. The baseline for speed work; per-layer cost scales linearly, so multiply by 30/layers
for the full 1.3B model.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.measure import print_table, run_isolated
from wan.models import STABLEAVATAR_1_3B, StableAvatarTransformer3DModel


def one_forward(layers: int, latent_frames: int, height: int, width: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = StableAvatarTransformer3DModel(**{**STABLEAVATAR_1_3B, "num_layers": layers}).to(device).eval()
    h, w = height // 8, width // 8
    inputs = {
        "hidden_states": torch.randn(batch, 36, latent_frames, h, w, device=device),
        "timestep": torch.full((batch,), 500.0, device=device),
        "encoder_hidden_states": torch.randn(batch, 120, 4096, device=device),
        "encoder_hidden_states_image": torch.randn(batch, 257, 1280, device=device),
        "audio_embeds": torch.randn(batch, 2 * (4 * latent_frames), 768, device=device),
    }
    with torch.no_grad():
        model(**inputs)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
        seconds = (time.perf_counter() - started) / repeats
    tokens = latent_frames * (h // 2) * (w // 2)
    return {
        "size": f"{width}x{height}",
        "frames": latent_frames,
        "tokens": tokens,
        "layers": layers,
        "batch": batch,
        "device": device,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=21, help="latent frames (21 = one 81-frame window)")
    parser.add_argument("--sizes", nargs="+", default=["256x256", "512x512"], help="WIDTHxHEIGHT in pixels")
    parser.add_argument("--batch", type=int, default=3, help="3 = the guidance triple")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        rows.append(
            run_isolated(
                one_forward,
                layers=args.layers,
                latent_frames=args.frames,
                height=height,
                width=width,
                batch=args.batch,
                repeats=args.repeats,
            )
        )
    print_table(rows, ["size", "frames", "tokens", "layers", "batch", "device", "seconds", "peak_rss_mib"])


if __name__ == "__main__":
    main()
