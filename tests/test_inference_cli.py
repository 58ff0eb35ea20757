"""`inference.py` end to end: published flags, the converted folder, the tiny random model, one-line errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.released_layout import write_released_layout
from wan.cli import run_cli
from wan.generate import main
from wan.media import read_video_info

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "case-1"
SMALL = [
    "--width",
    "32",
    "--height",
    "32",
    "--sample_steps",
    "2",
    "--clip_sample_n_frames",
    "21",
    "--overlap_window_length",
    "2",
    "--seed",
    "7",
]


def _inputs(audio: Path = EXAMPLE / "audio.wav") -> list[str]:
    return [
        "--validation_reference_path",
        str(EXAMPLE / "reference.png"),
        "--validation_driven_audio_path",
        str(audio),
    ]


def test_random_tiny_model_writes_video_with_audio(tmp_path, capsys) -> None:
    code = run_cli(
        main, ["--random_tiny_model", *_inputs(), *SMALL, "--output_dir", str(tmp_path), "--save_frames"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "RANDOM weights" in out  # says plainly what it is
    info = read_video_info(tmp_path / "video_with_audio.mp4")
    assert info["frames"] == 173 and info["has_audio"] and abs(info["audio_duration"] - 173 / 25) < 0.05
    assert len(list((tmp_path / "frames").glob("*.png"))) == 173
    assert "173 frames (6.92 s)" in out and "seed 7" in out


def test_published_checkpoint_flags_load_the_downloaded_layout(tmp_path) -> None:
    layout = write_released_layout(tmp_path / "checkpoints")
    code = run_cli(
        main,
        [
            "--pretrained_model_name_or_path",
            str(layout.base_dir),
            "--transformer_path",
            str(layout.transformer_path),
            "--pretrained_wav2vec_path",
            str(layout.wav2vec_dir),
            *_inputs(),
            *SMALL,
            "--output_dir",
            str(tmp_path),
        ],
    )
    assert code == 0
    assert read_video_info(tmp_path / "video_with_audio.mp4")["frames"] == 173


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "--random_tiny_model",
                "--validation_reference_path",
                "nope.png",
                "--validation_driven_audio_path",
                "x.wav",
            ],
            "input file not found: nope.png",
        ),
        ([*_inputs()], "no model given"),
        (["--model_dir", "/nonexistent", *_inputs()], "not a converted model folder"),
        (["--random_tiny_model", *_inputs(), "--width", "100"], "multiples of 16"),
        (["--random_tiny_model", *_inputs(), "--ulysses_degree", "2"], "need torchrun"),
        (
            ["--random_tiny_model", *_inputs(), "--ulysses_degree", "2", "--ring_degree", "2"],
            "cannot both be above 1",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, message, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no checkpoints/demo here
    code = run_cli(main, [*args, "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out" / "video_with_audio.mp4").exists()


def test_sigterm_during_generation_is_one_line_exit_143_and_no_file(tmp_path) -> None:
    output, log = tmp_path / "out", tmp_path / "stderr.txt"
    command = [
        sys.executable,
        "inference.py",
        "--random_tiny_model",
        *_inputs(),
        *SMALL,
        "--output_dir",
        str(output),
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 120
    while "denoising" not in log.read_text():  # the progress bar: generation has started
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "generation did not start within 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # what `kill PID`, a job scheduler or `docker stop` sends
    assert process.wait(timeout=60) == 143
    lines = [line for line in log.read_text().replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in log.read_text()
    assert lines[-1].startswith("stopped (SIGTERM)") and "nothing was written" in lines[-1]
    assert not any(path.is_file() for path in output.rglob("*"))


def test_help_explains_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "inference.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for flag in [
        "--pretrained_model_name_or_path",
        "--transformer_path",
        "--pretrained_wav2vec_path",
        "--validation_reference_path",
        "--validation_driven_audio_path",
        "--validation_prompts",
        "--output_dir",
        "--width",
        "--height",
        "--sample_steps",
        "--sample_text_guide_scale",
        "--sample_audio_guide_scale",
        "--overlap_window_length",
        "--clip_sample_n_frames",
        "--overlapping_weight_scheme",
        "--seed",
        "--GPU_memory_mode",
        "--model_dir",
    ]:
        assert flag in result.stdout


def test_sampling_flags_left_out_come_from_the_model_folder(tmp_path) -> None:
    from wan.generate import build_parser, fill_model_defaults
    from wan.generation_settings import PUBLISHED_SETTINGS, save_recommended_settings

    save_recommended_settings(tmp_path, {"width": 64, "height": 64, "num_inference_steps": 10, "overlap": 3})
    args = build_parser().parse_args(["--model_dir", str(tmp_path), *_inputs(), "--height", "96"])
    fill_model_defaults(args)
    assert (args.width, args.height, args.sample_steps, args.overlap_window_length) == (64, 96, 10, 3)
    assert args.clip_sample_n_frames == PUBLISHED_SETTINGS["clip_length"]  # not in the file: published
    released = build_parser().parse_args(["--random_tiny_model", *_inputs()])
    fill_model_defaults(released)
    assert (released.width, released.sample_steps, released.sample_audio_guide_scale) == (512, 50, 5.0)
