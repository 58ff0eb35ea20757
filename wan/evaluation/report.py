"""Evaluate a folder of generated videos: lip sync (Sync-C, Sync-D, offset), identity over time and, with
feature networks, FID / FVD; a markdown table, a JSON file and one plot per video."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserFacingError
from ..generation_settings import SAMPLE_RATE
from .faces import FaceTrack, MediaPipeFaceDetector, crop_track, face_crops
from .frechet import ClipFeatures, FrameFeatures, frechet_distance
from .identity import FaceEmbedder, measure_identity
from .sync import measure_sync
from .syncnet import SyncNet

FPS = 25
SAMPLES_PER_FRAME = 640  # 16 kHz audio at 25 fps
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".m4a", ".ogg"}


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """`[T, H, W, 3]` RGB uint8 frames and the frame rate."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserFacingError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.guessed_rate or stream.average_rate or 0)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except av.FFmpegError as error:
        raise UserFacingError(f"cannot decode {path.name}: {str(error).splitlines()[0]}") from None
    if not frames:
        raise UserFacingError(f"{path.name} has no frames")
    return np.stack(frames), fps


def _match(folder: Path | None, stem: str, suffixes: set[str], what: str, flag: str) -> Path | None:
    """The file of `folder` named `stem` (any suffix of `suffixes`), or its only such file."""
    if folder is None:
        return None
    if folder.is_file():
        return folder
    candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    named = [p for p in candidates if p.stem == stem]
    if named:
        return named[0]
    if len(candidates) == 1:
        return candidates[0]
    raise UserFacingError(
        f"no {what} named {stem}.* in {folder}; {flag} needs one per video (same name) or a single file"
    )


def reference_crop(image_path: Path, detector: MediaPipeFaceDetector) -> np.ndarray:
    """The reference image's face, cropped as the video's faces are."""
    from PIL import Image

    image = np.asarray(Image.open(image_path).convert("RGB"))
    boxes = detector(image)
    if not boxes:
        raise UserFacingError(f"no face found in the reference image {image_path.name}")
    return crop_track(image[None], FaceTrack(np.array([0]), boxes[0][None]))[0]


@dataclass
class Evaluator:
    """What to measure with. `syncnet` None skips lip sync; `embedder` None skips identity;
    `fid` / `fvd` need `real_videos`."""

    syncnet: SyncNet | None = None
    syncnet_name: str = ""
    embedder: FaceEmbedder | None = None
    fid: FrameFeatures | None = None
    fvd: ClipFeatures | None = None
    max_length_mismatch: float = 0.1  # seconds between audio and video
    min_face_coverage: float = 0.5  # share of the frames the face track must cover
    detector: MediaPipeFaceDetector = field(default_factory=MediaPipeFaceDetector)

    def video(self, path: Path, audio_path: Path | None, reference: Path | None) -> tuple[dict, dict]:
        """Measures of one video (JSON-ready) and the curves for its plot."""
        from ..media import load_audio

        frames, fps = read_video(path)
        if round(fps) != FPS:
            raise UserFacingError(
                f"{path.name} is at {fps:g} fps; SyncNet reads 25 fps (ffmpeg -i in -r 25 out)"
            )
        result: dict = {"video": path.name, "frames": len(frames)}
        curves: dict = {}
        crops, track = face_crops(frames, path.name, self.detector, min_coverage=self.min_face_coverage)
        result["face_frames"] = [int(track.frames[0]), int(track.frames[-1]) + 1]
        if self.syncnet is not None:
            waveform = load_audio(audio_path or path, SAMPLE_RATE)
            gap = abs(len(waveform) / SAMPLE_RATE - len(frames) / FPS)
            if gap > self.max_length_mismatch:
                raise UserFacingError(
                    f"{path.name}: audio {len(waveform) / SAMPLE_RATE:.2f} s and video {len(frames) / FPS:.2f} s differ by "
                    f"{gap:.2f} s; pass the audio that drove this video"
                )
            first, last = track.frames[0], track.frames[-1] + 1
            sync = measure_sync(
                self.syncnet, crops, waveform[first * SAMPLES_PER_FRAME : last * SAMPLES_PER_FRAME], path.name
            )
            result["sync"] = {"syncnet": self.syncnet_name, **sync.as_dict()}
            curves["sync"] = (
                (track.frames[0] + np.arange(len(sync.framewise_confidence))) / FPS,
                sync.framewise_confidence,
            )
        if self.embedder is not None and reference is not None:
            identity = measure_identity(self.embedder, crops, reference_crop(reference, self.detector))
            result["identity"] = identity.as_dict()
            curves["identity"] = np.arange(len(identity.per_second)) + 0.5, identity.per_second
        return result, curves


def _mean(results: list[dict], *keys: str) -> float | None:
    values = []
    for result in results:
        value = result
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return float(np.mean(values)) if values else None


def summary(results: list[dict]) -> dict:
    return {
        "sync_c": _mean(results, "sync", "sync_c"),
        "sync_d": _mean(results, "sync", "sync_d"),
        "abs_av_offset": _mean([{"o": abs(r["sync"]["av_offset"])} for r in results if "sync" in r], "o"),
        "identity_mean": _mean(results, "identity", "mean"),
        "identity_drop_per_minute": _mean(results, "identity", "drop_per_minute"),
    }


def markdown_table(results: list[dict], mean: dict, extra: dict) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [
        "| video | Sync-C | Sync-D | AV offset | identity (mean) | identity drop / min |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        sync, ident = r.get("sync", {}), r.get("identity", {})
        rows.append(
            f"| {r['video']} | {fmt(sync.get('sync_c'), '.2f')} | {fmt(sync.get('sync_d'), '.2f')} | "
            f"{fmt(sync.get('av_offset'), 'd')} | {fmt(ident.get('mean'), '.3f')} | {fmt(ident.get('drop_per_minute'), '+.4f')} |"
        )
    rows.append(
        f"| **mean** | {fmt(mean['sync_c'], '.2f')} | {fmt(mean['sync_d'], '.2f')} | "
        f"{fmt(mean['abs_av_offset'], '.1f')} (abs) | {fmt(mean['identity_mean'], '.3f')} | {fmt(mean['identity_drop_per_minute'], '+.4f')} |"
    )
    for name, value in extra.items():
        rows.append(f"\n{name}: {value:.2f}")
    return "\n".join(rows)


def plot(path: Path, name: str, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [key for key in ("sync", "identity") if key in curves]
    if not panels:
        return
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3 * len(panels)), squeeze=False)
    labels = {
        "sync": ("seconds", "SyncNet confidence (9-frame median)"),
        "identity": ("second", "similarity to reference"),
    }
    for axis, key in zip(axes[:, 0], panels, strict=True):
        x, y = curves[key]
        axis.plot(x, y, marker="o" if key == "identity" else None)
        axis.set_xlabel(labels[key][0])
        axis.set_ylabel(labels[key][1])
        axis.set_title(f"{name}: {labels[key][1]}")
    figure.tight_layout()
    temporary = path.with_name(path.stem + ".partial.png")
    figure.savefig(temporary, dpi=90)
    plt.close(figure)
    os.replace(temporary, path)


def evaluate_folder(
    evaluator: Evaluator,
    videos: Path,
    references: Path | None,
    audio: Path | None,
    output: Path,
    real_videos: Path | None = None,
) -> dict:
    """Evaluate every video in `videos`; writes `metrics.json`, `table.md` and `<video>.png` to `output`."""
    paths = (
        sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if videos.is_dir() else []
    )
    if not paths:
        raise UserFacingError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in {videos}")
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for path in paths:
        reference = _match(references, path.stem, IMAGE_SUFFIXES, "reference image", "--references")
        audio_path = _match(audio, path.stem, AUDIO_SUFFIXES, "audio", "--audio")
        result, curves = evaluator.video(path, audio_path, reference)
        plot(output / f"{path.stem}.png", path.stem, curves)
        results.append(result)
    extra = {}
    if evaluator.fid is not None or evaluator.fvd is not None:
        reals = (
            sorted(p for p in real_videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if real_videos
            else []
        )
        if not reals:
            raise UserFacingError("FID / FVD compare with real videos: pass --real_videos DIR")
        fake_frames = [read_video(p)[0] for p in paths]
        real_frames = [read_video(p)[0] for p in reals]
        for name, network in (("FID", evaluator.fid), ("FVD", evaluator.fvd)):
            if network is not None:
                extra[name] = frechet_distance(
                    np.concatenate([network(f) for f in real_frames]),
                    np.concatenate([network(f) for f in fake_frames]),
                )
    report = {"videos": results, "mean": summary(results), **{k.lower(): v for k, v in extra.items()}}
    table = markdown_table(results, report["mean"], extra)
    for name, text in (("metrics.json", json.dumps(report, indent=1)), ("table.md", table + "\n")):
        temporary = output / (name + ".partial")
        temporary.write_text(text)
        os.replace(temporary, output / name)
    report["table"] = table
    return report
