"""The app's live mode: microphone audio in as it is spoken, video out as it is decoded.

A `LiveSession` runs `StableAvatarPipeline.stream` in a worker thread fed by a queue of audio chunks (the
page's streaming microphone). Frames come out latent frame by latent frame (4 at a time) and are appended
to one fragmented mp4 of the whole session; whenever the page looks (`next_segment`), everything decoded
since its last look becomes a short mp4 segment with its audio, so the page shows the first frame at its
next look after it exists and no frame is skipped. A client that
goes away frees the worker: when no audio arrives for `idle_timeout` seconds (or the page is closed and the
app calls `cancel`), the stream stops, the session ends and the one-generation-at-a-time lock is released.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import UserFacingError
from ..generation_settings import SAMPLE_RATE
from ..media import FragmentedVideoWriter, VideoWriter, load_audio
from ..pipeline.pipeline import StableAvatarPipeline
from ..pipeline.streaming import StreamedFrames

logger = logging.getLogger(__name__)
_END = object()


class ClientGone(Exception):
    """No audio arrived for the idle timeout, or the session was cancelled."""


class LiveSession:
    """One live stream: audio chunks in (`push`, then `finish`), segments out (`segments`, `latency`).

    Args:
        pipeline_factory: gives the loaded pipeline (called in the worker, so loading does not block the page).
        image: the reference image.
        settings: `StableAvatarPipeline.stream` keyword arguments (size, steps, guidance, windows, seed, ...).
        folder: where the segments and the whole video go.
        lock: held while the stream runs (the app's one-generation-at-a-time lock).
        idle_timeout: seconds without audio after which the client counts as gone.
        fps: frame rate of the video.
    """

    def __init__(
        self,
        pipeline_factory: Callable[[], StableAvatarPipeline],
        image: str | Path,
        settings: dict,
        folder: Path,
        lock: threading.Lock,
        idle_timeout: float = 10.0,
        fps: int = 25,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.video_path = self.folder / "live.mp4"
        self.segments: list[Path] = []  # what the page has been given, in order
        self.latency: float | None = None  # seconds from the first audio sample to the first frame
        self.error: BaseException | None = None
        self.frames = 0
        self.accepting = True  # False once the audio has ended or the session was cancelled
        self._pending: list[StreamedFrames] = []  # decoded, not yet in a segment
        self._pending_lock = threading.Lock()
        self._factory = pipeline_factory
        self._image = image
        self._settings = settings
        self._lock = lock
        self._idle_timeout = idle_timeout
        self._fps = fps
        self._chunks: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-stream", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def push(self, sample_rate: int, samples: np.ndarray) -> None:
        """Queue a microphone chunk (any rate, mono or [S, C], integer or float samples)."""
        if samples is None or len(samples) == 0:
            return
        self._chunks.put(load_audio(np.asarray(samples), SAMPLE_RATE, int(sample_rate)))

    def finish(self) -> None:
        """The audio has ended: the last windows are generated, then the session ends."""
        self.accepting = False
        self._chunks.put(_END)

    def cancel(self) -> None:
        """Stop at the next audio chunk or window step; what was written stays."""
        self.accepting = False
        self._cancelled.set()
        self._chunks.put(_END)

    def next_segment(self) -> Path | None:
        """A segment (mp4 with audio) of every frame decoded since the last call; None when there is none."""
        with self._pending_lock:
            pieces, self._pending = self._pending, []
        if not pieces:
            return None
        segment = self.folder / f"segment_{pieces[0].first_frame:06d}.mp4"
        audio = np.concatenate([piece.audio for piece in pieces])
        with VideoWriter(segment, fps=self._fps, audio=audio) as writer:
            for piece in pieces:
                writer.write(piece.frames, value_range=(-1.0, 1.0))
        self.segments.append(segment)
        return segment

    def status(self, fps: int = 25) -> str:
        """One line for the page: latency, length so far, and any error."""
        if self.error is not None and not isinstance(self.error, ClientGone):
            return f"**Stopped:** {self.error}"
        parts = []
        if self.latency is not None:
            parts.append(f"**Latency: {self.latency:.1f} s** from the first audio sample to the first frame")
        else:
            parts.append("waiting for the first window's audio" if self.running else "no video")
        parts.append(f"{self.frames} frames ({self.frames / fps:.2f} s) so far")
        if not self.running:
            parts.append("finished")
        return " · ".join(parts)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _audio(self) -> Iterator[np.ndarray]:
        while True:
            try:
                chunk = self._chunks.get(timeout=self._idle_timeout)
            except queue.Empty:
                raise ClientGone(f"no audio for {self._idle_timeout:g} s") from None
            if self._cancelled.is_set():
                raise ClientGone("cancelled")
            if chunk is _END:
                return
            yield chunk

    def _step(self, *_: int) -> None:
        if self._cancelled.is_set():
            raise ClientGone("cancelled")

    def _run(self) -> None:
        with self._lock:
            try:
                pipeline = self._factory()
                with FragmentedVideoWriter(self.video_path, fps=self._fps) as whole:
                    for piece in pipeline.stream(
                        self._image, self._audio(), callback=self._step, **self._settings
                    ):
                        whole.write(
                            piece.frames,
                            value_range=(-1.0, 1.0),
                            audio=piece.audio,
                            keyframe=piece.window_piece == 0,
                        )
                        with self._pending_lock:
                            self._pending.append(piece)
                        self.frames += len(piece.frames)
                        self.latency = piece.latency if self.latency is None else self.latency
            except ClientGone as reason:
                logger.info("live stream stopped: %s", reason)
                self.error = reason
            except UserFacingError as error:
                self.error = error
            except Exception as error:  # shown as one line on the page, logged in full here
                logger.error("live stream failed", exc_info=error)
                self.error = error


class LiveSessions:
    """The live sessions of an app, one per browser session; starting one while another generation runs
    waits for it (the shared lock)."""

    def __init__(self, lock: threading.Lock, output_dir: Path, idle_timeout: float = 10.0) -> None:
        self._lock = lock
        self._output_dir = Path(output_dir)
        self._idle_timeout = idle_timeout
        self._sessions: dict[str, LiveSession] = {}
        self._guard = threading.Lock()

    def get(self, session: str) -> LiveSession | None:
        with self._guard:
            return self._sessions.get(session)

    def start(
        self,
        session: str,
        pipeline_factory: Callable[[], StableAvatarPipeline],
        image: str | Path,
        settings: dict,
    ) -> LiveSession:
        """A new live session for `session` (any previous one of it is cancelled)."""
        self.cancel(session)
        folder = self._output_dir / f"live-{time.strftime('%Y%m%d-%H%M%S')}-{abs(hash(session)) % 10**6:06d}"
        live = LiveSession(pipeline_factory, image, settings, folder, self._lock, self._idle_timeout)
        with self._guard:
            self._sessions[session] = live
        return live

    def cancel(self, session: str) -> bool:
        """Stop `session`'s live stream (the page was closed or Cancel pressed); False when it has none."""
        with self._guard:
            live = self._sessions.pop(session, None)
        if live is None:
            return False
        live.cancel()
        return True
