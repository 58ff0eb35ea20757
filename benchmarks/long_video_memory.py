"""Peak memory of generating 20 s and 160 s of video, with streaming decode and with whole-video decode.

    python -m benchmarks.long_video_memory [--size 128] [--seconds 20 160]

The tiny random model at a small size, one denoising step (memory does not depend on the step count).
'streaming' is this project's path: latent state in host memory, one window on the device, the VAE decoding
frame by frame straight into the mp4. 'whole-video decode' decodes all latents in one call and keeps every
pixel frame, as the published code does. The ratio 160 s / 20 s shows whether memory grows with length.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import print_table, run_isolated


def generate(seconds: float, size: int, streaming: bool) -> dict:
    from wan.pipeline.encoders import decode_normalised_latents
    from wan.pipeline.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    audio = np.random.default_rng(0).standard_normal(int(seconds * 16000)).astype(np.float32) * 0.1
    image = np.full((size, size, 3), 128, np.uint8)
    settings = dict(height=size, width=size, num_inference_steps=1, seed=0, progress=False)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        if streaming:
            result = pipe(image, audio, output_path=Path(folder) / "out.mp4", **settings)
        else:
            result = pipe(image, audio, output_type="latent", **settings)
            frames = decode_normalised_latents(pipe.vae, result.latents)  # every frame at once
            assert frames.shape[2] >= result.num_frames
    return {
        "audio_s": seconds,
        "path": "streaming" if streaming else "whole-video decode",
        "frames": result.num_frames,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64, help="width and height in pixels (multiple of 16)")
    parser.add_argument("--seconds", type=float, nargs=2, default=[20.0, 160.0])
    args = parser.parse_args()
    rows = [
        run_isolated(generate, seconds=s, size=args.size, streaming=streaming)
        for streaming in (True, False)
        for s in args.seconds
    ]
    print_table(rows, ["path", "audio_s", "frames", "seconds", "peak_rss_mib"])
    for path in ("streaming", "whole-video decode"):
        short, long = (r["peak_rss_mib"] for r in rows if r["path"] == path)
        print(f"{path}: peak memory {args.seconds[1]:.0f} s / {args.seconds[0]:.0f} s = {long / short:.2f}")


if __name__ == "__main__":
    main()
