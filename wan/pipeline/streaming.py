"""Streaming generation: audio in as chunks of any size, video out latent frame by latent frame.

The windows-outer sampler (`WindowsOuterSampler`) makes frames final one window at a time (the last overlap
frames, which the next window blends, one window later), and the Wan VAE's causal decoder turns final latent
frames into pixels without looking ahead (`StreamingDecoder`), so a window's first frames can be shown as
soon as its audio has arrived, it is denoised and one latent frame is decoded.

Audio features: the project computes wav2vec2 features per window, from that window's audio alone
(normalised, convolved and attended over the window only), so a window's features need exactly its own
samples: once they have arrived, the features equal those of the whole file (`AudioStream`). Noise is drawn
latent frame by latent frame (`FrameNoise`), so it does not depend on the video's length, which a stream does
not know until it ends. The result: the streamed video equals `pipeline(..., sampling_order="windows")` on
the whole audio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..errors import UserFacingError
from ..generation_settings import SAMPLE_RATE
from ..media import load_audio
from .windows import FRAMES_PER_LATENT, Window, latent_frames_for_video, plan_windows, window_audio_span


def window_waveform(
    waveform: np.ndarray, window: Window, samples_per_frame: int, offset: int = 0
) -> np.ndarray:
    """The window's audio `[FRAMES_PER_LATENT * window.length * samples_per_frame]`, silence past
    the end of `waveform`; `offset` is the sample index of `waveform[0]` in the whole audio."""
    start, length = window_audio_span(window, samples_per_frame)
    chunk = np.zeros(length, dtype=np.float32)
    piece = waveform[max(start - offset, 0) : start - offset + length]
    chunk[: len(piece)] = piece
    return chunk


def pcm_chunks(stream: BinaryIO, chunk_samples: int = 1600) -> Iterator[np.ndarray]:
    """Raw 16-bit little-endian mono PCM (e.g. 16 kHz from stdin) as float32 chunks of up to
    `chunk_samples` samples, each as soon as it has arrived; ends with the stream."""
    leftover = b""
    while True:
        data = stream.read(2 * chunk_samples)
        if not data:
            break
        data = leftover + data
        whole = len(data) // 2 * 2
        leftover = data[whole:]
        if whole:
            yield np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0


def file_chunks(source: str | Path | np.ndarray, chunk_samples: int = 1600) -> Iterator[np.ndarray]:
    """An audio file (any format `load_audio` reads) or a 16 kHz waveform, as 16 kHz mono chunks of
    `chunk_samples`."""
    waveform = load_audio(source, SAMPLE_RATE)
    for start in range(0, len(waveform), chunk_samples):
        yield waveform[start : start + chunk_samples]


class AudioStream:
    """Collects 16 kHz mono audio arriving in chunks of any size and hands out each window's audio once it
    has arrived; samples no later window needs are dropped, so memory stays flat however long the stream.

    Args:
        chunks: arrays or tensors of samples (float in [-1, 1] or integer PCM; [S] or [C, S]) at 16 kHz.
        samples_per_frame: audio samples per video frame (SAMPLE_RATE / fps).
    """

    def __init__(self, chunks: Iterable[np.ndarray | torch.Tensor], samples_per_frame: int) -> None:
        self._chunks = iter(chunks)
        self.samples_per_frame = samples_per_frame
        self._buffer = np.zeros(0, np.float32)
        self._offset = 0  # sample index of _buffer[0]
        self.ended = False
        self.first_sample_time: float | None = None  # time.monotonic() when the first chunk arrived

    @property
    def received(self) -> int:
        """Samples received so far."""
        return self._offset + len(self._buffer)

    def pull(self) -> bool:
        """Take the next chunk; False (and `ended`) when the stream is over."""
        if self.ended:
            return False
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.ended = True
            return False
        if chunk is None or len(chunk) == 0:
            return True
        samples = load_audio(chunk, SAMPLE_RATE)  # checks shape, dtype and values; integer PCM scaled
        if self.first_sample_time is None:
            self.first_sample_time = time.monotonic()
        self._buffer = np.concatenate([self._buffer, samples])
        return True

    def wait_for(self, end_sample: int) -> bool:
        """Pull chunks until `end_sample` samples have arrived (True) or the stream ends first (False)."""
        while self.received < end_sample:
            if not self.pull():
                return False
        return True

    def window(self, window: Window) -> np.ndarray:
        """The window's audio (`window_waveform`); its samples must have arrived, or the stream ended."""
        start, length = window_audio_span(window, self.samples_per_frame)
        if start < self._offset or (start + length > self.received and not self.ended):
            raise ValueError(f"audio of {window} is not in the buffer")
        return window_waveform(self._buffer, window, self.samples_per_frame, self._offset)

    def samples(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) (silence past the end of the stream)."""
        chunk = np.zeros(end - start, np.float32)
        piece = self._buffer[start - self._offset : end - self._offset]
        chunk[: len(piece)] = piece
        return chunk

    def drop_before(self, sample: int) -> None:
        """Forget samples before `sample`."""
        cut = min(max(sample - self._offset, 0), len(self._buffer))
        self._buffer = self._buffer[cut:]
        self._offset += cut


class FrameNoise:
    """Initial noise `[1, C, 1, h, w]` per latent frame, drawn in frame order from one seeded CPU generator,
    so frame k's noise is the same whatever the video's length (which a stream does not know in advance)."""

    def __init__(self, seed: int, channels: int, height: int, width: int) -> None:
        self._generator = torch.Generator("cpu").manual_seed(seed)
        self._shape = (1, channels, 1, height, width)
        self._frames: dict[int, torch.Tensor] = {}
        self._next = 0

    def frames(self, start: int, end: int) -> torch.Tensor:
        """`[1, C, end - start, h, w]` noise of latent frames [start, end); frames before `start` are forgotten."""
        while self._next < end:
            self._frames[self._next] = torch.randn(self._shape, generator=self._generator)
            self._next += 1
        for index in [k for k in self._frames if k < start]:
            del self._frames[index]
        return torch.cat([self._frames[k] for k in range(start, end)], dim=2)


@dataclass
class StreamedFrames:
    """The video frames of one latent frame, handed out as soon as the VAE has decoded them.

    frames: `[T, H, W, 3]` float32 in [-1, 1] (1 frame for the video's first latent frame, 4 after, fewer at
        the end). first_frame: index of frames[0] in the video.
    audio: the 16 kHz samples of these frames `[T * samples_per_frame]`.
    latents: `[1, 16, 1, h, w]` the final latent frame these frames decode from.
    window: index of the window whose denoising made them final. window_piece, window_pieces: this piece's
        index among that window's pieces, and their number (a consumer can group them per window).
    latency: seconds from the first audio sample's arrival to these frames.
    """

    frames: torch.Tensor
    first_frame: int
    audio: np.ndarray
    latents: torch.Tensor
    window: int
    window_piece: int
    window_pieces: int
    latency: float

    @property
    def ends_window(self) -> bool:
        """The window's last piece."""
        return self.window_piece == self.window_pieces - 1


def streaming_windows(
    audio: AudioStream, window_length: int, overlap: int
) -> Iterator[tuple[Window, bool, int | None]]:
    """The windows of the whole audio's plan (`plan_windows`), each as soon as its audio has arrived.

    A window at its regular place (start k * stride) belongs to the plan of every audio that covers its
    audio span, so it can go before the stream ends; the rest (the last, aligned to the end) follow the end.
    Yields (window, is_last, video frames of the whole audio when known else None).
    """
    samples_per_latent = FRAMES_PER_LATENT * audio.samples_per_frame
    stride = window_length - overlap
    done = 0
    start = 0
    while audio.wait_for((start + window_length) * samples_per_latent):
        yield Window(start, start + window_length, 0 if start == 0 else overlap), False, None
        done += 1
        start += stride
    num_frames = audio.received // audio.samples_per_frame
    if num_frames < 1:
        raise UserFacingError(
            f"the audio stream ended after {audio.received} samples, shorter than one video frame "
            f"({audio.samples_per_frame} samples); stream longer audio"
        )
    windows = plan_windows(latent_frames_for_video(num_frames), window_length, overlap)
    for index, window in enumerate(windows[done:], start=done):
        yield window, index == len(windows) - 1, num_frames


def stream_latents_to_frames(
    windows: Iterator[tuple[Window, bool, int | None]],
    denoise: Callable[[Window, torch.Tensor | None], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    audio: AudioStream,
    held_frames: int = 0,
) -> Iterator[StreamedFrames]:
    """Denoise each window (`denoise(window, known_prefix) -> [1, 16, F, h, w]` clean latents) and hand out
    the latent frames that became final, one at a time as `decode` (a causal decoder: `[1, 16, 1, h, w]` ->
    `[1, 3, T, H, W]`) turns them into pixels, with their audio.

    The last `held_frames` latent frames of every window but the last are final only after the next window
    (which blends them), so they go out with the next window's frames.
    """
    spf = audio.samples_per_frame
    recent = None  # the last window's clean latents
    recent_start = 0
    final_latents = 0  # latent frames already handed out
    frames_out = 0
    for index, (window, is_last, num_frames) in enumerate(windows):
        known = None
        if window.overlap:
            known = recent[:, :, window.start - recent_start : window.start - recent_start + window.overlap]
        latents = denoise(window, known)
        recent, recent_start = latents, window.start
        end = window.end if is_last else window.end - held_frames
        new = latents[:, :, final_latents - window.start : end - window.start]
        final_latents = end
        for piece in range(new.shape[2]):
            pixels = decode(new[:, :, piece : piece + 1])[0].permute(1, 2, 3, 0)  # [T, H, W, 3]
            if is_last:
                pixels = pixels[: num_frames - frames_out]
            audio_piece = audio.samples(frames_out * spf, (frames_out + len(pixels)) * spf)
            started = audio.first_sample_time or time.monotonic()
            yield StreamedFrames(
                pixels,
                frames_out,
                audio_piece,
                new[:, :, piece : piece + 1],
                index,
                piece,
                new.shape[2],
                time.monotonic() - started,
            )
            frames_out += len(pixels)
        # the next window's audio starts at the earliest one latent frame after this one's start
        audio.drop_before(min(frames_out, FRAMES_PER_LATENT * (window.start + 1)) * spf)
