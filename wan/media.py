"""Reading the user's audio and reference image, and writing the generated video (H.264 + AAC in MP4).

Everything is decoded and encoded with PyAV (FFmpeg), so no `ffmpeg` executable is needed. Bad input
raises `UserFacingError` (`MissingFileError` for a path that does not exist) with a one-line message.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import stat
import time
import uuid
import weakref
from fractions import Fraction
from math import gcd
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image, ImageOps
from scipy.signal import resample_poly

from .checks import existing_file
from .errors import UserFacingError
from .generation_settings import SAMPLE_RATE

_AUDIO_HINT = "pass a wav, mp3, flac, m4a, ogg or video file with speech or singing"
_IMAGE_HINT = "pass a PNG, JPEG or WebP image of the person"
X264_THREADS = 4  # encoder threads: a constant, so the encode is the same on every machine
_MAX_CHANNELS = 16  # a 2-D waveform whose shorter axis is longer than this is not [C, S] or [S, C]


def _one_line(error: BaseException) -> str:
    # FFmpeg errors carry a short reason in strerror; str() adds the errno and file name.
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(text.split()) or type(error).__name__


# ----------------------------------------------------------------------------------------------- audio


def load_audio(
    source: str | os.PathLike[str] | np.ndarray | torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    source_sample_rate: int | None = None,
) -> np.ndarray:
    """Load speech or singing as mono float32 [S] at `sample_rate` Hz, values nominally in [-1, 1].

    `source` is either
    - a path to an audio file (wav, mp3, flac, m4a/aac, ogg, ...) or to a video file, whose first audio
      stream is used; any sample rate, channel count and sample format;
    - a waveform array or tensor: [S] (mono), or 2-D with the shorter axis as channels ([C, S] or [S, C],
      at most 16 channels). Integer arrays are scaled from their full range (int16 / 32768, ...).
      `source_sample_rate` is its rate in Hz; None means it is already at `sample_rate`
      (`source_sample_rate` is ignored for files, which state their own rate).

    Channels are averaged to mono and the result is resampled with a polyphase filter
    (`scipy.signal.resample_poly`) to exactly round(S_in * sample_rate / source_rate) samples.
    Silence is valid; missing, undecodable, audio-less or empty sources raise `UserFacingError`.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if isinstance(source, (np.ndarray, torch.Tensor)):
        mono = _waveform_to_mono(source, "audio waveform")
        rate = sample_rate if source_sample_rate is None else source_sample_rate
        if rate <= 0:
            raise UserFacingError(f"source_sample_rate must be positive, got {rate}")
    else:
        mono, rate = _decode_audio_file(existing_file(source, "audio file"))
    return _resample(mono, rate, sample_rate)


def _waveform_to_mono(waveform: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """[S], [C, S] or [S, C] (shorter axis = channels), any real dtype -> float32 mono [S]."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu()
        waveform = (waveform if waveform.dtype in (torch.int16, torch.int32) else waveform.float()).numpy()
    array = np.asarray(waveform)
    if array.ndim == 2:
        if min(array.shape) > _MAX_CHANNELS:
            raise UserFacingError(
                f"{what} has shape {list(array.shape)}; pass [samples] or [channels, samples] "
                f"with at most {_MAX_CHANNELS} channels"
            )
        if array.shape[0] > array.shape[1]:  # [S, C] -> [C, S]
            array = array.T
    elif array.ndim == 1:
        array = array[None]
    else:
        raise UserFacingError(f"{what} has shape {list(array.shape)}; pass [samples] or [channels, samples]")
    if array.shape[1] == 0:
        raise UserFacingError(f"{what} is empty; pass audio with speech or singing")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise UserFacingError(f"{what} has dtype {array.dtype}; pass float or integer samples")
    mono = _pcm_to_float(array).mean(axis=0, dtype=np.float64).astype(np.float32)
    return _finite_samples(mono, what)


def _finite_samples(mono: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(mono).all():
        raise UserFacingError(f"{what} contains NaN or infinite samples; pass audio with finite samples")
    return mono


def _pcm_to_float(array: np.ndarray) -> np.ndarray:
    """Integer PCM -> float in [-1, 1) (full-scale int16 is 32768); floats pass through."""
    if not np.issubdtype(array.dtype, np.integer):
        return array
    info = np.iinfo(array.dtype)
    if info.min == 0:  # unsigned PCM (8-bit wav) is centred on the middle of its range
        half = (int(info.max) + 1) // 2
        return (array.astype(np.float64) - half) / half
    return array.astype(np.float64) / (int(info.max) + 1)


def _decode_audio_file(path: Path) -> tuple[np.ndarray, int]:
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise UserFacingError(f"{path.name} has no audio stream; {_AUDIO_HINT}")
            mono, rate = _decode_audio_stream(container, container.streams.audio[0], path.name)
    except av.FFmpegError as error:
        raise UserFacingError(
            f"cannot decode audio file {path.name} ({_one_line(error)}); {_AUDIO_HINT}"
        ) from None
    return _finite_samples(mono, path.name), rate


def _decode_audio_stream(container: Any, stream: Any, name: str) -> tuple[np.ndarray, int]:
    """Decode one audio stream of an open container to mono float32 [S] and its sample rate in Hz."""
    pieces: list[np.ndarray] = []
    rate: int | None = None
    last_samples = 0
    for frame in container.decode(stream):
        if rate is None:
            rate = frame.sample_rate
        elif frame.sample_rate != rate:
            raise UserFacingError(f"{name} changes sample rate mid-stream; convert it to a plain wav first")
        samples = frame.to_ndarray()
        if not frame.format.is_planar:  # packed: [1, S * C] interleaved
            samples = samples.reshape(-1, frame.layout.nb_channels).T
        # Average per frame so a long file never holds all its channels in memory.
        pieces.append(_pcm_to_float(samples[:, : frame.samples]).mean(axis=0).astype(np.float32))
        last_samples = frame.samples
    mono = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if rate is None or mono.size == 0:
        raise UserFacingError(f"{name} contains no audio samples; {_AUDIO_HINT}")
    # Decoders return whole codec frames; AAC pads the last one. The container's declared duration
    # (an MP4 edit list) says where the real audio ends, so drop that padding but never real audio.
    if stream.duration and stream.time_base:
        declared = round(stream.duration * stream.time_base * rate)
        if 0 < mono.size - declared < last_samples:
            mono = mono[:declared]
    return mono, rate


def _resample(mono: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    target = round(mono.size * target_rate / rate)
    if rate != target_rate:
        divisor = gcd(int(rate), int(target_rate))
        # resample_poly returns ceil(S * up / down) samples; the slice makes it round(...).
        mono = resample_poly(mono, target_rate // divisor, int(rate) // divisor)[:target]
    return np.ascontiguousarray(mono, dtype=np.float32)


# ----------------------------------------------------------------------------------------------- image


def load_image(source: str | os.PathLike[str] | Image.Image | np.ndarray) -> Image.Image:
    """Load the reference image as an 8-bit RGB `PIL.Image`.

    `source` is a path, a PIL image, or an array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] of uint8
    (0..255), uint16 (0..65535) or float (0..1). The EXIF orientation is applied, transparency is
    composited onto white, and grayscale, palette, CMYK and 16-bit images are converted to RGB.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _array_to_image(source)
    elif isinstance(source, (str, os.PathLike)):
        path = existing_file(source, "image file")
        try:
            with Image.open(path) as opened:
                opened.load()  # read now, so truncated files fail here and the file handle is closed
                image = opened
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise UserFacingError(
                f"cannot read image file {path.name} ({_one_line(error)}); {_IMAGE_HINT}"
            ) from None
    else:
        raise TypeError(f"load_image takes a path, PIL image or numpy array, not {type(source).__name__}")
    if image.width == 0 or image.height == 0:
        raise UserFacingError(f"the image is empty ({image.width}x{image.height} pixels); {_IMAGE_HINT}")
    return _to_rgb(ImageOps.exif_transpose(image))


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise UserFacingError(
            f"image array has shape {list(array.shape)}; pass [H, W], [H, W, 3] or [H, W, 4]"
        )
    if array.size == 0:
        raise UserFacingError(f"the image array is empty (shape {list(array.shape)}); {_IMAGE_HINT}")
    if array.dtype == np.uint16:
        array = (array / 257.0).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < -1e-3 or array.max() > 1 + 1e-3:
            raise UserFacingError(
                "a float image array must hold values in [0, 1]; scale it (e.g. / 255) first"
            )
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise UserFacingError(f"image array has dtype {array.dtype}; pass uint8 (0..255) or float (0..1)")
    return Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integer or float grayscale
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and values.max(initial=0) <= 1:
            values = values * 255
        elif image.mode != "F" and (image.mode.startswith("I;16") or values.max(initial=0) > 255):
            values = values / 257  # 16-bit data (PNG 16-bit gray opens as I;16 or I)
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # convert() copies, so the caller's image is never modified


# ----------------------------------------------------------------------------------------------- video


class VideoWriter:
    """Stream frames into an MP4 (H.264 yuv420p, constant frame rate) with optional AAC audio.

    Use as a context manager::

        with VideoWriter("out.mp4", fps=25, audio=wave, audio_sample_rate=16000) as writer:
            for chunk in chunks:
                writer.write(chunk)  # [T, H, W, 3]

    Frames are encoded as they arrive, so they never pile up in memory. The audio (mono [S] or
    [C, S] at `audio_sample_rate` Hz, as `load_audio` takes it) is encoded alongside and, on close,
    cut or padded with silence to exactly the video's duration (frames / fps). The file is written
    as `.<name>.<random>.partial.mp4` in the destination folder and renamed to `path` only when
    `close()` succeeds; after an error inside the `with` block (Ctrl-C and, under `wan.cli.run_cli`,
    SIGTERM included), or if the writer is dropped without closing, the partial file is deleted and
    `path` is left untouched. A process killed outright (SIGKILL, power cut) leaves its partial file
    behind; the next writer to the same `path` deletes it (see `remove_stale_partials`). The container
    is always MP4, with `+faststart` (index at the front) so players can start before the whole file is read.
    The encode is deterministic: the same frames and audio give the same bytes.

    With `frames_dir`, every frame is also saved there as `frame_000000.png`, `frame_000001.png`, ...
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: int | Fraction = 25,
        audio: np.ndarray | torch.Tensor | None = None,
        audio_sample_rate: int = SAMPLE_RATE,
        frames_dir: str | os.PathLike[str] | None = None,
        crf: int = 18,
    ) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps)
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.frames_dir = Path(frames_dir) if frames_dir is not None else None
        self.frame_count = 0
        self._audio = (
            None if audio is None else np.clip(_waveform_to_mono(audio, "audio for the video"), -1, 1)
        )
        self._audio_rate = audio_sample_rate
        self._audio_sent = 0  # samples handed to the AAC encoder so far
        self._closed = False
        self._force_keyframe = False  # the next frame is encoded as a keyframe

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.frames_dir is not None:
            self.frames_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.path)
        # Same folder as the target, so os.replace is an atomic rename; the random part keeps two
        # writers aimed at one path apart.
        self._partial = self._output_file()
        self._lock = _create_locked(self._partial) if self._partial != self.path else None
        try:
            self._container = av.open(str(self._partial), "w", format="mp4", options=self._mp4_options())
        except BaseException:
            _discard_partial(None, self._partial, self._lock)
            raise
        # Deletes the partial file if the writer is aborted or garbage-collected before close().
        self._discard = weakref.finalize(self, _discard_partial, self._container, self._partial, self._lock)
        # PyAV needs every stream before the first packet is muxed, so both are added now; the video
        # size is filled in by the first write().
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.pix_fmt = "yuv420p"
        # x264 picks its thread count from the CPUs it may use, and the count changes the bytes; fixed, the
        # same frames and audio give the same file whatever the machine (with the same FFmpeg build).
        self._video.options = {"crf": str(crf), "threads": str(X264_THREADS), **self._x264_options()}
        # RGB->YUV below uses the BT.601 matrix (limited range); say so, or players guess BT.709 for HD.
        self._video.codec_context.colorspace = 6  # SMPTE 170M (BT.601)
        self._video.codec_context.color_primaries = 6
        self._video.codec_context.color_trc = 6
        self._video.codec_context.color_range = 1  # limited ("tv") range
        self._audio_stream = None
        if self._audio is not None:
            self._audio_stream = self._container.add_stream("aac", rate=audio_sample_rate, layout="mono")

    def _output_file(self) -> Path:
        """Where the container is written while frames arrive."""
        return self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.partial.mp4")

    def _mp4_options(self) -> dict[str, str]:
        return {"movflags": "+faststart"}

    def _x264_options(self) -> dict[str, str]:
        return {}

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: np.ndarray | torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """Encode frames [T, H, W, 3] (or one frame [H, W, 3]) now.

        uint8 frames are used as they are (0..255). Float frames (numpy or torch, any device) are mapped
        from `value_range` to 0..255 and clipped: (0, 1) by default, pass (-1, 1) for raw VAE output.
        Width and height must be even (H.264 yuv420p) and the same for every frame.
        """
        if self._closed:
            raise RuntimeError("VideoWriter.write() called after close()")
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu()
            frames = (frames if frames.dtype == torch.uint8 else frames.float()).numpy()
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise UserFacingError(f"video frames have shape {list(frames.shape)}; pass [T, H, W, 3] (RGB)")
        if frames.dtype != np.uint8 and not np.issubdtype(frames.dtype, np.floating):
            raise UserFacingError(f"video frames have dtype {frames.dtype}; pass uint8 or float frames")
        if frames.shape[0]:
            self._set_size(frames.shape[2], frames.shape[1])
        low, high = value_range
        for frame in frames:  # convert one frame at a time: a float batch copy would double memory
            if frame.dtype != np.uint8:
                if not np.isfinite(frame).all():
                    raise UserFacingError(f"video frame {self.frame_count} contains NaN or infinite values")
                frame = (np.clip((frame - low) / (high - low), 0, 1) * 255).round().astype(np.uint8)
            frame = np.ascontiguousarray(frame)
            if self.frames_dir is not None:
                Image.fromarray(frame).save(self.frames_dir / f"frame_{self.frame_count:06d}.png")
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = self.frame_count, 1 / self.fps
            if self._force_keyframe:
                video_frame.pict_type = av.video.frame.PictureType.I
                self._force_keyframe = False
            self._mux(self._video.encode(video_frame))
            self.frame_count += 1
            self._encode_audio(final=False)  # after every frame: the two streams stay interleaved

    def close(self) -> None:
        """Finish encoding, mux the audio (cut or padded to frames / fps) and move the file to `path`."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.frame_count == 0:
                raise UserFacingError(f"no video frames were written, so {self.path} was not created")
            self._encode_audio(final=True)
            self._mux(self._video.encode(None))
            if self._audio_stream is not None:
                self._mux(self._audio_stream.encode(None))
            self._container.close()
        except BaseException:
            self._discard()
            raise
        if self._partial != self.path:
            os.replace(self._partial, self.path)
        self._discard.detach()
        if self._lock is not None:
            os.close(self._lock)

    def abort(self) -> None:
        """Stop without creating `path`; the partial file is deleted."""
        self._closed = True
        self._discard()

    def _set_size(self, width: int, height: int) -> None:
        if self.frame_count == 0:
            if width % 2 or height % 2:
                raise UserFacingError(
                    f"video frames are {width}x{height} pixels, but H.264 (yuv420p) needs an even width "
                    "and height; crop or resize the reference image to even sizes"
                )
            self._video.width, self._video.height = width, height
        elif (width, height) != (self._video.width, self._video.height):
            raise UserFacingError(
                f"video frame size changed from {self._video.width}x{self._video.height} to {width}x{height}; "
                "all frames of one video must be the same size"
            )

    def _encode_audio(self, final: bool) -> None:
        """Feed the encoder the audio up to the current video time, so the two streams interleave."""
        if self._audio_stream is None:
            return
        end = round(self.frame_count / self.fps * self._audio_rate)  # exact: fps is a Fraction
        frame_size = self._audio_stream.codec_context.frame_size or 1024
        # AAC takes whole frames of `frame_size` samples; only the very last one may be shorter.
        while end - self._audio_sent >= frame_size or (final and end > self._audio_sent):
            count = min(frame_size, end - self._audio_sent)
            chunk = self._audio_samples(self._audio_sent, count)[None]
            audio_frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            audio_frame.sample_rate = self._audio_rate
            # Real timestamps let the muxer write an edit list that hides the encoder's priming samples.
            audio_frame.pts, audio_frame.time_base = self._audio_sent, Fraction(1, self._audio_rate)
            self._mux(self._audio_stream.encode(audio_frame))
            self._audio_sent += count

    def _audio_samples(self, start: int, count: int) -> np.ndarray:
        """`[count]` float32 samples of the audio from `start`, silence past its end."""
        chunk = np.zeros(count, np.float32)
        given = self._audio[start : start + count]
        chunk[: given.size] = given
        return chunk

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            self._container.mux(packet)


class FragmentedVideoWriter(VideoWriter):
    """A `VideoWriter` for live output: a fragmented MP4 that players can read while it grows.

    A fragment goes to disk as soon as a frame's duration is waiting (x264 `zerolatency`: no frame is held
    back by the encoder), so after each `write` the file on disk is a valid MP4 holding every frame written
    so far but the last two (the muxer writes a sample once the next one arrives; measured in
    tests/test_streaming_output.py), with their audio. The file is written at `path` itself, not renamed at the end: the point is to read it while it
    grows; `close()` finishes it, and after an error the frames written so far stay a valid video.

    The audio arrives with the frames: `write(frames, audio=samples)` (mono at `audio_sample_rate`), or pass
    `audio` up front as for `VideoWriter`. Samples already encoded are dropped, so memory stays flat.
    `keyframe_every_write` starts each write with a keyframe, so a viewer can join at any window; a write's
    `keyframe` argument overrides it (e.g. a keyframe per window when a window comes in several writes).
    """

    def __init__(
        self, path: str | os.PathLike[str], *args: Any, keyframe_every_write: bool = True, **kwargs: Any
    ):
        self._keyframe_every_write = keyframe_every_write
        self._audio_offset = 0  # sample index of self._audio[0]
        super().__init__(path, *args, **kwargs)
        if self._audio is None and self._audio_stream is None:
            self._audio = np.zeros(0, np.float32)
            self._audio_stream = self._container.add_stream("aac", rate=self._audio_rate, layout="mono")
        self._discard.detach()  # a stream cut short keeps what it has written

    def _output_file(self) -> Path:
        return self.path

    def _mp4_options(self) -> dict[str, str]:
        # A fragment as soon as one frame's worth (40 ms at 25 fps) is waiting; max_interleave_delta: mux
        # each packet at once instead of holding the video until the audio catches up. (frag_every_frame
        # misplaces the timestamps of a video sample flushed after an audio one.)
        return {
            "movflags": "empty_moov+default_base_moof",
            "frag_duration": str(round(1_000_000 / self.fps)),
            "flush_packets": "1",
            "max_interleave_delta": "1",
        }

    def _x264_options(self) -> dict[str, str]:
        return {"tune": "zerolatency"}

    def write(
        self,
        frames: np.ndarray | torch.Tensor,
        value_range: tuple[float, float] = (0.0, 1.0),
        audio: np.ndarray | torch.Tensor | None = None,
        keyframe: bool | None = None,
    ) -> None:
        """Encode frames `[T, H, W, 3]` and the audio that goes with them, then flush the file; `keyframe`:
        whether the first frame is a keyframe (None: `keyframe_every_write`)."""
        if audio is not None and len(audio):
            samples = np.clip(_waveform_to_mono(audio, "audio for the video"), -1, 1)
            self._audio = np.concatenate([self._audio, samples])
        self._force_keyframe = self._keyframe_every_write if keyframe is None else keyframe
        super().write(frames, value_range)
        keep = self._audio_sent - self._audio_offset
        self._audio, self._audio_offset = self._audio[keep:], self._audio_sent

    def _audio_samples(self, start: int, count: int) -> np.ndarray:
        return super()._audio_samples(start - self._audio_offset, count)

    def _mux(self, packets: list[Any]) -> None:
        # A fragment per frame is written before the next packet exists, so its duration must be on it.
        for packet in packets:
            if not packet.duration and packet.stream is self._video:
                packet.duration = round(1 / (self.fps * packet.time_base))
        super()._mux(packets)

    def abort(self) -> None:
        """Stop; the frames written so far stay a valid file."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._container.close()


def _discard_partial(container: Any, partial: Path, lock: int | None) -> None:
    # The file is deleted anyway; a half-written container may refuse to close cleanly.
    with contextlib.suppress(Exception):
        container.close()
    partial.unlink(missing_ok=True)
    if lock is not None:
        os.close(lock)


STALE_PARTIAL_SECONDS = 60.0


def _create_locked(path: Path) -> int:
    """Create `path` and hold an exclusive lock on it until the returned descriptor is closed.

    The system drops the lock when the process ends however it ends (SIGKILL too), so a partial file
    nobody holds a lock on belongs to no running writer.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with contextlib.suppress(OSError):  # a filesystem without locks: remove_stale_partials keeps the file
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return descriptor


def remove_stale_partials(path: str | os.PathLike[str], min_age: float = STALE_PARTIAL_SECONDS) -> list[Path]:
    """Delete the partial files `VideoWriter`s for `path` left behind when killed; return what was deleted.

    Only files beside `path` named exactly `.<stem>.<8 lowercase hex digits>.partial.mp4` are considered, and
    one is deleted only when no running writer holds its lock (a `VideoWriter` locks its partial file until
    it closes) and it has not changed for `min_age` seconds (room for a writer that has created its file but
    not yet locked it). On a filesystem without file locks nothing is deleted.
    """
    path = Path(path)
    name = re.compile(rf"\.{re.escape(path.stem)}\.[0-9a-f]{{8}}\.partial\.mp4")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.stem)}.*.partial.mp4"):
        if not name.fullmatch(candidate.name):
            continue
        with contextlib.suppress(OSError):  # held by a writer (BlockingIOError), gone meanwhile, no locks...
            descriptor = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                status = os.fstat(descriptor)
                if stat.S_ISREG(status.st_mode) and time.time() - status.st_mtime >= min_age:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    candidate.unlink()
                    removed.append(candidate)
            finally:
                os.close(descriptor)
    return removed


def read_video_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a video file by decoding it.

    Returns {"frames": int (decoded frame count), "fps": float, "width": int, "height": int,
    "duration": float (frames / fps, seconds), "has_audio": bool, "audio_duration": float (seconds of
    decoded audio, 0.0 without audio), "audio_sample_rate": int | None (Hz)}.
    """
    path = existing_file(path, "video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserFacingError(f"{path.name} has no video stream; pass a video file")
            video = container.streams.video[0]
            frames = sum(1 for _ in container.decode(video))
            fps = float(video.guessed_rate or video.average_rate or 0)
            info: dict[str, Any] = {
                "frames": frames,
                "fps": fps,
                "width": video.codec_context.width,
                "height": video.codec_context.height,
                "duration": frames / fps if fps else 0.0,
                "has_audio": bool(container.streams.audio),
                "audio_duration": 0.0,
                "audio_sample_rate": None,
            }
        if info["has_audio"]:
            mono, rate = _decode_audio_file(path)
            info["audio_duration"], info["audio_sample_rate"] = mono.size / rate, rate
    except av.FFmpegError as error:
        raise UserFacingError(f"cannot decode video file {path.name} ({_one_line(error)})") from None
    return info
