"""Audio for data preparation: a video's sound track to wav, stereo decoding, atomic wav writing.

Mono decoding and resampling go through `wan.media.load_audio`; `load_stereo` keeps two channels for the
vocal separator, which works on stereo 44.1 kHz audio.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from math import gcd
from pathlib import Path

import av
import numpy as np
import soundfile
from scipy.signal import resample_poly
from tqdm import tqdm

from ..checks import writable_file, writable_folder
from ..errors import MissingFileError, UserFacingError
from ..generation_settings import SAMPLE_RATE
from ..media import load_audio

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")


def find_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files under `folder` (recursively) whose suffix is in `extensions`, sorted; hidden names skipped."""
    found = [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in extensions
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> Path:
    """Write 16-bit PCM wav atomically (a partial file is renamed into place when complete).

    `samples`: float [S] (mono) or [C, S], nominally in [-1, 1]; values outside are clipped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    data = data.T if data.ndim == 2 else data  # soundfile takes [S, C]
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial.wav")
    try:
        soundfile.write(str(partial), data, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------- audio extraction


@dataclass
class ExtractedAudio:
    """One extracted track: where it went, its length in seconds and its sample rate in Hz."""

    path: Path
    duration: float
    sample_rate: int


def extract_audio(
    video_path: str | os.PathLike[str],
    saved_audio_path: str | os.PathLike[str],
    sample_rate: int = SAMPLE_RATE,
) -> ExtractedAudio:
    """Write the first audio track of a video (or any audio file) as mono 16-bit wav at `sample_rate` Hz."""
    if sample_rate <= 0:
        raise UserFacingError(f"--sample_rate must be positive, got {sample_rate}")
    writable_file(saved_audio_path, "the wav file (--saved_audio_path)")
    samples = load_audio(video_path, sample_rate)  # [S] float32 mono
    path = write_wav(saved_audio_path, samples, sample_rate)
    return ExtractedAudio(path, samples.size / sample_rate, sample_rate)


@dataclass
class FolderExtraction:
    """What a folder run did: tracks written, outputs already there, and files that failed with why."""

    written: list[ExtractedAudio] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.written)} audio files written, {len(self.skipped)} already there"]
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed]
        return "\n".join(lines)


def extract_audio_folder(
    video_dir: str | os.PathLike[str],
    saved_audio_dir: str | os.PathLike[str],
    sample_rate: int = SAMPLE_RATE,
    overwrite: bool = False,
) -> FolderExtraction:
    """Extract every video under `video_dir` to `saved_audio_dir/<same relative path>.wav`.

    Existing outputs are kept unless `overwrite`; a video without usable audio is listed in `failed`
    and the others go on.
    """
    video_dir, out_dir = Path(video_dir), Path(saved_audio_dir)
    writable_folder(out_dir, "the wav folder (--saved_audio_path, with a folder as --video_path)")
    videos = find_files(video_dir, VIDEO_EXTENSIONS)
    if not videos:
        raise UserFacingError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {video_dir}")
    result = FolderExtraction()
    for video in tqdm(videos, desc="extracting audio", unit="video", disable=None):
        target = out_dir / video.relative_to(video_dir).with_suffix(".wav")
        if target.exists() and not overwrite:
            result.skipped.append(target)
            continue
        try:
            result.written.append(extract_audio(video, target, sample_rate))
        except UserFacingError as error:
            result.failed.append((video, str(error)))
    return result


# ------------------------------------------------------------------------------------ stereo decoding


def load_stereo(path: str | os.PathLike[str], sample_rate: int = 44100) -> np.ndarray:
    """Decode an audio or video file to float32 [2, S] at `sample_rate` Hz.

    Mono is copied to both channels; stereo is kept; more channels are downmixed to stereo by FFmpeg.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"audio file not found: {path}; check the path")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise UserFacingError(f"{path.name} has no audio stream; pass a file with speech or singing")
            channels, rate = _decode_channels(container, container.streams.audio[0])
    except av.FFmpegError as error:
        reason = " ".join(str(getattr(error, "strerror", None) or error).split())
        raise UserFacingError(f"cannot decode audio file {path.name} ({reason})") from None
    if channels.shape[1] == 0:
        raise UserFacingError(f"{path.name} contains no audio samples; pass a file with speech or singing")
    if channels.shape[0] == 1:
        channels = np.repeat(channels, 2, axis=0)
    return _resample_channels(channels, rate, sample_rate)


def _decode_channels(
    container: av.container.InputContainer, stream: av.AudioStream
) -> tuple[np.ndarray, int]:
    """All samples of `stream` as float32 [C, S] (C = 1 or 2) at the stream's own rate."""
    layout = "stereo" if stream.codec_context.channels > 2 else None  # FFmpeg's downmix for surround
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=stream.codec_context.sample_rate)
    pieces: list[np.ndarray] = []
    for frame in container.decode(stream):
        pieces += [out.to_ndarray() for out in resampler.resample(frame)]
    pieces += [out.to_ndarray() for out in resampler.resample(None)]
    rate = stream.codec_context.sample_rate
    channels = min(stream.codec_context.channels, 2)
    samples = np.concatenate(pieces, axis=1) if pieces else np.zeros((channels, 0), np.float32)
    # Codecs such as AAC pad their last frame; the container's declared duration says where audio ends.
    if stream.duration and stream.time_base:
        declared = round(Fraction(stream.duration) * stream.time_base * rate)
        if 0 < declared < samples.shape[1]:
            samples = samples[:, :declared]
    return samples.astype(np.float32, copy=False), rate


def _resample_channels(channels: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """[C, S] at `rate` -> [C, round(S * target_rate / rate)] at `target_rate` (polyphase filter)."""
    if rate == target_rate:
        return np.ascontiguousarray(channels, dtype=np.float32)
    divisor = gcd(rate, target_rate)
    target = round(channels.shape[1] * target_rate / rate)
    out = resample_poly(channels, target_rate // divisor, rate // divisor, axis=1)[:, :target]
    return np.ascontiguousarray(out, dtype=np.float32)
