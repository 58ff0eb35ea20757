"""Streaming on a model folder (default: the demo model): quality of the windows-outer order against the
published one, latency to the first frame and the real-time factor.

    nice -n 10 python -m benchmarks.streaming quality [--model_dir checkpoints/demo] [--output outputs/streaming]
    nice -n 10 python -m benchmarks.streaming latency [--model_dir checkpoints/demo] [--seconds 60]
    nice -n 10 python -m benchmarks.streaming first_window [--model_dir checkpoints/demo]

`quality` runs the demo evaluation (`benchmarks.lipsync_eval.evaluate_pipeline`: lip sync with the right and
the wrong audio, identity drop over 60 s, seam ratio; same seed, reference and audio) for the published order
and for each way the windows-outer sampler continues from the previous window (`--prefixes`), with and
without blending the overlap (`--blend on off`; default: the pipeline's rule), at the folder's steps or `--steps`, noise seed `--seed` (0).

`latency` streams `--seconds` of held-out speech through `StableAvatarPipeline.stream` with the folder's
generation settings, in chunks of 20 ms:
- from a file or pipe (all audio available at once): time from the first audio sample to the first decoded
  frame, and the real-time factor (seconds of video per second of wall time; > 1 is faster than real time);
- live (chunks arriving at real-time pace, as from a microphone): time from the first sample to the first
  frame, which includes waiting for the first window's audio (the window's length in seconds).

`first_window` splits the model's share of the first frame's latency (what follows the first window's audio)
into its stages: wav2vec2 features, denoising (every step of the window), and the VAE decoding the first
latent frame (the stream hands frames out latent frame by latent frame); the median of `--repeats` streams.
Prints JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK = 320  # 20 ms at 16 kHz
BLENDS = {"default": None, "on": True, "off": False}  # --blend: the pipeline's blend_overlap
SEED = 777_000_004


def _pipeline(model_dir: Path):
    import torch

    from wan.pipeline import StableAvatarPipeline

    return StableAvatarPipeline.from_pretrained(model_dir, dtype=torch.float32)


def quality(
    model_dir: Path,
    output: Path,
    prefixes: list[str],
    include_published: bool,
    blends: list[str],
    steps: int | None = None,
    seed: int = 0,
) -> list[dict]:
    from benchmarks.lipsync_eval import evaluate_pipeline
    from wan.generation_settings import recommended_settings

    pipe = _pipeline(model_dir)
    settings = {**recommended_settings(model_dir), "seed": seed}
    if steps is not None:
        settings["num_inference_steps"] = steps
    configs = [("published (steps outer)", {"sampling_order": "steps"})] if include_published else []
    configs += [
        (
            f"windows outer, prefix {p}, blend {blend}",
            {"sampling_order": "windows", "prefix": p, "blend_overlap": BLENDS[blend]},
        )
        for p in prefixes
        for blend in blends
    ]
    rows = []
    for name, extra in configs:
        started = time.monotonic()
        folder = output / name.split(" (")[0].replace(", ", "-").replace(" ", "_")
        metrics = evaluate_pipeline(pipe, folder, {**settings, **extra})
        rows.append(
            {
                "order": name,
                "lip sync (>= 0.6)": round(metrics["lipsync_right"], 3),
                "wrong audio (<= 0.2)": round(
                    max(abs(metrics["lipsync_wrong"]), abs(metrics["lipsync_wrong_driven"])), 3
                ),
                "identity drop 60 s (<= 0.01)": round(metrics["identity_drop_60s"], 4),
                "seam ratio (<= 1.5)": round(metrics["seam_ratio"], 2),
                "all met": all(metrics["passed"].values()),
                "minutes": round((time.monotonic() - started) / 60, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def paced(audio: np.ndarray, realtime: bool) -> Iterator[np.ndarray]:
    """20 ms chunks, at real-time pace when `realtime` (the clock starts at the first chunk)."""
    started = None
    for start in range(0, len(audio), CHUNK):
        if realtime:
            started = started or time.monotonic()
            delay = started + start / 16000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield audio[start : start + CHUNK]


def _first_window_seconds(settings: dict) -> float:
    """Seconds of audio the first window needs before any model work: 4 frames' audio per latent frame (a
    33-frame window's 9 latent frames: 36 frames, 1.44 s at 25 fps)."""
    from wan.pipeline.windows import Window, latent_frames_for_clip, window_audio_span

    length = latent_frames_for_clip(settings["clip_length"])
    return window_audio_span(Window(0, length, 0), 16000 // 25)[1] / 16000


def latency(model_dir: Path, seconds: float, live_seconds: float) -> list[dict]:
    from wan.generation_settings import recommended_settings
    from wan.training.synthetic import speech_audio

    pipe = _pipeline(model_dir)
    settings = recommended_settings(model_dir)
    audio = speech_audio(seconds, np.random.default_rng(SEED))[: int(seconds * 16000)]
    reference = np.full((settings["height"], settings["width"], 3), 128, np.uint8)
    window_seconds = _first_window_seconds(settings)
    rows = []
    for mode, length, realtime in (
        ("file or pipe", seconds, False),
        ("live (real-time input)", live_seconds, True),
    ):
        clip = audio[: int(length * 16000)]
        started = time.monotonic()
        first, frames = None, 0
        for piece in pipe.stream(reference, paced(clip, realtime), seed=0, **settings):
            first = piece.latency if first is None else first
            frames += len(piece.frames)
            if realtime:  # the latency is known after the first window
                break
        wall = time.monotonic() - started
        row = {
            "input": mode,
            "audio seconds": round(length, 1),
            "first frame after (s)": round(first, 2),
            "of which waiting for the first window's audio (s)": round(window_seconds, 2)
            if realtime
            else 0.0,
            "real-time factor": "" if realtime else round(frames / 25 / wall, 2),
            "wall seconds": round(wall, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


@contextlib.contextmanager
def _timed(owner, name: str, seconds: list[float]):
    """Record the duration of every call of `owner.name` into `seconds` while the context is open."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.monotonic() - start)

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


def first_window(model_dir: Path, repeats: int) -> list[dict]:
    import wan.pipeline.pipeline as pipeline_module
    from wan.generation_settings import recommended_settings
    from wan.pipeline.decoding import StreamingDecoder
    from wan.pipeline.windows_outer import WindowsOuterSampler
    from wan.training.synthetic import speech_audio

    pipe = _pipeline(model_dir)
    settings = recommended_settings(model_dir)
    window_seconds = _first_window_seconds(settings)
    audio = speech_audio(window_seconds + 1.0, np.random.default_rng(SEED))
    reference = np.full((settings["height"], settings["width"], 3), 128, np.uint8)
    stages = {"wav2vec2 features": [], "denoising": [], "VAE decode": []}
    latencies = []
    with (
        _timed(pipeline_module, "encode_audio", stages["wav2vec2 features"]),
        _timed(WindowsOuterSampler, "denoise_window", stages["denoising"]),
        _timed(StreamingDecoder, "decode", stages["VAE decode"]),
    ):
        for _ in range(repeats + 1):  # the first stream warms up
            pieces = pipe.stream(reference, [audio], seed=0, **settings)
            latencies.append(next(pieces).latency)
            pieces.close()
    rows = [
        {"stage": name, "seconds": round(float(np.median(values[1:])), 3)} for name, values in stages.items()
    ]
    rows.append(
        {
            "stage": "first frame after the window's audio",
            "seconds": round(float(np.median(latencies[1:])), 3),
        }
    )
    return rows


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.streaming",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("measure", choices=("quality", "latency", "first_window"))
    parser.add_argument("--model_dir", type=Path, default=Path("checkpoints/demo"))
    parser.add_argument("--output", type=Path, default=Path("outputs/streaming"))
    parser.add_argument("--prefixes", nargs="+", default=["renoise", "condition", "both"])
    parser.add_argument("--no_published", action="store_true", help="skip the published order's row")
    parser.add_argument(
        "--blend",
        nargs="+",
        choices=list(BLENDS),
        default=["default"],
        help="quality: windows order with the overlap blended into the next window, or not, or as the "
        "pipeline's default (with the renoise prefix only)",
    )
    parser.add_argument("--steps", type=int, help="quality: denoising steps instead of the folder's")
    parser.add_argument("--seed", type=int, default=0, help="quality: the noise seed of every video")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio streamed for the real-time factor")
    parser.add_argument("--live_seconds", type=float, default=8.0, help="audio streamed in real time")
    parser.add_argument("--repeats", type=int, default=3, help="first_window: streams timed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.measure == "quality":
        rows = quality(
            args.model_dir,
            args.output,
            args.prefixes,
            not args.no_published,
            args.blend,
            args.steps,
            args.seed,
        )
    elif args.measure == "first_window":
        rows = first_window(args.model_dir, args.repeats)
    else:
        rows = latency(args.model_dir, args.seconds, args.live_seconds)
    print(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
