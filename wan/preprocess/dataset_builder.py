"""Raw talking-head videos -> the `talking_face_data` layout the StableAvatar trainer reads.

    OUTPUT_ROOT/<resolution>/<category>/<NNNNN>/sub_clip.mp4      H.264 + AAC, `fps` frames per second
                                               audio.wav         16 kHz mono, the clip's audio
                                               images/frame_i.png        RGB frames, i from 0
                                               face_masks/frame_i.png    0 / 255, face oval
                                               lip_masks/frame_i.png     0 / 255, outer lips
                                               meta.json         source video and frame span
    OUTPUT_ROOT/video_square_path.txt, video_rec_path.txt, video_vec_path.txt   one clip folder a line

<resolution> is square (512x512), rec (832x480, landscape) or vec (480x832, portrait), whichever aspect
ratio is closest to the video's; frames are scaled to cover that size and centre-cropped. <category> is
speech, singing or dancing (the trainer's prompt comes from it): the first of those names among the
video's folders, else the default. Each video is cut into clips of at most `max_frames`; clips without a
face in enough frames, videos without audio and pieces shorter than `min_frames` are dropped and reported.
Clip folders appear only when complete, and videos already in the dataset are skipped, so a run resumes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from ..checks import writable_folder
from ..errors import MissingFileError, UserFacingError
from ..generation_settings import SAMPLE_RATE
from ..media import VideoWriter, load_audio
from .audio import VIDEO_EXTENSIONS, find_files, load_stereo, write_wav
from .masks import FaceMeshDetector, landmark_mask, save_png
from .separation import MdxSeparator

RESOLUTIONS: dict[str, tuple[int, int]] = {"square": (512, 512), "rec": (832, 480), "vec": (480, 832)}
CATEGORIES = ("speech", "singing", "dancing")
AUDIO_RATE = SAMPLE_RATE  # Hz, what wav2vec2 and the trainer read
T = TypeVar("T")


def path_list_name(resolution: str) -> str:
    """The trainer's list file for a resolution, e.g. video_rec_path.txt."""
    return f"video_{resolution}_path.txt"


def classify_aspect(width: int, height: int) -> str:
    """ "square", "rec" or "vec": the training resolution whose aspect ratio is nearest (log scale)."""
    ratio = math.log(width / height)
    return min(
        RESOLUTIONS, key=lambda name: abs(ratio - math.log(RESOLUTIONS[name][0] / RESOLUTIONS[name][1]))
    )


def frame_size(resolution: str, scale: float = 1.0) -> tuple[int, int]:
    """(width, height) in pixels of a resolution times `scale`, rounded to multiples of 8 (at least 16)."""
    width, height = RESOLUTIONS[resolution]
    return tuple(max(16, round(side * scale / 8) * 8) for side in (width, height))  # type: ignore[return-value]


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale uint8 [H, W, 3] to cover `size` (width, height) and centre-crop: [height, width, 3]."""
    image = Image.fromarray(frame)
    if image.size != size:
        image = ImageOps.fit(image, size, method=Image.Resampling.BICUBIC)
    return np.asarray(image)


def category_of(video: Path, root: Path, default: str) -> str:
    """The first of speech / singing / dancing among `video`'s folders below `root`, else `default`."""
    parts = video.relative_to(root).parts[:-1] if video.is_relative_to(root) else ()
    return next((part.lower() for part in parts if part.lower() in CATEGORIES), default)


# ------------------------------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class VideoProbe:
    """A video's displayed size in pixels (rotation applied), frame rate and rotation in degrees."""

    width: int
    height: int
    fps: Fraction
    rotation: int


def probe_video(path: Path) -> VideoProbe:
    """Read a video's size, rate and rotation (decodes its first frame)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserFacingError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                raise UserFacingError(f"{path.name} has no video frames")
            rate = stream.guessed_rate or stream.average_rate or 25
    except av.FFmpegError as error:
        raise UserFacingError(f"cannot decode video {path.name} ({' '.join(str(error).split())})") from None
    rotation = round((first.rotation or 0) / 90) % 4 * 90
    width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
    return VideoProbe(width, height, Fraction(rate), rotation)


def at_rate(frames: Iterable[tuple[Fraction, T]], fps: Fraction, frame_duration: Fraction) -> Iterator[T]:
    """Resample timed frames (start time in seconds, item) to `fps`: output frame k is the input frame
    shown at time k / fps after the first one (items repeat or are skipped). The last input frame lasts
    `frame_duration` seconds."""
    k, previous, start, last = 0, None, None, Fraction(0)
    for time, item in frames:
        start = time if start is None else start
        last = time - start
        while previous is not None and k / fps < last:
            yield previous
            k += 1
        previous = item
    while previous is not None and k / fps < last + frame_duration:
        yield previous
        k += 1


def decode_frames(
    path: Path, probe: VideoProbe, fps: Fraction, size: tuple[int, int]
) -> Iterator[np.ndarray]:
    """The video's frames at `fps`, upright and fitted to `size`: uint8 [height, width, 3] each."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        timed = (
            (Fraction(frame.pts) * stream.time_base if frame.pts is not None else i / probe.fps, frame)
            for i, frame in enumerate(container.decode(stream))
        )
        converted: tuple[object, np.ndarray] | None = None
        for frame in at_rate(timed, fps, 1 / probe.fps):
            if converted is None or converted[0] is not frame:  # a repeated frame is converted once
                array = np.rot90(frame.to_ndarray(format="rgb24"), probe.rotation // 90)
                converted = (frame, fit_frame(np.ascontiguousarray(array), size))
            yield converted[1]


# ------------------------------------------------------------------------------------------- report


@dataclass
class KeptClip:
    path: Path
    resolution: str
    category: str
    frames: int
    source: Path
    start_frame: int


@dataclass
class Dropped:
    source: Path
    reason: str  # "no audio", "too short", "no face", "unreadable"
    detail: str


@dataclass
class BuildReport:
    """Clips written, what was dropped and why, and videos skipped because they are already built."""

    output_root: Path
    fps: Fraction
    kept: list[KeptClip] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    already_built: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        frames = sum(clip.frames for clip in self.kept)
        per_resolution = ", ".join(
            f"{name} {sum(c.resolution == name for c in self.kept)}" for name in RESOLUTIONS
        )
        lines = [
            f"kept {len(self.kept)} clips ({frames} frames, {float(frames / self.fps):.1f} s): {per_resolution}"
        ]
        lines += [
            f"  {clip.path.relative_to(self.output_root)}: {clip.frames} frames from {clip.source.name} "
            f"(frame {clip.start_frame} on)"
            for clip in self.kept
        ]
        if self.already_built:
            lines.append(f"skipped {len(self.already_built)} videos already in the dataset")
        if self.dropped:
            reasons = sorted({d.reason for d in self.dropped})
            counts = ", ".join(f"{sum(d.reason == r for d in self.dropped)} {r}" for r in reasons)
            lines.append(f"dropped {len(self.dropped)}: {counts}")
            lines += [f"  {d.source.name}: {d.reason} ({d.detail})" for d in self.dropped]
        return "\n".join(lines)


# -------------------------------------------------------------------------------------------- build


@dataclass
class BuildOptions:
    """fps: output frame rate; max_frames / min_frames: clip length limits in output frames; scale: frame
    size relative to 512x512 / 832x480 / 480x832; category: used when the path names none;
    min_face_fraction: share of a clip's frames that must show a face; separator: optional vocal
    separation of the audio before it is written."""

    fps: Fraction = Fraction(25)
    max_frames: int = 250
    min_frames: int = 81
    scale: float = 1.0
    category: str = "speech"
    min_face_fraction: float = 0.8
    separator: MdxSeparator | None = None

    def check(self) -> None:
        if self.fps <= 0 or self.scale <= 0:
            raise UserFacingError("--fps and --scale must be positive")
        if not 1 <= self.min_frames <= self.max_frames:
            raise UserFacingError(
                f"need 1 <= --min_frames <= --max_frames, got {self.min_frames} and {self.max_frames}"
            )
        if self.category not in CATEGORIES:
            raise UserFacingError(f"--category must be one of {', '.join(CATEGORIES)}, got {self.category!r}")
        if not 0 <= self.min_face_fraction <= 1:
            raise UserFacingError(f"--min_face_fraction must be in [0, 1], got {self.min_face_fraction}")


def build_dataset(
    source: str | os.PathLike[str],
    output_root: str | os.PathLike[str],
    options: BuildOptions | None = None,
    detector: FaceMeshDetector | None = None,
    progress: bool = True,
) -> BuildReport:
    """Turn a video file, or every video under a folder, into training clips under `output_root`."""
    options = options or BuildOptions()
    options.check()
    source, output_root = Path(source), Path(output_root).resolve()
    writable_folder(output_root, "the dataset folder (--output_root)")
    videos = _find_videos(source)
    output_root.mkdir(parents=True, exist_ok=True)
    report = BuildReport(output_root, options.fps)
    built = _sources_already_built(output_root)
    numbers = _clip_numbers(output_root)
    root = source if source.is_dir() else source.parent.parent  # a single video: its folder counts
    own_detector = detector is None
    detector = detector or FaceMeshDetector()
    try:
        for video in tqdm(videos, desc="videos", unit="video", disable=None if progress else True):
            if str(video.resolve()) in built:
                report.already_built.append(video)
                continue
            category = category_of(video, root, options.category)
            _build_video(video, category, output_root, options, detector, numbers, report)
    finally:
        if own_detector:
            detector.close()
    write_path_lists(output_root)
    return report


def _find_videos(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise MissingFileError(f"video file or folder not found: {source}; check the path")
    videos = find_files(source, VIDEO_EXTENSIONS)
    if not videos:
        raise UserFacingError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {source}")
    return videos


def _build_video(
    video: Path,
    category: str,
    output_root: Path,
    options: BuildOptions,
    detector: FaceMeshDetector,
    numbers: Iterator[int],
    report: BuildReport,
) -> None:
    """Cut one video into clips; append what was kept or dropped to `report`."""
    try:
        probe = probe_video(video)
    except UserFacingError as error:
        report.dropped.append(Dropped(video, "unreadable", str(error)))
        return
    try:
        audio = _clip_audio_source(video, options.separator)  # [S] at AUDIO_RATE
    except UserFacingError as error:
        report.dropped.append(Dropped(video, "no audio", str(error)))
        return
    audio_frames = math.floor(audio.size * options.fps / AUDIO_RATE)
    if audio_frames < options.min_frames:
        report.dropped.append(Dropped(video, "too short", _too_short(audio_frames, options)))
        return
    resolution = classify_aspect(probe.width, probe.height)
    plan = _ClipPlan(video, resolution, category, output_root, options)
    frames = decode_frames(video, probe, options.fps, frame_size(resolution, options.scale))
    with contextlib.closing(frames):  # closes the video file when the sound ends first
        for start in range(0, audio_frames, options.max_frames):
            wanted = min(options.max_frames, audio_frames - start)
            span = _audio_span(audio, start, wanted, options.fps)
            written = plan.write(start, itertools.islice(frames, wanted), span, detector, numbers, report)
            if written < wanted:  # the picture ended before the sound
                break


def _clip_audio_source(video: Path, separator: MdxSeparator | None) -> np.ndarray:
    """The video's audio as float32 mono [S] at AUDIO_RATE, vocals only when a separator is given."""
    if separator is None:
        return load_audio(video, AUDIO_RATE)
    rate = separator.params.sample_rate
    vocals, _ = separator.separate(load_stereo(video, rate), progress=False)
    return load_audio(vocals.mean(axis=0), AUDIO_RATE, source_sample_rate=rate)


def _audio_span(audio: np.ndarray, start: int, frames: int, fps: Fraction) -> np.ndarray:
    """The samples of output frames [start, start + frames)."""
    return audio[round(start * AUDIO_RATE / fps) : round((start + frames) * AUDIO_RATE / fps)]


def _too_short(frames: int, options: BuildOptions) -> str:
    return (
        f"{frames} frames ({float(frames / options.fps):.2f} s) at {float(options.fps):g} fps; "
        f"clips need at least {options.min_frames} (--min_frames)"
    )


@dataclass
class _ClipPlan:
    """Writes the clips of one video: staging folder, frames and masks, then keep or drop."""

    video: Path
    resolution: str
    category: str
    output_root: Path
    options: BuildOptions

    def write(
        self,
        start: int,
        frames: Iterable[np.ndarray],
        audio: np.ndarray,
        detector: FaceMeshDetector,
        numbers: Iterator[int],
        report: BuildReport,
    ) -> int:
        """Write one clip from `frames` (output frames `start` on) and `audio` (its span at AUDIO_RATE);
        keep it under the next clip number or drop it. Returns the number of frames read."""
        staging = Path(tempfile.mkdtemp(prefix=".clip.", suffix=".partial", dir=self.output_root))
        try:
            count, with_face = _write_frames(staging, frames, audio, self.options.fps, detector)
            if count == 0:
                return 0
            span = f"frames {start}-{start + count - 1}"
            if count < self.options.min_frames:
                report.dropped.append(
                    Dropped(self.video, "too short", f"{span}: {_too_short(count, self.options)}")
                )
            elif with_face < self.options.min_face_fraction * count:
                detail = f"{span}: a face in {with_face} of {count} frames, need {self.options.min_face_fraction:.0%}"
                report.dropped.append(Dropped(self.video, "no face", detail))
            else:
                report.kept.append(self._keep(staging, start, count, audio, numbers))
            return count
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # nothing left once kept (moved away)

    def _keep(
        self, staging: Path, start: int, count: int, audio: np.ndarray, numbers: Iterator[int]
    ) -> KeptClip:
        write_wav(staging / "audio.wav", audio[: round(count * AUDIO_RATE / self.options.fps)], AUDIO_RATE)
        meta = {
            "source": str(self.video.resolve()),
            "start_frame": start,
            "frames": count,
            "fps": float(self.options.fps),
            "resolution": self.resolution,
            "category": self.category,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        target = self.output_root / self.resolution / self.category / f"{next(numbers):05d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return KeptClip(target, self.resolution, self.category, count, self.video, start)


def _write_frames(
    folder: Path, frames: Iterable[np.ndarray], audio: np.ndarray, fps: Fraction, detector: FaceMeshDetector
) -> tuple[int, int]:
    """images/, face_masks/, lip_masks/ and sub_clip.mp4 (with `audio`) in `folder`.

    Returns (frames written, frames with a face)."""
    for name in ("images", "face_masks", "lip_masks"):
        (folder / name).mkdir()
    count = with_face = 0
    clip_audio = audio if audio.size else None
    writer = VideoWriter(folder / "sub_clip.mp4", fps=fps, audio=clip_audio, audio_sample_rate=AUDIO_RATE)
    try:
        for frame in frames:
            faces = detector(frame)
            with_face += bool(faces)
            name = f"frame_{count}.png"
            save_png(folder / "images" / name, frame)
            for kind in ("face", "lip"):
                save_png(folder / f"{kind}_masks" / name, landmark_mask(faces, kind, *frame.shape[:2]))
            writer.write(frame)
            count += 1
    except BaseException:
        writer.abort()
        raise
    if count:
        writer.close()
    else:
        writer.abort()
    return count, with_face


# ---------------------------------------------------------------------------- what is on disk already


def _clip_folders(output_root: Path) -> list[Path]:
    """Complete clip folders: OUTPUT_ROOT/<resolution>/<category>/<number>/ holding sub_clip.mp4."""
    found = []
    for resolution in RESOLUTIONS:
        found += [
            p.parent for p in (output_root / resolution).glob("*/*/sub_clip.mp4") if p.parent.name.isdigit()
        ]
    return sorted(found)


def _clip_numbers(output_root: Path) -> Iterator[int]:
    """1, 2, 3, ... after the largest clip number already used."""
    used = [int(p.name) for p in _clip_folders(output_root)]
    return itertools.count(max(used, default=0) + 1)


def _sources_already_built(output_root: Path) -> set[str]:
    sources = set()
    for folder in _clip_folders(output_root):
        try:
            sources.add(json.loads((folder / "meta.json").read_text())["source"])
        except (OSError, ValueError, KeyError):
            continue
    return sources


def write_path_lists(output_root: str | os.PathLike[str]) -> dict[str, Path]:
    """(Re)write video_<resolution>_path.txt (absolute clip folder paths, one a line) for every resolution
    from the complete clip folders on disk."""
    output_root = Path(output_root).resolve()
    folders = _clip_folders(output_root)
    written = {}
    for resolution in RESOLUTIONS:
        lines = [str(f) for f in folders if f.parent.parent.name == resolution]
        path = output_root / path_list_name(resolution)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text("".join(line + "\n" for line in lines))
        os.replace(partial, path)
        written[resolution] = path
    return written
