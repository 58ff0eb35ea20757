"""How well the demo model's lips follow held-out audio, whether its identity holds over a minute, and
whether window seams show.

    python -m benchmarks.lipsync_eval [--model_dir checkpoints/demo] [--output outputs/lipsync_eval]

Everything goes through the real pipeline. The reference image is the first frame of a synthetic clip whose
seed no training clip used (training clip i of seed s has seed s * 100003 + i); its audio drives the video.

* lip sync: mouth opening measured in the known mouth region of every generated frame (the mean darkness
  of the region; the synthetic mouth interior is nearly black, so a wider-open mouth makes the region
  darker) correlated (Pearson) with the audio's loudness per frame. Control: the same mouth curve against
  the loudness of other held-out speech (and a video driven by that speech against the first audio). The
  clip's own drawn frames give the ceiling the measure can reach; `pooled_audio_ceiling` what a model can
  reach that opens the mouth by the mean loudness of each latent frame's audio window (the frame-local
  audio attention sees the window's tokens without their order, so a window wider than its frames blurs
  them).
* identity: a 60 s video from the same reference; per second, the mean similarity (1 - mean absolute
  pixel difference, outside the mouth region) of its frames to the reference image; the linear trend.
* seams: frame-to-frame change where one window hands over to the next (both ends of every overlap)
  against the median change inside windows.

Targets: correlation >= 0.6 with the right audio and <= 0.2 with the wrong one; identity drop over 60 s
(linear fit) <= 0.01; seam change <= 1.5 x the median in-window change. It prints the numbers and writes
`metrics.json`, `lipsync.png` (mouth opening against loudness) and the videos to `--output`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wan.evaluation.timeseries import linear_drop, per_second
from wan.training.synthetic import mouth_opening

HELD_OUT_SEED = 777_000_001  # reference face and its speech
CONTROL_SEED = 777_000_002  # the mismatched speech
IDENTITY_SEED = 777_000_003  # one minute of speech for the identity and seam measures
FPS = 25
TARGETS = {"lipsync_right": 0.6, "lipsync_wrong": 0.2, "identity_drop_60s": 0.01, "seam_ratio": 1.5}
# Length of the lip-sync videos. The loudness curves of two unrelated synthetic speeches correlate by chance
# with a spread (std over 12 pairs) of 0.15 over 10 s, up to 0.28, and of 0.06 over 60 s: a 10 s control
# cannot tell a model that ignores the audio from one that follows it.
LIPSYNC_SECONDS = 60.0
PLOT_SECONDS = 20  # the plot shows the start of the lip-sync video; 60 s of frames would be a blur


# ---- measures (numpy only; mouth_opening is wan.training.synthetic's) --------------------------------------
def mouth_box(
    face_width: float, face_height: float, size: int, motion: tuple[float, float] = (0.02, 0.015)
) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), end exclusive, holding a synthetic face's mouth at any head offset.

    `face_width`/`face_height` are the `FaceStyle` fractions; the mouth is drawn centred at
    (0.5, 0.45 + face_height / 4) of the frame, 0.35 face half-widths to each side and at most 0.3 face
    half-heights up and down; the head moves by at most `motion` of the frame.
    """
    half_w, half_h = face_width / 2, face_height / 2
    cx, cy = 0.5, 0.45 + half_h * 0.5
    dx, dy = half_w * 0.35 + motion[0], half_h * 0.3 + motion[1]
    x0, x1 = int(np.floor((cx - dx) * size)), int(np.ceil((cx + dx) * size))
    y0, y1 = int(np.floor((cy - dy) * size)), int(np.ceil((cy + dy) * size))
    return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long series (0 when either is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) != len(b):
        raise ValueError(f"series differ in length: {len(a)} and {len(b)}")
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def best_lag(a: np.ndarray, b: np.ndarray, max_lag: int = 4) -> tuple[int, float]:
    """(lag, correlation) maximising corr(a[t], b[t - lag]) for |lag| <= max_lag (positive: a trails b)."""
    results = []
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            results.append((lag, pearson(a[lag:], b[: len(b) - lag])))
        else:
            results.append((lag, pearson(a[:lag], b[-lag:])))
    return max(results, key=lambda item: item[1])


def pooled_audio_ceiling(loudness: np.ndarray, window_padding: int, tokens_per_frame: int = 2) -> float:
    """Lip sync (Pearson, per video frame) of a mouth that opens by the mean loudness of its latent frame's
    audio window, as the DiT's frame-local audio attention sees it: an unordered set of wav2vec2 tokens
    (attention has no positions), `4 * tokens_per_frame + 1 + 2 * window_padding` tokens wide, around
    the latent frame's 4 video frames. What such a model can reach even with perfect loudness features;
    the windows come from the model's own alignment code (`split_audio_tokens_per_frame`).

    Args:
        loudness: `[T]` per video frame.
        window_padding: the transformer's `audio_window_padding` (4 released).
    """
    import torch

    from wan.models.audio_alignment import split_audio_tokens_per_frame

    num_frames = (len(loudness) - 1) // 4 * 4 + 1
    tokens = torch.from_numpy(np.repeat(np.asarray(loudness[:num_frames], np.float64), tokens_per_frame))
    windows = split_audio_tokens_per_frame(tokens[None, :, None], num_frames, window_padding)  # [1, F, n, 1]
    per_latent = windows[0, :, :, 0].mean(dim=1).numpy()
    # latent frame 0 is video frame 0; latent frame k >= 1 decodes to video frames 4k-3 .. 4k
    per_frame = np.concatenate([per_latent[:1], np.repeat(per_latent[1:], 4)])
    return pearson(per_frame, loudness[:num_frames])


def latent_frame_split(mouth: np.ndarray, loudness: np.ndarray) -> dict:
    """How a mouth curve follows loudness across latent frames and inside them.

    Video frames 4k-3 .. 4k belong to latent frame k (frame 0 and any ragged tail are left out).
    `grouped`: correlation of the two curves' means per latent frame; `within`: correlation of what is
    left after subtracting those means; `within_share`: the share of the mouth's variance inside latent
    frames (a mouth that is constant within each latent frame has 0 and a `within` of 0).
    """
    groups = (min(len(mouth), len(loudness)) - 1) // 4
    m = np.asarray(mouth[1 : 1 + 4 * groups], np.float64).reshape(groups, 4)
    a = np.asarray(loudness[1 : 1 + 4 * groups], np.float64).reshape(groups, 4)
    m_inside, a_inside = m - m.mean(axis=1, keepdims=True), a - a.mean(axis=1, keepdims=True)
    return {
        "grouped": pearson(m.mean(axis=1), a.mean(axis=1)),
        "within": pearson(m_inside.ravel(), a_inside.ravel()),
        "within_share": float(m_inside.var() / m.var()) if m.var() > 0 else 0.0,
    }


def identity_similarity(
    frames: np.ndarray, reference: np.ndarray, exclude: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """`[T]` 1 - mean absolute difference (pixels in [0, 1]) of each frame to `reference`, outside `exclude`."""
    difference = np.abs(frames.astype(np.float32) - reference.astype(np.float32)[None]) / 255.0
    keep = np.ones(reference.shape[:2], bool)
    if exclude is not None:
        x0, y0, x1, y1 = exclude
        keep[y0:y1, x0:x1] = False
    return 1.0 - difference[:, keep].mean(axis=(1, 2))


def seam_frames(num_frames: int, clip_length: int, overlap: int) -> list[int]:
    """Video frames t where the sampler's blending regime changes between frame t - 1 and t.

    A window of latent frames [start, end) that overlaps its predecessor ending at `previous_end` starts
    blending at latent `start` and is alone from latent `previous_end`; latent k >= 1 decodes to video
    frames 4k-3 .. 4k, so the hand-overs are between video frames 4k-4 and 4k-3.
    """
    from wan.pipeline.pipeline import latent_frames_for_video
    from wan.pipeline.windows import plan_windows

    windows = plan_windows(latent_frames_for_video(num_frames), (clip_length - 1) // 4 + 1, overlap)
    seams = set()
    for previous, window in zip(windows, windows[1:], strict=False):
        for k in (window.start, previous.end):
            if 1 <= 4 * k - 3 < num_frames:
                seams.add(4 * k - 3)
    return sorted(seams)


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """`[T]` mean absolute change (pixels in [0, 1]) from the previous frame; entry 0 is NaN."""
    changes = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3)) / 255.0
    return np.concatenate([[np.nan], changes])


def seam_statistics(changes: np.ndarray, seams: list[int]) -> dict:
    """Mean and max frame change at the seams over the median change elsewhere (and at the 4-frame latent
    boundaries elsewhere, where the VAE's chunks meet)."""
    seam_mask = np.zeros(len(changes), bool)
    seam_mask[seams] = True
    inside = ~seam_mask
    inside[0] = False
    boundaries = inside & (np.arange(len(changes)) % 4 == 1)
    median = float(np.median(changes[inside]))
    median_boundary = float(np.median(changes[boundaries])) if boundaries.any() else median
    at_seams = changes[seam_mask]
    return {
        "seams": len(seams),
        "median_in_window_change": median,
        "mean_seam_change": float(at_seams.mean()) if len(at_seams) else 0.0,
        "seam_ratio": float(at_seams.mean() / median) if len(at_seams) and median > 0 else 0.0,
        "max_seam_ratio": float(at_seams.max() / median) if len(at_seams) and median > 0 else 0.0,
        "seam_ratio_vs_latent_boundaries": float(at_seams.mean() / median_boundary)
        if len(at_seams) and median_boundary > 0
        else 0.0,
    }


# ---- generation ---------------------------------------------------------------------------------------
def read_frames(folder: Path) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("frame_*.png"))]
    )


def generate(
    pipe, reference: Path, audio: np.ndarray, folder: Path, settings: dict
) -> tuple[np.ndarray, float]:
    """Frames `[T, H, W, 3]` uint8 of the pipeline's video (also written as `folder/video.mp4`), seconds."""
    started = time.monotonic()
    pipe(
        reference,
        audio,
        prompt="The protagonist is talking",
        output_path=folder / "video.mp4",
        frames_dir=folder / "frames",
        progress=False,
        **{"seed": 0, **settings},
    )
    return read_frames(folder / "frames"), time.monotonic() - started


def evaluate(
    model_dir: Path,
    output: Path,
    settings: dict,
    seconds: float = LIPSYNC_SECONDS,
    identity_seconds: float = 60.0,
    face_scale: float | None = None,
    field_evaluator=None,
    dtype: str = "float32",
) -> dict:
    """Load the pipeline of `model_dir` in `dtype` (the compute dtype, as inference's --dtype) and
    `evaluate_pipeline` it."""
    from wan.cli import parse_dtype
    from wan.pipeline import StableAvatarPipeline

    pipe = StableAvatarPipeline.from_pretrained(model_dir, dtype=parse_dtype(dtype))
    return evaluate_pipeline(
        pipe,
        output,
        settings,
        seconds,
        identity_seconds,
        face_scale=face_scale,
        field_evaluator=field_evaluator,
    )


def evaluate_pipeline(
    pipe,
    output: Path,
    settings: dict,
    seconds: float = LIPSYNC_SECONDS,
    identity_seconds: float = 60.0,
    plot_path: Path | None = None,
    face_scale: float | None = None,
    field_evaluator=None,
) -> dict:
    """Every measure for `pipe` generating with `settings` (StableAvatarPipeline keyword arguments); writes
    `metrics.json`, the videos and the plot (`plot_path`, default `output/lipsync.png`) to `output`.
    The held-out face is drawn at `face_scale` (default: the demo model's training faces').
    `field_evaluator` (a `wan.evaluation.Evaluator`) adds the field's measures (`field_metrics`)."""
    from wan.media import load_audio
    from wan.training.demo import DEMO_FACE_SCALE
    from wan.training.synthetic import FaceStyle, loudness_per_frame, speech_audio, write_clip
    from wan.training.vae_trainer import reconstruct_frames

    face_scale = DEMO_FACE_SCALE if face_scale is None else face_scale

    size = settings["height"]
    output.mkdir(parents=True, exist_ok=True)
    clip = write_clip(output / "held_out_clip", HELD_OUT_SEED, seconds, (128, 128), face_scale=face_scale)
    style = FaceStyle.random(np.random.default_rng(HELD_OUT_SEED), face_scale)  # write_clip draws it first
    box = mouth_box(style.face_width, style.face_height, size)
    reference_path = clip / "images" / "frame_0.png"
    reference = np.asarray(
        Image.open(reference_path).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    )
    right_audio = load_audio(clip / "audio.wav", 16000)
    wrong_audio = speech_audio(seconds, np.random.default_rng(CONTROL_SEED))

    right_frames, right_seconds = generate(
        pipe, reference_path, right_audio, output / "right_audio", settings
    )
    wrong_frames, _ = generate(pipe, reference_path, wrong_audio, output / "wrong_audio", settings)
    count = min(len(right_frames), len(wrong_frames))
    loud_right = loudness_per_frame(right_audio, count)
    loud_wrong = loudness_per_frame(wrong_audio, count)
    mouth_right = mouth_opening(right_frames[:count], box)
    mouth_wrong = mouth_opening(wrong_frames[:count], box)
    drawn = np.stack(
        [
            np.asarray(
                Image.open(clip / "images" / f"frame_{i}.png")
                .convert("RGB")
                .resize((size, size), Image.Resampling.BICUBIC)
            )
            for i in range(count)
        ]
    )
    lag, lag_correlation = best_lag(mouth_right, loud_right)
    mouth_vae = mouth_opening(reconstruct_frames(pipe.vae, drawn), box)
    metrics: dict = {
        "settings": settings,
        "lipsync_right": pearson(mouth_right, loud_right),
        "lipsync_wrong": pearson(mouth_right, loud_wrong),
        "lipsync_wrong_driven": pearson(mouth_wrong, loud_right),
        "lipsync_best_lag": {"frames": lag, "correlation": lag_correlation},
        "lipsync_ceiling_drawn_frames": pearson(mouth_opening(drawn, box), loud_right),
        # the drawn frames through the VAE: what any transformer producing latents can reach at best
        "lipsync_ceiling_vae": pearson(mouth_vae, loud_right[: len(mouth_vae)]),
        "latent_frame_split": {
            "generated": latent_frame_split(mouth_right, loud_right),
            "vae": latent_frame_split(mouth_vae, loud_right),
        },
        "lipsync_ceiling_pooled_audio": pooled_audio_ceiling(
            loud_right, pipe.transformer.config.audio_window_padding
        ),
        # what the control can show at best: the two speeches' loudness curves against each other
        "control_audio_correlation": pearson(loud_right, loud_wrong),
        "seconds_for_lipsync_video": right_seconds,
    }

    long_audio = speech_audio(identity_seconds, np.random.default_rng(IDENTITY_SEED))
    long_frames, long_seconds = generate(pipe, reference_path, long_audio, output / "one_minute", settings)
    similarity = per_second(identity_similarity(long_frames, reference, exclude=box))
    first = per_second(identity_similarity(long_frames, long_frames[0], exclude=box))
    metrics.update(
        {
            "identity_per_second": similarity.round(4).tolist(),
            "identity_first_10s": float(similarity[:10].mean()),
            "identity_last_10s": float(similarity[-10:].mean()),
            "identity_drop_60s": linear_drop(similarity, span=60.0),
            "identity_to_first_frame_drop_60s": linear_drop(first, span=60.0),
            "seconds_for_identity_video": long_seconds,
        }
    )
    changes = frame_changes(long_frames)
    metrics.update(
        seam_statistics(changes, seam_frames(len(long_frames), settings["clip_length"], settings["overlap"]))
    )
    if field_evaluator is not None:
        metrics["field_metrics"] = field_measures(field_evaluator, output, reference_path, wrong_audio)
    metrics["passed"] = {
        "lipsync_right": metrics["lipsync_right"] >= TARGETS["lipsync_right"],
        "lipsync_wrong": max(abs(metrics["lipsync_wrong"]), abs(metrics["lipsync_wrong_driven"]))
        <= TARGETS["lipsync_wrong"],
        "identity": metrics["identity_drop_60s"] <= TARGETS["identity_drop_60s"],
        "seams": metrics["seam_ratio"] <= TARGETS["seam_ratio"],
    }
    plot(
        plot_path or output / "lipsync.png",
        mouth_right,
        loud_right,
        loud_wrong,
        similarity,
        metrics,
    )
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def field_measures(evaluator, output: Path, reference_path: Path, wrong_audio: np.ndarray) -> dict:
    """The field's measures on the generated videos: Sync-C / Sync-D / offset of the right-audio video
    with its audio and (control) with the other speech; face-embedding identity over the one-minute video."""
    import soundfile

    wrong_wav = output / "wrong_audio" / "audio.wav"
    soundfile.write(wrong_wav, wrong_audio, 16000)
    right_video = output / "right_audio" / "video.mp4"
    embedder, evaluator.embedder = evaluator.embedder, None
    right, _ = evaluator.video(right_video, None, None)
    control, _ = evaluator.video(right_video, wrong_wav, None)
    evaluator.embedder, syncnet, evaluator.syncnet = embedder, evaluator.syncnet, None
    identity, _ = evaluator.video(output / "one_minute" / "video.mp4", None, reference_path)
    evaluator.syncnet = syncnet
    return {
        "right_audio": right.get("sync"),
        "wrong_audio": control.get("sync"),
        "identity": identity.get("identity"),
    }


def _standardise(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / max(float(values.std()), 1e-9)


def plot(path: Path, mouth_right, loud_right, loud_wrong, similarity, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = slice(0, PLOT_SECONDS * FPS)  # standardised over the whole video, drawn for its start
    seconds = (np.arange(len(mouth_right)) / FPS)[shown]
    curves = {
        name: _standardise(values)[shown]
        for name, values in (("loud_right", loud_right), ("loud_wrong", loud_wrong), ("mouth", mouth_right))
    }
    figure, axes = plt.subplots(3, 1, figsize=(10, 9))
    axes[0].plot(seconds, curves["loud_right"], color="tab:orange", label="audio loudness")
    axes[0].plot(seconds, curves["mouth"], color="tab:blue", label="mouth opening (generated)")
    axes[0].set_title(
        f"held-out audio: correlation {metrics['lipsync_right']:.2f} (first {PLOT_SECONDS} s shown)"
    )
    axes[1].plot(seconds, curves["loud_wrong"], color="tab:orange", label="loudness of other speech")
    axes[1].plot(seconds, curves["mouth"], color="tab:blue", label="mouth opening (same video)")
    axes[1].set_title(f"control, mismatched audio: correlation {metrics['lipsync_wrong']:.2f}")
    for axis in axes[:2]:
        axis.set_xlabel("seconds")
        axis.set_ylabel("standardised")
        axis.legend(loc="upper right")
    axes[2].plot(np.arange(len(similarity)) + 0.5, similarity, marker="o")
    axes[2].set_title(
        f"identity over {len(similarity)} s: similarity to the reference (drop of linear fit {metrics['identity_drop_60s']:+.4f})"
    )
    axes[2].set_xlabel("second")
    axes[2].set_ylabel("1 - mean |frame - reference|")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    from wan.training.demo import demo_generation_settings

    defaults = demo_generation_settings()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lipsync_eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model_dir", type=Path, default=Path("checkpoints/demo"))
    parser.add_argument("--output", type=Path, default=Path("outputs/lipsync_eval"))
    parser.add_argument("--steps", type=int, default=defaults["num_inference_steps"])
    parser.add_argument("--audio_guidance", type=float, default=defaults["audio_guidance_scale"])
    parser.add_argument("--text_guidance", type=float, default=defaults["text_guidance_scale"])
    parser.add_argument("--overlap", type=int, default=defaults["overlap"])
    parser.add_argument(
        "--seconds", type=float, default=LIPSYNC_SECONDS, help="length of the lip-sync videos"
    )
    parser.add_argument("--identity_seconds", type=float, default=60.0)
    parser.add_argument(
        "--face_scale",
        type=float,
        default=None,
        help="size of the held-out face (default: that of the demo model's training faces)",
    )
    parser.add_argument(
        "--guidance",
        choices=["published", "ang"],
        default="published",
        help="guidance rule (wan.pipeline.guidance)",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed of every generated video")
    parser.add_argument(
        "--field_metrics",
        action="store_true",
        help="also measure Sync-C / Sync-D (with --syncnet) and face-embedding identity (DINOv2, random "
        "weights unless --dinov2) with wan.evaluation",
    )
    parser.add_argument("--syncnet", type=Path, help="SyncNet weights (syncnet_v2.model) for --field_metrics")
    parser.add_argument("--dinov2", type=Path, help="local DINOv2 folder for --field_metrics")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--dtype", default="float32", help="compute dtype of the pipeline (float32, or bfloat16 as on a GPU)"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    settings = {
        **defaults,
        "num_inference_steps": args.steps,
        "audio_guidance_scale": args.audio_guidance,
        "text_guidance_scale": args.text_guidance,
        "overlap": args.overlap,
        "seed": args.seed,
        "guidance": args.guidance,
    }
    field_evaluator = None
    if args.field_metrics:
        from wan.evaluation import Dinov2Embedder, Evaluator, load_syncnet

        field_evaluator = Evaluator(
            syncnet=load_syncnet(args.syncnet) if args.syncnet else None,
            syncnet_name=args.syncnet.name if args.syncnet else "",
            embedder=Dinov2Embedder(args.dinov2),
        )
    metrics = evaluate(
        args.model_dir,
        args.output,
        settings,
        args.seconds,
        args.identity_seconds,
        args.face_scale,
        field_evaluator,
        args.dtype,
    )
    rows = [
        ("lip sync, right audio (>= 0.6)", f"{metrics['lipsync_right']:.3f}"),
        ("lip sync, wrong audio, same video (<= 0.2)", f"{metrics['lipsync_wrong']:.3f}"),
        ("lip sync, video driven by the wrong audio (<= 0.2)", f"{metrics['lipsync_wrong_driven']:.3f}"),
        (
            "best lag (frames, correlation)",
            f"{metrics['lipsync_best_lag']['frames']}, {metrics['lipsync_best_lag']['correlation']:.3f}",
        ),
        ("ceiling: the drawn frames of the clip", f"{metrics['lipsync_ceiling_drawn_frames']:.3f}"),
        ("ceiling: the drawn frames through the VAE", f"{metrics['lipsync_ceiling_vae']:.3f}"),
        *[
            (
                f"{name}: across latent frames / inside them (share of variance)",
                f"{split['grouped']:.3f} / {split['within']:.3f} ({split['within_share']:.0%})",
            )
            for name, split in metrics["latent_frame_split"].items()
        ],
        (
            "ceiling: mean loudness of each latent frame's audio window",
            f"{metrics['lipsync_ceiling_pooled_audio']:.3f}",
        ),
        ("the two speeches' loudness against each other", f"{metrics['control_audio_correlation']:.3f}"),
        (
            "identity, first 10 s / last 10 s",
            f"{metrics['identity_first_10s']:.4f} / {metrics['identity_last_10s']:.4f}",
        ),
        ("identity drop per 60 s, linear fit (<= 0.01)", f"{metrics['identity_drop_60s']:+.4f}"),
        (
            "seam change / median in-window change (<= 1.5)",
            f"{metrics['seam_ratio']:.2f} (max {metrics['max_seam_ratio']:.2f}, "
            f"vs latent boundaries {metrics['seam_ratio_vs_latent_boundaries']:.2f}, {metrics['seams']} seams)",
        ),
        (
            f"seconds to generate the {args.seconds:g} s / {args.identity_seconds:g} s videos",
            f"{metrics['seconds_for_lipsync_video']:.1f} / {metrics['seconds_for_identity_video']:.1f}",
        ),
    ]
    field = metrics.get("field_metrics") or {}
    for label, sync in (("right audio", field.get("right_audio")), ("wrong audio", field.get("wrong_audio"))):
        if sync:
            rows.append(
                (
                    f"Sync-C / Sync-D / offset, {label} ({sync['syncnet']})",
                    f"{sync['sync_c']:.2f} / {sync['sync_d']:.2f} / {sync['av_offset']}",
                )
            )
    if field.get("identity"):
        identity = field["identity"]
        rows.append(
            (
                f"face-embedding identity, mean / drop per 60 s ({identity['embedder']})",
                f"{identity['mean']:.4f} / {identity['drop_per_minute']:+.4f}",
            )
        )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(f"passed: {metrics['passed']}")
    print(f"wrote {args.output / 'metrics.json'} and {args.output / 'lipsync.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
