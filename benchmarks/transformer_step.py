"""Time and peak memory of one StableAvatar transformer forward at the released width (1536).

    python -m benchmarks.transformer_step [--layers 2] [--frames 21] [--sizes 512x512 480x832]
    python -m benchmarks.transformer_step --exact_savings [--sizes 256x256]

A guidance batch of three (what the sampler runs per window step) with a few DiT layers, on the CPU unless
CUDA is available. The baseline for speed work; per-layer cost scales linearly, so multiply by 30/layers
for the full 1.3B model.

`--exact_savings` times a guided window-step as the sampler runs it (the published rule through
`transformer_forward`, text/image keys cached by the first call) with the model's exact savings off and on,
alternating in one process on the same weights, and prints seconds per step and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.measure import print_table, run_isolated
from wan.models import STABLEAVATAR_1_3B, CrossAttentionCache, StableAvatarTransformer3DModel
from wan.pipeline.guidance import GuidanceInputs, build_guidance, transformer_forward


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


def guided_step_savings(
    layers: int, latent_frames: int, height: int, width: int, prompt_tokens: int, repeats: int
) -> dict:
    """Seconds per guided window-step without and with `exact_savings` (alternating, `repeats` each)."""
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = StableAvatarTransformer3DModel(**{**STABLEAVATAR_1_3B, "num_layers": layers}).to(device).eval()
    h, w = height // 8, width // 8
    inputs = GuidanceInputs(
        prompt_embeds=torch.randn(1, prompt_tokens, 4096, device=device),
        negative_prompt_embeds=torch.randn(1, prompt_tokens, 4096, device=device),
        image_embeds=torch.randn(1, 257, 1280, device=device),
        audio_embeds=torch.randn(1, 2 * (4 * latent_frames), 768, device=device),
    )
    latents = torch.randn(1, 16, latent_frames, h, w, device=device)
    condition = torch.randn(1, 20, latent_frames, h, w, device=device)
    guidance = build_guidance("published")
    caches = {False: CrossAttentionCache(), True: CrossAttentionCache()}
    seconds = {False: 0.0, True: 0.0}
    with torch.no_grad():
        for step in range(repeats + 1):  # the first round fills the caches and warms up, untimed
            for savings in (False, True):
                model.exact_savings = savings
                forward = transformer_forward(
                    model,
                    latents,
                    condition,
                    torch.tensor(500.0),
                    4 * (latent_frames - 1) + 1,
                    caches[savings],
                )
                if device == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                guidance.predict(forward, inputs)
                if device == "cuda":
                    torch.cuda.synchronize()
                if step:
                    seconds[savings] += (time.perf_counter() - started) / repeats
    return {
        "size": f"{width}x{height}",
        "frames": latent_frames,
        "layers": layers,
        "prompt_tokens": prompt_tokens,
        "device": device,
        "seconds_full": seconds[False],
        "seconds_saved": seconds[True],
        "ratio": seconds[False] / seconds[True],
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
    parser.add_argument(
        "--exact_savings",
        action="store_true",
        help="time a guided window-step with the exact savings off / on",
    )
    parser.add_argument(
        "--prompt_tokens", type=int, default=120, help="real tokens of the prompt and of the negative prompt"
    )
    args = parser.parse_args()
    if args.exact_savings:
        rows = [
            run_isolated(
                guided_step_savings,
                layers=args.layers,
                latent_frames=args.frames,
                height=int(size.split("x")[1]),
                width=int(size.split("x")[0]),
                prompt_tokens=args.prompt_tokens,
                repeats=args.repeats,
            )
            for size in args.sizes
        ]
        print_table(rows, list(rows[0]))
        return
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
