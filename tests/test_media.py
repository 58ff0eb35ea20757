"""wan.media on real media encoded here with PyAV: audio decoding, image loading, the MP4 writer."""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import subprocess
import sys
import time
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from wan.errors import MissingFileError, UserFacingError
from wan.media import VideoWriter, load_audio, load_image, read_video_info

REPO = Path(__file__).resolve().parents[1]

RATE = 44100
SECONDS = 2.0
# Different levels per channel, so averaging (amplitude 0.3) is told apart from summing (0.6) or
# keeping one channel (0.4 or 0.2).
_T = np.arange(int(SECONDS * RATE)) / RATE
STEREO = np.stack([0.4 * np.sin(2 * np.pi * 440 * _T), 0.2 * np.sin(2 * np.pi * 440 * _T)]).astype(np.float32)


def _encode(
    path: Path, codec: str | None, audio: np.ndarray | None, rate: int = RATE, frames: int = 0
) -> Path:
    """Write `audio` [C, S] float with `codec` and/or `frames` small video frames into `path`."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25) if frames else None
        if video is not None:
            video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        stream = None
        if codec is not None:
            layout = "stereo" if audio.shape[0] == 2 else "mono"
            stream = container.add_stream(codec, rate=rate, layout=layout)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in video.encode(frame):
                container.mux(packet)
        if stream is not None and audio.shape[1]:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
            # Timestamps from 0 let the muxer record encoder delay, as real encoders do.
            frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for s in (video, stream):
            if s is not None:
                for packet in s.encode(None):
                    container.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    files = {
        ext: _encode(folder / f"tone.{ext}", codec, STEREO)
        for ext, codec in [("wav", "pcm_s16le"), ("flac", "flac"), ("mp3", "libmp3lame"), ("m4a", "aac")]
    }
    files["mp4"] = _encode(folder / "tone.mp4", "aac", STEREO, frames=50)
    files["silent"] = _encode(
        folder / "silent.wav", "pcm_s16le", np.zeros((1, 16000), np.float32), rate=16000
    )
    files["no_audio"] = _encode(folder / "no_audio.mp4", None, None, frames=10)
    with wave.open(str(folder / "empty.wav"), "wb") as empty:  # a valid header and no samples
        empty.setnchannels(1), empty.setsampwidth(2), empty.setframerate(16000)
    files["empty"] = folder / "empty.wav"
    return files


def _dominant_hz(wave: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(wave))) * rate / wave.size)


def _amplitude(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)) * np.sqrt(2))


def _assert_one_line(error: pytest.ExceptionInfo[BaseException]) -> None:
    message = str(error.value)
    assert message and "\n" not in message


# ------------------------------------------------------------------------------------------------ audio


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "m4a", "mp4"])
def test_load_audio_files_give_16k_mono_tone(media: dict[str, Path], ext: str) -> None:
    wave = load_audio(media[ext])
    assert wave.dtype == np.float32 and wave.ndim == 1
    if ext in ("wav", "flac"):  # lossless: exact length
        assert wave.size == 32000
    else:  # lossy codecs: encoder delay/padding may cost a few ms, and no more
        assert abs(wave.size - 32000) <= 0.01 * 32000
    assert abs(_dominant_hz(wave, 16000) - 440) < 2
    assert _amplitude(wave) == pytest.approx(0.3, rel=0.1)


def test_load_audio_other_target_rate(media: dict[str, Path]) -> None:
    wave = load_audio(media["wav"], sample_rate=22050)
    assert wave.size == 44100
    assert abs(_dominant_hz(wave, 22050) - 440) < 2


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x,  # [C, S]
        lambda x: x.T.copy(),  # [S, C]
        lambda x: torch.from_numpy(x),
        lambda x: (x * 32767).astype(np.int16),  # integer PCM is scaled by 1/32768
    ],
    ids=["numpy_cs", "numpy_sc", "torch", "int16"],
)
def test_load_audio_arrays(make) -> None:
    wave = load_audio(make(STEREO), source_sample_rate=RATE)
    assert wave.dtype == np.float32 and wave.shape == (32000,)
    assert abs(_dominant_hz(wave, 16000) - 440) < 2
    assert _amplitude(wave) == pytest.approx(0.3, rel=0.02)


def test_load_audio_array_at_target_rate_is_unchanged() -> None:
    mono = np.random.default_rng(0).uniform(-1, 1, 1234).astype(np.float32)
    np.testing.assert_array_equal(load_audio(mono), mono)


def test_silent_audio_is_valid(media: dict[str, Path]) -> None:
    wave = load_audio(media["silent"])
    assert wave.shape == (16000,) and not wave.any()


def test_garbage_and_truncated_audio_raise(media: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    # An MP4 written without faststart keeps its index at the end; cutting it in half loses the index.
    data = media["m4a"].read_bytes()
    assert data.find(b"moov") > data.find(b"mdat")
    truncated = tmp_path / "truncated.m4a"
    truncated.write_bytes(data[: len(data) // 2])
    for path in (garbage, truncated):
        with pytest.raises(UserFacingError, match=path.name) as error:
            load_audio(path)
        _assert_one_line(error)


def test_video_without_audio_raises(media: dict[str, Path]) -> None:
    with pytest.raises(UserFacingError, match="no audio stream") as error:
        load_audio(media["no_audio"])
    _assert_one_line(error)


def test_empty_audio_raises(media: dict[str, Path]) -> None:
    with pytest.raises(UserFacingError, match="no audio samples") as error:
        load_audio(media["empty"])
    _assert_one_line(error)
    with pytest.raises(UserFacingError, match="empty"):
        load_audio(np.zeros(0, np.float32))


def test_missing_audio_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="nothing.wav") as error:
        load_audio(tmp_path / "nothing.wav")
    _assert_one_line(error)


# ------------------------------------------------------------------------------------------------ image


def test_rgba_png_composited_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((4, 6, 4), np.uint8)
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red
    pixels[0, 1] = (255, 0, 0, 128)  # half-transparent red
    pixels[0, 2] = (0, 0, 255, 0)  # fully transparent
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png")
    assert image.mode == "RGB" and image.size == (6, 4)
    out = np.asarray(image).astype(int)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert out[0, 1, 0] == 255 and abs(out[0, 1, 1] - 127) <= 2 and abs(out[0, 1, 2] - 127) <= 2
    assert tuple(out[0, 2]) == (255, 255, 255)


def test_grayscale_palette_16bit_cmyk(tmp_path: Path) -> None:
    Image.fromarray(np.full((5, 7), 77, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)).save(tmp_path / "gray16.png")
    Image.new("P", (3, 3), 0).save(tmp_path / "palette.gif")
    Image.new("CMYK", (3, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    gray = load_image(tmp_path / "gray.png")
    assert gray.mode == "RGB" and gray.size == (7, 5) and (np.asarray(gray) == 77).all()
    assert np.asarray(load_image(tmp_path / "gray16.png"))[0, :, 0].tolist() == [0, 128, 255]
    assert load_image(tmp_path / "palette.gif").mode == "RGB"
    cmyk = load_image(tmp_path / "cmyk.jpg")
    assert cmyk.mode == "RGB" and np.asarray(cmyk).min() > 240  # no ink = white


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # stored left half red
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.size == (20, 40)  # width and height swapped
    out = np.asarray(image).astype(int)
    # Turning clockwise puts the stored left edge on top.
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60


def test_numpy_images() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), rgb)
    gray = load_image(np.full((6, 8), 0.5, np.float32))
    assert gray.size == (8, 6) and (np.asarray(gray) == 128).all()
    rgba = np.zeros((2, 2, 4), np.float64)  # transparent black -> white
    assert (np.asarray(load_image(rgba)) == 255).all()
    with pytest.raises(UserFacingError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 255.0))


def test_bad_images(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        load_image(tmp_path / "nobody.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 20)
    with pytest.raises(UserFacingError, match="junk.png") as error:
        load_image(tmp_path / "junk.png")
    _assert_one_line(error)
    with pytest.raises(UserFacingError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))


# ------------------------------------------------------------------------------------------------ video

FRAMES, WIDTH, HEIGHT = 37, 64, 48


def _gradient_frames(count: int = FRAMES) -> np.ndarray:
    """Smooth colour gradients, shifting a little every frame: uint8 [T, H, W, 3]."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = np.empty((count, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(count):
        frames[t, ..., 0] = 40 + 3 * x + t
        frames[t, ..., 1] = 30 + 4 * y
        frames[t, ..., 2] = 120 + x - y
    return frames


def _write(path: Path, frames: np.ndarray, audio: np.ndarray | None = None, **kwargs) -> None:
    with VideoWriter(path, fps=25, audio=audio, audio_sample_rate=16000, **kwargs) as writer:
        for chunk in np.array_split(frames, [5, 20]):  # several write() calls of uneven size
            writer.write(chunk)


def _tone(seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16000)) / 16000)).astype(np.float32)


@pytest.mark.parametrize("audio_seconds", [1.0, 3.0, 0.5])
def test_writer_muxes_audio_to_video_length(tmp_path: Path, audio_seconds: float) -> None:
    path = tmp_path / "out.mp4"
    _write(path, _gradient_frames(), _tone(audio_seconds))
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # partial file renamed away
    info = read_video_info(path)
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (FRAMES, 25.0, WIDTH, HEIGHT)
    assert info["has_audio"] and info["audio_sample_rate"] == 16000
    assert abs(info["audio_duration"] - FRAMES / 25) < 0.05
    # The tone is there while it lasts, and silence pads the rest.
    sound = load_audio(path)
    assert _amplitude(sound[1600:6400]) == pytest.approx(0.5, rel=0.1)
    tail = _amplitude(sound[17600:22400])  # 1.1 s to 1.4 s
    assert tail < 0.02 if audio_seconds < 1.1 else tail == pytest.approx(0.5, rel=0.1)
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # +faststart


def test_writer_streams_are_h264_yuv420p_and_aac(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    _write(path, _gradient_frames(), _tone(1.0))
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert audio.codec_context.name == "aac"


def test_decoded_frame_is_close_to_written(tmp_path: Path) -> None:
    frames = _gradient_frames()
    _write(tmp_path / "out.mp4", frames)
    info = read_video_info(tmp_path / "out.mp4")
    assert info["frames"] == FRAMES and not info["has_audio"] and info["audio_duration"] == 0.0
    with av.open(str(tmp_path / "out.mp4")) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    assert np.abs(first - frames[0]).mean() < 8


def test_float_and_torch_frames(tmp_path: Path) -> None:
    frames = _gradient_frames(4)
    signed = torch.from_numpy(frames.astype(np.float32) / 127.5 - 1)  # [-1, 1]
    with VideoWriter(tmp_path / "out.mp4") as writer:
        writer.write(signed, value_range=(-1, 1))
        writer.write(frames.astype(np.float64) / 255)  # default [0, 1]
    with av.open(str(tmp_path / "out.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24").astype(float) for f in container.decode(video=0)]
    assert len(decoded) == 8
    for i in (0, 4):
        assert np.abs(decoded[i] - frames[0]).mean() < 8


def test_frames_dir_gets_every_frame(tmp_path: Path) -> None:
    frames = _gradient_frames()
    _write(tmp_path / "out.mp4", frames, frames_dir=tmp_path / "frames")
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"frame_{i:06d}.png" for i in range(FRAMES)]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "frames" / "frame_000036.png")), frames[36]
    )


def test_error_inside_with_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(KeyError), VideoWriter(tmp_path / "out.mp4", audio=_tone(1.0)) as writer:
        writer.write(_gradient_frames(10))
        raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_dropped_without_close_leaves_no_file(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "out.mp4")
    writer.write(_gradient_frames(FRAMES))
    writer.write(_gradient_frames(FRAMES))  # past the encoder's look-ahead, so packets reach the file
    assert len(list(tmp_path.iterdir())) == 1  # the partial file, under another name
    assert not (tmp_path / "out.mp4").exists()
    del writer
    gc.collect()
    assert list(tmp_path.iterdir()) == []


# A command-line program that writes frames into sys.argv[1] until it is stopped.
_ENDLESS_WRITER = """
import sys, time
import numpy as np
from wan.cli import run_cli
from wan.media import VideoWriter

def main(argv):
    with VideoWriter(sys.argv[1], fps=25) as writer:
        writer.write(np.zeros((60, 16, 16, 3), np.uint8))  # past x264's look-ahead: packets reach the file
        print("writing", flush=True)
        while True:
            writer.write(np.zeros((16, 16, 3), np.uint8))
            time.sleep(0.01)

raise SystemExit(run_cli(main))
"""


def _start_endless_writer(path: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", _ENDLESS_WRITER, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "writing\n", process.communicate(timeout=60)[1]
    return process


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_writing_leaves_no_file_and_says_so_in_one_line(tmp_path: Path, signum, code) -> None:
    writer = _start_endless_writer(tmp_path / "out.mp4")
    assert len(list(tmp_path.glob(".out.*.partial.mp4"))) == 1
    writer.send_signal(signum)
    _, stderr = writer.communicate(timeout=60)
    assert writer.returncode == code  # 128 + the signal's number, as a shell reports a killed program
    (line,) = stderr.strip().splitlines()
    assert "nothing was written" in line
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_files_of_killed_runs_are_removed(tmp_path: Path) -> None:
    hour_ago = time.time() - 3600
    stale = tmp_path / ".out.0123abcd.partial.mp4"  # a run killed (SIGKILL, power cut) while writing
    recent = tmp_path / ".out.89abcdef.partial.mp4"  # may be a writer that has just opened it
    others = [
        ".out.0123abc.partial.mp4",  # not 8 hex digits
        ".out.0123ABCD.partial.mp4",
        ".out.x.0123abcd.partial.mp4",
        ".other.0123abcd.partial.mp4",  # another output name
        "out.0123abcd.partial.mp4",
        ".out.0123abcd.partial.mkv",
    ]
    for name in [stale.name, recent.name, *others]:
        (tmp_path / name).write_bytes(b"half a video")
        if name != recent.name:
            os.utime(tmp_path / name, (hour_ago, hour_ago))
    before = set(tmp_path.iterdir())
    live = _start_endless_writer(tmp_path / "out.mp4")  # another program writing the same name right now
    try:
        (busy,) = set(tmp_path.iterdir()) - before
        os.utime(busy, (hour_ago, hour_ago))  # a long-running writer: old, but still alive
        _write(tmp_path / "out.mp4", _gradient_frames(2))
        assert not stale.exists()
        assert recent.exists() and busy.exists()
        assert all((tmp_path / name).exists() for name in others)
    finally:
        live.kill()
        live.communicate(timeout=60)


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to compare"
)
def test_same_frames_and_audio_give_the_same_bytes_on_any_number_of_cpus(tmp_path: Path) -> None:
    frames = _gradient_frames().repeat(4, axis=1).repeat(4, axis=2)  # 256x192: tall enough for x264 threads
    audio, cpus = _tone(1.0), os.sched_getaffinity(0)
    encodes = []
    for allowed in (cpus, {min(cpus)}, cpus):  # x264 picks its thread count from the CPUs it may use
        os.sched_setaffinity(0, allowed)
        try:
            _write(tmp_path / f"{len(encodes)}.mp4", frames, audio)
        finally:
            os.sched_setaffinity(0, cpus)
        encodes.append(hashlib.sha256((tmp_path / f"{len(encodes)}.mp4").read_bytes()).hexdigest())
    assert encodes[0] == encodes[1] == encodes[2]


def test_existing_file_untouched_on_failure(tmp_path: Path) -> None:
    (tmp_path / "out.mp4").write_bytes(b"previous")
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "out.mp4") as writer:
        writer.write(_gradient_frames(2))
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    assert (tmp_path / "out.mp4").read_bytes() == b"previous"


@pytest.mark.parametrize("size", [(63, 48), (64, 47)])
def test_odd_size_raises(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    with pytest.raises(UserFacingError, match="even") as error, VideoWriter(tmp_path / "out.mp4") as writer:
        writer.write(np.zeros((2, height, width, 3), np.uint8))
    _assert_one_line(error)
    assert list(tmp_path.iterdir()) == []


def test_bad_frames_raise(tmp_path: Path) -> None:
    with pytest.raises(UserFacingError, match="changed"), VideoWriter(tmp_path / "out.mp4") as writer:
        writer.write(np.zeros((1, 48, 64, 3), np.uint8))
        writer.write(np.zeros((1, 48, 66, 3), np.uint8))
    with pytest.raises(UserFacingError, match=r"\[T, H, W, 3\]"), VideoWriter(tmp_path / "out.mp4") as writer:
        writer.write(np.zeros((1, 3, 48, 64), np.uint8))
    with pytest.raises(UserFacingError, match="no video frames"), VideoWriter(tmp_path / "out.mp4"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_read_video_info_missing(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        read_video_info(tmp_path / "none.mp4")
