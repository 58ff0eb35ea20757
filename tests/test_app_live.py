"""The app's live mode without a browser: microphone chunks in, segments of the newest frames out, and a
client that goes away mid-stream frees the worker."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.test_app_runner import SMALL as RUNNER_SMALL
from wan.app.live import ClientGone
from wan.app.logic import make_settings
from wan.app.runner import Runner
from wan.media import read_video_info

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "case-1"
# the runner tests' settings, with 4-latent-frame windows and one step: several windows stay cheap
SMALL = {
    **RUNNER_SMALL,
    "steps": 1,
    "text_guidance": 1.0,
    "audio_guidance": 2.0,
    "clip_length": 13,
    "overlap": 1,
}


@pytest.fixture
def runner(tmp_path) -> Runner:
    return Runner(tmp_path / "no-checkpoints", tmp_path / "out", device="cpu", live_idle_timeout=2.0)


def _microphone(seconds: float) -> list[np.ndarray]:
    """The bundled speech as a browser microphone gives it: 48 kHz int16, 0.25 s chunks."""
    speech, rate = soundfile.read(EXAMPLE / "audio.wav", dtype="float32", frames=int(16000 * seconds))
    up = np.repeat(speech, 3)  # 48 kHz
    pcm = (up * 32767).astype(np.int16)
    return [pcm[i : i + 12000] for i in range(0, len(pcm), 12000)]


def _lock_is_free(runner: Runner, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if runner._run_lock.acquire(blocking=False):
            runner._run_lock.release()
            return True
        time.sleep(0.1)
    return False


def test_live_session_segments_hold_every_frame_once_and_the_whole_video(runner) -> None:
    """The page looks every so often (`next_segment`); each segment holds what was decoded since its last
    look, so together they are the whole video, in order, with nothing skipped."""
    live = runner.start_live("me", EXAMPLE / "reference.png", make_settings(**SMALL))
    for chunk in _microphone(2.0):
        live.push(48000, chunk)
    live.finish()
    given = []
    while not live.wait(0.05):
        segment = live.next_segment()
        given += [segment] if segment else []
    given += [segment] if (segment := live.next_segment()) else []
    assert live.error is None and live.latency is not None and live.latency > 0
    assert given == live.segments and len(given) >= 2 and live.next_segment() is None
    counts = [read_video_info(segment)["frames"] for segment in given]
    starts = [int(segment.stem.split("_")[1]) for segment in given]
    assert starts == np.cumsum([0, *counts[:-1]]).tolist(), "consecutive, nothing skipped"
    assert all(read_video_info(segment)["has_audio"] for segment in given)
    whole = read_video_info(live.video_path)
    assert sum(counts) == whole["frames"] == live.frames == 50 and abs(whole["audio_duration"] - 2.0) < 0.01
    assert _lock_is_free(runner, 1)


def test_client_that_disconnects_mid_stream_frees_the_worker(runner) -> None:
    live = runner.start_live("gone", EXAMPLE / "reference.png", make_settings(**SMALL))
    for chunk in _microphone(1.2):  # then nothing: the page went away without saying so
        live.push(48000, chunk)
    assert live.wait(60), "the worker must end once no audio arrives for the idle timeout"
    assert isinstance(live.error, ClientGone)
    assert _lock_is_free(runner, 1)
    # and the next generation can run
    again = runner.start_live("next", EXAMPLE / "reference.png", make_settings(**SMALL))
    for chunk in _microphone(0.6):
        again.push(48000, chunk)
    again.finish()
    assert again.wait(60) and again.error is None and again.frames == 15


def test_closing_the_page_cancels_the_stream(runner) -> None:
    live = runner.start_live("closed", EXAMPLE / "reference.png", make_settings(**SMALL))
    for chunk in _microphone(0.5):
        live.push(48000, chunk)
    assert runner.cancel("closed")  # what the page's unload event calls
    assert live.wait(30) and isinstance(live.error, ClientGone)
    assert _lock_is_free(runner, 1)
    assert not runner.cancel("closed")
