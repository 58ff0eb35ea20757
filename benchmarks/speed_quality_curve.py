"""Lip sync and identity of the demo model against transformer work per second of video, for the speed
options (solver, steps, guidance interval, step cache) and the published default (50 Euler steps, guidance
at every step).

    python -m benchmarks.speed_quality_curve [--model_dir checkpoints/demo] [--output outputs/speed_quality]

Every configuration runs the demo evaluation (`benchmarks.lipsync_eval.evaluate_pipeline`) with the same
seed, reference and audio. Work is counted, not timed: each transformer block call adds batch / blocks,
so a full forward of the guidance batch counts 3 and a step whose blocks the step cache skipped counts only
its first block. Writes `curve.json`, `curve.png` and one folder of videos per configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.lipsync_eval import FPS, evaluate_pipeline
from benchmarks.measure import print_table


@dataclass(frozen=True)
class SpeedOption:
    """One point of the curve."""

    name: str
    solver: str = "euler"
    steps: int = 50
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    step_cache_threshold: float | None = None
    student: str | None = None  # a distilled student's model folder: its transformer, guidance off


PUBLISHED = SpeedOption("published: euler 50, guidance every step")
OPTIONS = (
    PUBLISHED,
    SpeedOption("euler 20", steps=20),
    SpeedOption("euler 10", steps=10),
    SpeedOption("euler 5", steps=5),
    SpeedOption("unipc 10", solver="unipc", steps=10),
    SpeedOption("unipc 5", solver="unipc", steps=5),
    SpeedOption("unipc 10, guidance first half", solver="unipc", steps=10, guidance_interval=(0.0, 0.5)),
    SpeedOption("euler 10, guidance first half", steps=10, guidance_interval=(0.0, 0.5)),
    SpeedOption("euler 20, step cache 0.1", steps=20, step_cache_threshold=0.1),
    SpeedOption("euler 20, step cache 0.3", steps=20, step_cache_threshold=0.3),
    *(
        SpeedOption(f"student {n} step{'s' if n > 1 else ''}", steps=n, student="checkpoints/demo-student")
        for n in (1, 2, 4)
    ),
)


class WorkCounter:
    """Counts sample-forward equivalents: every block that really runs adds batch / number of blocks.

    Hooked on each block's feed-forward, which a step-cache skip never reaches (the block's own call still
    happens and would count) and which always sees the whole batch (block 0's self-attention runs once for
    a guidance batch, the model's exact savings)."""

    def __init__(self, transformer) -> None:
        self.total = 0.0
        blocks = len(transformer.blocks)

        def count(module, args, kwargs) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self.total += hidden.shape[0] / blocks

        self.hooks = [
            block.ffn.register_forward_pre_hook(count, with_kwargs=True) for block in transformer.blocks
        ]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def run_option(
    pipe, option: SpeedOption, base: dict, output: Path, seconds: float, identity_seconds: float, shift: float
) -> dict:
    from wan.models import StableAvatarTransformer3DModel
    from wan.pipeline.runtime import RuntimeOptions, configure_pipeline

    teacher = pipe.transformer
    if option.student:  # one forward a step: the teacher's guidance is baked into the student
        pipe.transformer = StableAvatarTransformer3DModel.from_pretrained(
            Path(option.student) / "transformer"
        )
        base = {**base, "text_guidance_scale": 1.0, "audio_guidance_scale": 1.0}
    # The same runtime path as the CLI and the app: solver, shift and step cache replaced per option.
    runtime = RuntimeOptions(
        device="cpu",
        dtype="float32",
        solver=option.solver,
        shift=shift,
        step_cache_threshold=option.step_cache_threshold,
    )
    configure_pipeline(pipe, runtime)
    counter = WorkCounter(pipe.transformer)
    try:
        settings = {
            **base,
            "num_inference_steps": option.steps,
            "guidance_interval": option.guidance_interval,
        }
        metrics = evaluate_pipeline(pipe, output, settings, seconds, identity_seconds)
    finally:
        counter.remove()
        if pipe.transformer.is_cache_enabled:
            pipe.transformer.disable_cache()
        pipe.transformer = teacher
    video_seconds = 2 * seconds + identity_seconds  # right-audio, wrong-audio and identity videos
    return {
        **asdict(option),
        "forwards_per_video_second": counter.total / video_seconds,
        "lipsync_right": metrics["lipsync_right"],
        "lipsync_wrong": max(abs(metrics["lipsync_wrong"]), abs(metrics["lipsync_wrong_driven"])),
        "identity_mean": float(sum(metrics["identity_per_second"]) / len(metrics["identity_per_second"])),
        "identity_drop": metrics["identity_drop_60s"],
        "seam_ratio": metrics["seam_ratio"],
        "seconds": metrics["seconds_for_lipsync_video"] + metrics["seconds_for_identity_video"],
    }


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for axis, key, label in (
        (axes[0], "lipsync_right", "lip sync: correlation of mouth opening with loudness"),
        (axes[1], "identity_mean", "identity: mean similarity to the reference"),
    ):
        for row in rows:
            marker = "*" if row["name"] == PUBLISHED.name else "o"
            axis.scatter(
                row["forwards_per_video_second"], row[key], marker=marker, s=120 if marker == "*" else 40
            )
            axis.annotate(
                row["name"],
                (row["forwards_per_video_second"], row[key]),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, 4),
            )
        axis.set_xscale("log")
        axis.set_xlabel("transformer forwards (sample-equivalents) per second of video")
        axis.set_title(label)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _kept_rows(path: Path, only: list[str] | None) -> dict[str, dict]:
    """The rows of an earlier `curve.json` that an `--only` run does not measure again, by option name."""
    if not only or not path.is_file():
        return {}
    return {row["name"]: row for row in json.loads(path.read_text()) if row["name"] not in only}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed_quality_curve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model_dir", type=Path, default=Path("checkpoints/demo"))
    parser.add_argument("--output", type=Path, default=Path("outputs/speed_quality"))
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lip-sync videos")
    parser.add_argument("--identity_seconds", type=float, default=30.0)
    parser.add_argument(
        "--only",
        nargs="*",
        help="run only the options with these names; the other rows of OUTPUT/curve.json are kept",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from wan.generation_settings import recommended_settings
    from wan.pipeline import StableAvatarPipeline

    torch.set_num_threads(args.threads)
    pipe = StableAvatarPipeline.from_pretrained(args.model_dir, dtype=torch.float32)
    shift = pipe.scheduler.config.get("shift", 5.0)
    base = recommended_settings(args.model_dir)
    kept = _kept_rows(args.output / "curve.json", args.only)
    rows = []
    for option in OPTIONS:
        if args.only and option.name not in args.only:
            if option.name in kept:
                rows.append(kept[option.name])
            continue
        folder = args.output / option.name.replace(" ", "_").replace(",", "").replace(":", "")
        rows.append(run_option(pipe, option, base, folder, args.seconds, args.identity_seconds, shift))
        print(
            f"{option.name}: {rows[-1]['forwards_per_video_second']:.1f} forwards/s, "
            f"lip sync {rows[-1]['lipsync_right']:.3f}, identity {rows[-1]['identity_mean']:.4f}",
            flush=True,
        )
    published = next((row for row in rows if row["name"] == PUBLISHED.name), None)
    for row in rows:
        row["work_vs_published"] = (
            published["forwards_per_video_second"] / row["forwards_per_video_second"]
            if published
            else float("nan")
        )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "curve.json").write_text(json.dumps(rows, indent=1))
    plot(args.output / "curve.png", rows)
    columns = [
        "name",
        "forwards_per_video_second",
        "work_vs_published",
        "lipsync_right",
        "lipsync_wrong",
        "identity_mean",
        "identity_drop",
        "seam_ratio",
        "seconds",
    ]
    print_table(rows, columns)
    print(f"wrote {args.output / 'curve.json'} and {args.output / 'curve.png'} ({FPS} fps videos)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
