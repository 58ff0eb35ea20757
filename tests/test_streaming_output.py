"""Streamed output: the fragmented mp4 is a valid video after every piece handed out; `inference.py --stream`
reads audio from a file or raw PCM on stdin."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import soundfile

from wan.cli import run_cli
from wan.generate import main
from wan.media import FragmentedVideoWriter, read_video_info
from wan.pipeline.tiny import build_tiny_pipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "case-1"
SMALL = dict(height=32, width=32, num_inference_steps=1, clip_length=13, overlap=1, seed=3, prompt="talking")
SMALL_FLAGS = [
    "--width",
    "32",
    "--height",
    "32",
    "--sample_steps",
    "1",
    "--clip_sample_n_frames",
    "13",
    "--overlap_window_length",
    "1",
    "--seed",
    "7",
]
# The muxer writes a sample once the next one has arrived, so the last frames of a write reach the file
# with the next write (or close): measured, 2 at 25 fps.
FRAMES_IN_FLIGHT = 2


def _parse(path: Path) -> dict:
    """Decode what is on disk now: frame count, presentation times (s), decoded audio seconds."""
    with av.open(str(path)) as container:
        times = [float(frame.time) for frame in container.decode(container.streams.video[0])]
    with av.open(str(path)) as container:
        audio = sum(frame.samples for frame in container.decode(container.streams.audio[0])) / 16000
    return {"frames": len(times), "times": times, "audio": audio}


def test_streamed_mp4_is_valid_after_every_piece(tmp_path) -> None:
    """Checked after every piece (a latent frame's 1 or 4 frames), so also at every window boundary."""
    pipe = build_tiny_pipeline(seed=0)
    speech, rate = soundfile.read(EXAMPLE / "audio.wav", dtype="float32", frames=16000 * 2)
    assert rate == 16000
    chunks = (speech[i : i + 700] for i in range(0, len(speech), 700))
    path = tmp_path / "live.mp4"
    written, checked = 0, 0
    with FragmentedVideoWriter(path, fps=25) as writer:
        for piece in pipe.stream(np.full((64, 64, 3), 90, np.uint8), chunks, **SMALL):
            writer.write(piece.frames, value_range=(-1.0, 1.0), audio=piece.audio)
            written += len(piece.frames)
            snapshot = tmp_path / f"after-frame-{written}.mp4"
            shutil.copy(path, snapshot)  # what a player reading the growing file sees now
            seen = _parse(snapshot)
            assert written - FRAMES_IN_FLIGHT <= seen["frames"] <= written
            assert np.allclose(np.diff(seen["times"]), 1 / 25), "frames are evenly timed"
            assert seen["audio"] >= (seen["frames"] - 2) / 25 - 0.07  # the audio is there too (AAC frames)
            checked += 1
    assert checked == len(range(0, 50 - 1, 4)) + 1  # a piece per latent frame: 1 frame, then 4 at a time
    final = read_video_info(path)
    assert final["frames"] == written == 50
    assert abs(final["audio_duration"] - 2.0) < 0.01


def _run(args: list[str], tmp_path: Path, monkeypatch, capsys, stdin: bytes = b"") -> tuple[int, str, str]:
    """`inference.py` in this process (a fresh interpreter costs more than the run); stdin is `stdin`."""
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(stdin)))
    code = run_cli(main, ["--random_tiny_model", *SMALL_FLAGS, "--output_dir", str(tmp_path), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inference_stream_from_stdin_pcm_and_from_a_file(tmp_path, monkeypatch, capsys) -> None:
    speech, _ = soundfile.read(EXAMPLE / "audio.wav", dtype="int16", frames=int(16000 * 1.5))
    reference = ["--validation_reference_path", str(EXAMPLE / "reference.png")]
    code, out, err = _run(
        [*reference, "--validation_driven_audio_path", "-", "--stream"],
        tmp_path,
        monkeypatch,
        capsys,
        speech.tobytes(),
    )
    assert code == 0, err[-2000:]
    assert "window 1:" in out and "window 2:" in out
    info = read_video_info(tmp_path / "video_with_audio.mp4")
    assert info["frames"] == 37 and info["has_audio"] and abs(info["audio_duration"] - 37 / 25) < 0.01

    soundfile.write(tmp_path / "speech.wav", speech, 16000)
    args = [*reference, "--validation_driven_audio_path", str(tmp_path / "speech.wav"), "--stream"]
    code, _, err = _run([*args, "--output_name", "file.mp4"], tmp_path, monkeypatch, capsys)
    assert code == 0, err[-2000:]
    assert read_video_info(tmp_path / "file.mp4")["frames"] == 37


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--validation_driven_audio_path", "-"], "needs --stream"),
        (["--validation_driven_audio_path", "-", "--stream", "--save_frames"], "not available with --stream"),
        (["--validation_driven_audio_path", "-", "--stream"], "shorter than one video frame"),  # empty stdin
    ],
)
def test_stream_flags_and_empty_stdin_say_what_to_do(tmp_path, monkeypatch, capsys, args, message) -> None:
    code, _, err = _run(
        ["--validation_reference_path", str(EXAMPLE / "reference.png"), *args], tmp_path, monkeypatch, capsys
    )
    assert code == 2 and message in err and "Traceback" not in err


def test_fragmented_writer_starts_a_write_with_a_keyframe_only_when_asked(tmp_path) -> None:
    """--stream writes a latent frame at a time but asks for a keyframe only at each window's first piece."""
    path = tmp_path / "keys.mp4"
    frames = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    with FragmentedVideoWriter(path, fps=25) as writer:
        for keyframe in (True, False, False, True, None):  # None: the writer's default, a keyframe
            writer.write(frames, audio=np.zeros(4 * 640, np.float32), keyframe=keyframe)
    with av.open(str(path)) as container:
        keys = [frame.key_frame for frame in container.decode(container.streams.video[0])]
    assert len(keys) == 20
    assert [index for index, key in enumerate(keys) if key] == [0, 12, 16]
