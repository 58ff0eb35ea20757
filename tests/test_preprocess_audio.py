"""audio_extractor.py and stereo decoding on real speech (espeak-ng) muxed into real mp4 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.preprocess_media import FPS, RATE, face_frames, speech, speech_samples, write_video
from wan.cli import run_cli
from wan.media import load_audio
from wan.preprocess.audio import load_stereo, write_wav
from wan.preprocess.cli import audio_extractor_main

FRAMES = 50  # 2.0 s at 25 fps


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """An mp4 of 50 frames with 2 s of speech, and that speech (16 kHz mono)."""
    folder = tmp_path_factory.mktemp("audio")
    audio = speech_samples(folder, FRAMES / FPS)
    return write_video(folder / "talk.mp4", face_frames(64, 64, FRAMES), audio), audio


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def test_extracts_16k_mono_wav_as_long_as_the_video(clip, tmp_path, capsys) -> None:
    video, audio = clip
    out = tmp_path / "out" / "audio.wav"
    assert run_cli(audio_extractor_main, ["--video_path", str(video), "--saved_audio_path", str(out)]) == 0
    info = soundfile.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert abs(info.duration - FRAMES / FPS) < 1e-3  # the mp4's audio ends with its last frame
    samples, _ = soundfile.read(str(out), dtype="float32")
    assert _correlation(samples, audio) > 0.97  # the same speech, through AAC and back
    assert "2.00 s, 16000 Hz mono" in capsys.readouterr().out


def test_sample_rate_flag(clip, tmp_path) -> None:
    out = tmp_path / "audio_22k.wav"
    argv = ["--video_path", str(clip[0]), "--saved_audio_path", str(out), "--sample_rate", "22050"]
    assert run_cli(audio_extractor_main, argv) == 0
    info = soundfile.info(str(out))
    assert info.samplerate == 22050 and abs(info.duration - FRAMES / FPS) < 1e-3


def test_folder_mode_mirrors_the_tree_and_reports_failures(clip, tmp_path, capsys) -> None:
    videos, out = tmp_path / "videos", tmp_path / "wavs"
    (videos / "speaker_b").mkdir(parents=True)
    (videos / "a.mp4").write_bytes(clip[0].read_bytes())
    (videos / "speaker_b" / "b.mp4").write_bytes(clip[0].read_bytes())
    write_video(videos / "silent.mp4", face_frames(32, 32, 5), None)
    argv = ["--video_path", str(videos), "--saved_audio_path", str(out)]
    assert run_cli(audio_extractor_main, argv) == 1  # one video has no audio
    printed = capsys.readouterr().out
    assert "2 audio files written, 0 already there" in printed
    assert "silent.mp4" in printed and "no audio stream" in printed
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == ["a.wav", "speaker_b/b.wav"]
    assert run_cli(audio_extractor_main, argv) == 1
    assert "0 audio files written, 2 already there" in capsys.readouterr().out


def test_missing_video_is_a_one_line_error(tmp_path, capsys) -> None:
    argv = ["--video_path", str(tmp_path / "nope.mp4"), "--saved_audio_path", str(tmp_path / "a.wav")]
    assert run_cli(audio_extractor_main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not found" in err and err.count("\n") == 1


def test_load_stereo_keeps_both_channels_and_resamples(tmp_path) -> None:
    talk = load_audio(speech(tmp_path / "s.wav"), 22050)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(talk.size) / 22050).astype(np.float32)
    write_wav(tmp_path / "stereo.wav", np.stack([talk, tone]), 22050)
    stereo = load_stereo(tmp_path / "stereo.wav", 44100)
    assert stereo.shape == (2, 2 * talk.size) and stereo.dtype == np.float32
    assert _correlation(stereo[0], load_audio(talk, 44100, source_sample_rate=22050)) > 0.999
    assert abs(np.abs(stereo[1]).max() - 0.3) < 0.01  # the tone stays in its own channel
    mono = load_stereo(tmp_path / "s.wav", RATE)
    assert mono.shape[0] == 2 and np.array_equal(mono[0], mono[1])
