"""float32 against bfloat16 on the CPU: seconds of the same work in both dtypes, alternating in one process.

    python -m benchmarks.cpu_dtype [--model_dir checkpoints/demo] [--layers 2] [--size 256x256]

Two measurements, each repeated with the dtypes alternating so that load changes on a shared machine hit both:

* `demo generation`: the whole pipeline call of the main job (the bundled reference and speech, the
  folder's generation settings, no mp4) with the folder's pipeline loaded in each dtype.
* `released-width forward`: one guidance batch of three through a StableAvatar transformer of the released
  width (1536) with `--layers` blocks at `--size`, 21 latent frames (one 81-frame window), random weights.

bfloat16 is only fast where the CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX); the table says
whether this one has. The quality side of the choice is `python -m benchmarks.lipsync_eval --dtype bfloat16`.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from benchmarks.measure import print_table
from wan.models import STABLEAVATAR_1_3B, StableAvatarTransformer3DModel
from wan.pipeline.runtime import cpu_has_bfloat16_units

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGE = REPO / "examples" / "demo-face" / "reference.png"
EXAMPLE_AUDIO = REPO / "examples" / "case-1" / "audio.wav"
DTYPES = (torch.float32, torch.bfloat16)


def _alternate(runs: dict, repeats: int) -> dict[torch.dtype, float]:
    """The fastest of `repeats` timings of each `runs[dtype]()`, the dtypes taking turns (first call warms up)."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for dtype, run in runs.items():
            start = time.perf_counter()
            run()
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best


def demo_generation(model_dir: Path, repeats: int) -> dict[torch.dtype, float]:
    from wan.generation_settings import recommended_settings
    from wan.media import load_audio, load_image
    from wan.pipeline import StableAvatarPipeline

    image, audio = load_image(EXAMPLE_IMAGE), load_audio(EXAMPLE_AUDIO)
    settings = recommended_settings(model_dir)  # without them: the published 512x512, 50 steps
    pipelines = {dtype: StableAvatarPipeline.from_pretrained(model_dir, dtype=dtype) for dtype in DTYPES}

    def generate(pipeline) -> None:
        pipeline(image=image, audio=audio, output_type="latent", seed=0, progress=False, **settings)

    return _alternate({dtype: (lambda p=pipe: generate(p)) for dtype, pipe in pipelines.items()}, repeats)


def released_width_forward(layers: int, height: int, width: int, repeats: int) -> dict[torch.dtype, float]:
    torch.manual_seed(0)
    model = StableAvatarTransformer3DModel(**{**STABLEAVATAR_1_3B, "num_layers": layers}).eval()
    inputs = {
        "hidden_states": torch.randn(3, 36, 21, height // 8, width // 8),
        "timestep": torch.full((3,), 500.0),
        "encoder_hidden_states": torch.randn(3, 120, 4096),
        "encoder_hidden_states_image": torch.randn(3, 257, 1280),
        "audio_embeds": torch.randn(3, 2 * 84, 768),
    }
    models = {torch.float32: model, torch.bfloat16: copy.deepcopy(model).to(torch.bfloat16)}

    def forward(dtype: torch.dtype) -> None:
        with torch.no_grad():
            models[dtype](**{k: v.to(dtype) for k, v in inputs.items()})

    return _alternate({dtype: (lambda d=dtype: forward(d)) for dtype in DTYPES}, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", type=Path, default=REPO / "checkpoints" / "demo")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--size", default="256x256", help="WIDTHxHEIGHT of the released-width forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    bf16_units = cpu_has_bfloat16_units()  # the rule that picks the CPU's default dtype
    measured = {
        "demo generation": demo_generation(args.model_dir, args.repeats),
        f"released-width forward, {args.layers} blocks, {args.size}": released_width_forward(
            args.layers, height, width, args.repeats
        ),
    }
    rows = [
        {
            "work": work,
            "float32_s": seconds[torch.float32],
            "bfloat16_s": seconds[torch.bfloat16],
            "speed-up": seconds[torch.float32] / seconds[torch.bfloat16],
            "cpu_bf16_units": bf16_units,
        }
        for work, seconds in measured.items()
    ]
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
