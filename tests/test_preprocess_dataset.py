"""prepare_dataset.py on real videos made here (the astronaut's face, espeak-ng speech), checked against
the layout and conventions the published trainer reads (talking_video_dataset_fantasy.py)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
from PIL import Image
from skimage import data

from tests.preprocess_media import FPS, RATE, face_frames, mdx_model, speech_samples, write_video
from wan.cli import run_cli
from wan.media import load_audio, read_video_info
from wan.preprocess.cli import prepare_dataset_main
from wan.preprocess.dataset_builder import (
    BuildOptions,
    at_rate,
    build_dataset,
    classify_aspect,
    decode_frames,
    fit_frame,
    frame_size,
    probe_video,
)
from wan.preprocess.separation import KNOWN_MDX_MODELS, MdxSeparator


def _need_mediapipe() -> None:
    """Skip a test that builds clips (face detection) when MediaPipe cannot be imported."""
    pytest.importorskip(
        "mediapipe",
        reason="MediaPipe is not installed (pip install mediapipe==0.10.14); the builder needs it",
    )


SMALL = ["--scale", "0.25", "--max_frames", "25", "--min_frames", "10"]
SIZES = {"square": (128, 128), "rec": (208, 120), "vec": (120, 208)}  # (width, height) at --scale 0.25
# What the builder must do with each raw video: clips (frames each) per resolution, or why it is dropped.
EXPECTED_CLIPS = {"rec/speech": [25, 25, 10], "vec/singing": [25], "square/speech": [25]}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw videos: landscape (60 frames), portrait in a singing/ folder (30), square (30), no face, no audio,
    too short."""
    root = tmp_path_factory.mktemp("raw")
    (root / "singing").mkdir()
    talk = speech_samples(root, 60 / FPS)

    def frames_of(n: int) -> np.ndarray:  # the speech of n frames
        return talk[: n * RATE // FPS]

    write_video(root / "a_landscape.mp4", face_frames(320, 180, 60), talk)
    write_video(root / "singing" / "b_portrait.mp4", face_frames(180, 320, 30), frames_of(30))
    write_video(root / "c_square.mp4", face_frames(256, 256, 30), frames_of(30))
    coffee = np.asarray(Image.fromarray(data.coffee()).resize((256, 192)))
    write_video(root / "d_no_face.mp4", np.stack([coffee] * 20), frames_of(20))
    write_video(root / "e_silent.mp4", face_frames(256, 256, 20), None)
    write_video(root / "f_short.mp4", face_frames(256, 256, 5), frames_of(5))
    return root


@pytest.fixture(scope="module")
def built(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The dataset built from `raw` by the command line, and what it printed."""
    _need_mediapipe()
    out = tmp_path_factory.mktemp("dataset") / "talking_face_data"
    printed = io.StringIO()
    argv = ["--video_path", str(raw), "--output_root", str(out), *SMALL]
    with contextlib.redirect_stdout(printed):
        assert run_cli(prepare_dataset_main, argv) == 0
    return out, printed.getvalue()


def _listed(out: Path) -> dict[str, list[Path]]:
    lists = {name: (out / f"video_{name}_path.txt").read_text() for name in SIZES}
    return {name: [Path(line) for line in text.splitlines()] for name, text in lists.items()}


def _frame_number(name: str) -> int:
    return int(name.split("_")[1].split(".")[0])  # how the trainer sorts frame_i.png


def test_layout_is_what_the_trainer_reads(built) -> None:
    out, _ = built
    listed = _listed(out)
    assert sum(len(paths) for paths in listed.values()) == 5
    for resolution, folders in listed.items():
        for folder in folders:
            assert folder.is_absolute() and folder.parent.parent.name == resolution
            assert folder.parent.name in ("speech", "singing")  # the trainer's prompt comes from the path
            images = sorted((folder / "images").iterdir(), key=lambda p: _frame_number(p.name))
            count = len(images)
            assert [p.name for p in images] == [f"frame_{i}.png" for i in range(count)]
            for masks in ("face_masks", "lip_masks"):
                assert sorted(p.name for p in (folder / masks).iterdir()) == sorted(p.name for p in images)
            frame, mask = Image.open(images[-1]), Image.open(folder / "lip_masks" / images[-1].name)
            assert frame.mode == "RGB" and frame.size == SIZES[resolution]
            assert mask.mode == "L" and mask.size == SIZES[resolution] and set(np.unique(mask)) <= {0, 255}
            video = read_video_info(folder / "sub_clip.mp4")
            assert (video["frames"], video["fps"], (video["width"], video["height"])) == (
                count,
                FPS,
                SIZES[resolution],
            )
            assert video["has_audio"] and abs(video["audio_duration"] - count / FPS) < 1e-3
            audio = soundfile.info(str(folder / "audio.wav"))
            assert (audio.samplerate, audio.channels, audio.frames) == (RATE, 1, count * RATE // FPS)


def test_videos_are_sorted_by_aspect_and_cut_into_clips(built, raw) -> None:
    out, _ = built
    clips: dict[str, list[int]] = {}
    for folder in sorted(out.glob("*/*/0*"), key=lambda p: p.name):
        clips.setdefault(folder.parent.relative_to(out).as_posix(), []).append(
            len(list((folder / "images").iterdir()))
        )
    assert clips == EXPECTED_CLIPS
    meta = json.loads((out / "rec" / "speech" / "00002" / "meta.json").read_text())
    assert meta == {
        "source": str((raw / "a_landscape.mp4").resolve()),
        "start_frame": 25,
        "frames": 25,
        "fps": 25.0,
        "resolution": "rec",
        "category": "speech",
    }


def test_clip_audio_is_the_span_of_its_frames(built, raw) -> None:
    out, _ = built
    source = load_audio(raw / "a_landscape.mp4", RATE)
    clip, _ = soundfile.read(str(out / "rec" / "speech" / "00002" / "audio.wav"), dtype="float32")
    np.testing.assert_allclose(clip, source[25 * 640 : 50 * 640], atol=1e-4)  # 16-bit rounding


def test_masks_mark_the_face_and_the_lips_inside_it(built) -> None:
    out, _ = built
    (folder,) = _listed(out)["vec"]
    face = np.asarray(Image.open(folder / "face_masks" / "frame_10.png")) > 0
    lips = np.asarray(Image.open(folder / "lip_masks" / "frame_10.png")) > 0
    assert 0.05 < face.mean() < 0.4 and 0.002 < lips.mean() < 0.05
    assert not (lips & ~face).any()
    rows = np.nonzero(face.any(axis=1))[0]
    lip_row = np.nonzero(lips.any(axis=1))[0].mean()
    assert rows[0] + 0.5 * (rows[-1] - rows[0]) < lip_row < rows[-1]  # the mouth is in the lower face


def test_report_says_what_was_kept_and_why_the_rest_was_dropped(built) -> None:
    _, printed = built
    assert "kept 5 clips (110 frames, 4.4 s): square 1, rec 3, vec 1" in printed
    assert "dropped 5: 1 no audio, 1 no face, 3 too short" in printed
    assert "e_silent.mp4: no audio" in printed
    assert "d_no_face.mp4: no face (frames 0-19: a face in 0 of 20 frames" in printed
    assert "f_short.mp4: too short (5 frames (0.20 s)" in printed
    assert "b_portrait.mp4: too short (frames 25-29" in printed  # the 5-frame tail


def test_a_second_run_skips_what_is_built(built, raw) -> None:
    out, _ = built
    lists = {name: (out / f"video_{name}_path.txt").read_text() for name in SIZES}
    options = BuildOptions(max_frames=25, min_frames=10, scale=0.25)
    report = build_dataset(raw / "c_square.mp4", out, options, progress=False)
    assert report.already_built == [raw / "c_square.mp4"] and not report.kept
    assert {name: (out / f"video_{name}_path.txt").read_text() for name in SIZES} == lists


def test_vocal_separation_cleans_the_clip_audio(raw, tmp_path) -> None:
    _need_mediapipe()
    pytest.importorskip("onnx", reason="the onnx package builds the test model (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="separation runs on onnxruntime (pip install onnxruntime)")
    kim = KNOWN_MDX_MODELS["Kim_Vocal_2"]
    separator = MdxSeparator(mdx_model(tmp_path / "Kim_Vocal_2.onnx", kim.dim_f, kim.dim_t))  # identity
    options = BuildOptions(max_frames=25, min_frames=10, scale=0.25, separator=separator)
    report = build_dataset(raw / "c_square.mp4", tmp_path / "out", options, progress=False)
    plain = load_audio(raw / "c_square.mp4", RATE)[: 25 * 640]
    separated, _ = soundfile.read(str(report.kept[0].path / "audio.wav"), dtype="float32")
    assert np.corrcoef(separated, plain)[0, 1] > 0.999
    assert abs(np.std(separated) / np.std(plain) - kim.compensate) < 0.01


def test_aspect_size_crop_and_frame_rate_rules() -> None:
    sizes = ((1920, 1080), (1080, 1920), (720, 720), (640, 560))
    assert [classify_aspect(w, h) for w, h in sizes] == ["rec", "vec", "square", "square"]
    assert frame_size("rec") == (832, 480) and frame_size("vec", 0.5) == (240, 416)
    frame = np.zeros((100, 300, 3), np.uint8)
    frame[:, 100:200] = 255  # a white middle third survives a centre crop to a square
    square = fit_frame(frame, (50, 50))
    assert square.shape == (50, 50, 3) and square[:, 5:45].min() > 200

    def numbered(fps: int, count: int) -> list[tuple[Fraction, int]]:  # frame i shown from i / fps
        return [(Fraction(i, fps), i) for i in range(count)]

    assert list(at_rate(numbered(25, 6), Fraction(25), Fraction(1, 25))) == [0, 1, 2, 3, 4, 5]
    assert list(at_rate(numbered(50, 8), Fraction(25), Fraction(1, 50))) == [0, 2, 4, 6]
    assert list(at_rate(numbered(20, 4), Fraction(25), Fraction(1, 20))) == [0, 0, 1, 2, 3]


def test_rotated_phone_video_is_read_upright(tmp_path) -> None:
    frame = np.zeros((64, 128, 3), np.uint8)
    frame[:32, :64] = 255  # white top-left quarter of a landscape picture
    write_video(tmp_path / "stored.mp4", np.stack([frame] * 3), None)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-display_rotation",
            "90",
            "-i",
            str(tmp_path / "stored.mp4"),
            "-c",
            "copy",
            str(tmp_path / "phone.mp4"),
        ],
        check=True,
    )
    probe = probe_video(tmp_path / "phone.mp4")
    assert (probe.width, probe.height, probe.rotation) == (64, 128, 90)
    upright = next(decode_frames(tmp_path / "phone.mp4", probe, Fraction(25), (64, 128)))
    assert upright[64:, :32].mean() > 200 and upright[:64].mean() < 50  # as FFmpeg's player shows it
