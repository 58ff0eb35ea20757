"""Issue 22's bad input: every entry point answers with one line (`error: ...`) that names the problem and
what to do, exits non-zero, writes nothing, and refuses what it can before any model is loaded."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import save_file

import wan.generate
from tests.released_layout import write_released_layout
from tests.test_inference_cli import EXAMPLE, SMALL, _inputs
from tests.training_helpers import SIZE, tiny_config, write_tiny_model
from wan.app.logic import ModelChoice
from wan.app.runner import load_model
from wan.cli import run_cli
from wan.convert import main as convert_main
from wan.errors import CheckpointError
from wan.evaluation.syncnet import load_syncnet
from wan.generate import main
from wan.loading.state_dict import load_state_dict_file
from wan.preprocess.cli import audio_extractor_main, lip_mask_extractor_main, prepare_dataset_main
from wan.training.cli import main_for_preset
from wan.training.loop import STATE_FILE, resolve_checkpoint
from wan.training.synthetic import write_dataset
from wan.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "checkpoints" / "demo"


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def assert_one_line_error(capsys, code: int, *phrases: str, only_line: bool = True) -> str:
    """Exit code 2, no traceback, and an `error: ` line holding every phrase (the only stderr line unless
    something, e.g. a loading progress bar, legitimately printed before it)."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    if only_line:
        assert len(lines) == 1, err
    line = lines[-1]
    assert line.startswith("error: "), err
    for phrase in phrases:
        assert phrase in line, line
    return line


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if inference.py gets as far as loading a model."""

    def refuse(*args, **kwargs):
        pytest.fail("the model was loaded before the bad input was refused")

    monkeypatch.setattr(wan.generate, "load_pipeline", refuse)


@pytest.fixture
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    a_file = folder / "a_file"
    a_file.write_text("not a folder")
    nan_audio = np.zeros(16000, np.float32)
    nan_audio[100] = np.nan
    soundfile.write(folder / "nan.wav", nan_audio, 16000, subtype="FLOAT")
    save_file({"weight": torch.zeros(64, 64)}, str(folder / "whole.safetensors"))
    data = (folder / "whole.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "text.safetensors").write_text("these are not weights\n")
    (folder / "text.pt").write_text("these are not weights\n")
    return {
        "file": a_file,
        "nan_audio": folder / "nan.wav",
        "truncated": folder / "truncated.safetensors",
        "text_safetensors": folder / "text.safetensors",
        "text_pt": folder / "text.pt",
    }


class RunsCode:
    """A pickle that runs a shell command when unpickled (what a malicious .pt/.ckpt does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def malicious_pickle(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2), "payload": RunsCode(marker)}, path)
    return path, marker


# ---------------------------------------------------------------------------- inference: before loading


def _unwritable_folder() -> Path:
    """A folder nobody can create files in, root included (sysfs refuses new files)."""
    folder = Path("/sys")
    if sys.platform != "linux" or not folder.is_dir():
        pytest.skip("needs Linux's /sys")
    try:
        (folder / "stableavatar-probe").touch()
    except OSError:
        return folder / "stableavatar-outputs"
    pytest.skip("/sys is writable here")


@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--output_dir", "{file}"], ["--output_dir", "is a file, not a folder"]),
        (["--output_dir", "{file}/videos"], ["--output_dir", "is a file, not a folder"]),
        (["--output_dir", "{unwritable}"], ["--output_dir", "cannot write in /sys"]),
        (["--output_name", ""], ["--output_name", "not a file name"]),
        (["--output_name", "taken"], ["is a folder", "pass a file path"]),
        (["--sample_text_guide_scale", "nan"], ["text guidance scale must be a finite number", "nan"]),
        (["--sample_audio_guide_scale", "inf"], ["audio guidance scale must be a finite number", "inf"]),
        (["--sample_audio_guide_scale=-inf"], ["audio guidance scale must be a finite number"]),
        (["--validation_driven_audio_path", "{nan_audio}"], ["nan.wav contains NaN", "finite samples"]),
    ],
)
def test_output_location_and_non_finite_values_are_refused_before_loading(
    flags, phrases, bad_files, no_model_loading, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    (out / "taken").mkdir(parents=True)
    values = {"file": bad_files["file"], "nan_audio": bad_files["nan_audio"]}
    if "{unwritable}" in flags:
        values["unwritable"] = _unwritable_folder()
    flags = [flag.format(**values) for flag in flags]
    before = files_under(tmp_path) | files_under(bad_files["file"].parent)
    code = run_cli(main, ["--random_tiny_model", *_inputs(), *SMALL, "--output_dir", str(out), *flags])
    line = assert_one_line_error(capsys, code, *phrases)
    assert "video frame" not in line  # caught up front, not as NaN frames after a whole generation
    assert files_under(tmp_path) | files_under(bad_files["file"].parent) == before


@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--sample_steps=-1"], ["number of denoising steps must be at least 1", "got -1"]),
        (["--sample_steps", "0"], ["number of denoising steps must be at least 1", "got 0"]),
        (["--fps", "0"], ["fps must be a positive divisor of 16000", "got 0"]),
        (["--fps=-25"], ["fps must be a positive divisor of 16000", "got -25"]),
        (["--seed", str(2**64)], ["seed must be a whole number from 0 to", str(2**64)]),
        (["--device", "nonsense"], ["unknown device 'nonsense'", "'cpu'"]),
        (["--validation_reference_path", str(EXAMPLE)], ["is a folder, not a file", "pass the file itself"]),
    ],
)
def test_impossible_settings_are_one_line_before_loading(flags, phrases, no_model_loading, tmp_path, capsys):
    code = run_cli(main, ["--random_tiny_model", *_inputs(), *SMALL, "--output_dir", str(tmp_path), *flags])
    line = assert_one_line_error(capsys, code, *phrases)
    assert " ms" not in line  # --fps -25 used to be reported as a "-40 ms" frame
    assert files_under(tmp_path) == set()


def test_model_folder_without_vae_is_refused_before_loading(no_model_loading, tmp_path, capsys) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(DEMO / "model_index.json", folder)
    for name, value in json.loads((DEMO / "model_index.json").read_text()).items():
        if isinstance(value, list) and name != "vae":
            (folder / name).mkdir()
    code = run_cli(main, ["--model_dir", str(folder), *_inputs(), "--output_dir", str(tmp_path / "out")])
    assert_one_line_error(capsys, code, "has no vae/", "python -m wan.convert")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "phrases"),
    [
        ("truncated", ["truncated.safetensors is not a valid, complete safetensors file", "download"]),
        ("text_safetensors", ["text.safetensors is not a valid, complete safetensors file"]),
        ("text_pt", ["text.pt is not a weights file", "pass the .safetensors or .pt file"]),
    ],
)
def test_broken_transformer_file_is_refused_before_loading(
    name, phrases, bad_files, no_model_loading, tmp_path, capsys
) -> None:
    flags = ["--transformer_path", str(bad_files[name]), "--output_dir", str(tmp_path)]
    code = run_cli(main, ["--random_tiny_model", *_inputs(), *SMALL, *flags])
    assert_one_line_error(capsys, code, *phrases)
    assert files_under(tmp_path) == set()


# ------------------------------------------------------------------------------------- unsafe pickles


def test_malicious_pickle_is_refused_in_one_line_and_never_runs(malicious_pickle, tmp_path, capsys):
    path, marker = malicious_pickle
    with pytest.raises(CheckpointError) as caught:
        load_state_dict_file(path)
    message = str(caught.value)
    assert message.startswith("unsafe pickle refused: ") and "\n" not in message
    assert "system" in message and "use a .safetensors file" in message
    with pytest.raises(CheckpointError, match="^unsafe pickle refused: "):
        load_syncnet(path)
    # the command line: the same single line after the (tiny) model is built
    code = run_cli(
        main,
        [
            "--random_tiny_model",
            *_inputs(),
            *SMALL,
            "--transformer_path",
            str(path),
            "--output_dir",
            str(tmp_path / "o"),
        ],
    )
    assert_one_line_error(capsys, code, "unsafe pickle refused", "safetensors", only_line=False)
    assert not marker.exists() and not (tmp_path / "o").exists()


def _broken_model_folder(broken: str, pickle_path: Path, folder: Path) -> tuple[Path, str]:
    """The tiny model folder with its VAE weights replaced by `pickle_path` or truncated, and the message
    pattern that names the problem."""
    folder = write_tiny_model(folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    if broken == "unsafe pickle":
        weights.unlink()
        shutil.copy(pickle_path, folder / "vae" / "diffusion_pytorch_model.bin")
        return folder, "^unsafe pickle refused: "
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder, "holds a weights file that cannot be read .*convert the folder again"


@pytest.mark.parametrize("broken", ["unsafe pickle", "truncated safetensors"])
def test_training_model_folder_with_a_bad_weights_file_is_one_line(
    broken, malicious_pickle, tmp_path
) -> None:
    """diffusers wraps what its loader refused in a long OSError of its own; the folder is named instead."""
    path, marker = malicious_pickle
    folder, expected = _broken_model_folder(broken, path, tmp_path / "tiny")
    with pytest.raises(CheckpointError, match=expected) as caught:
        Trainer(tiny_config(tmp_path / "run", None, pipeline_dir=folder, max_train_steps=1))
    assert "\n" not in str(caught.value) and str(folder) in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("broken", ["unsafe pickle", "truncated safetensors"])
def test_inference_model_folder_with_a_bad_weights_file_is_one_line(
    broken, malicious_pickle, tmp_path, capsys
) -> None:
    path, marker = malicious_pickle
    folder, expected = _broken_model_folder(broken, path, tmp_path / "tiny")
    output = tmp_path / "o"
    code = run_cli(main, ["--model_dir", str(folder), *_inputs(), *SMALL, "--output_dir", str(output)])
    line = assert_one_line_error(capsys, code, str(folder), only_line=False)
    assert re.search(expected.lstrip("^"), line.removeprefix("error: ")), line
    # the app loads the same folder through its own menu entry
    with pytest.raises(CheckpointError, match=expected) as caught:
        load_model(ModelChoice("bad", "bad", folder), torch.float32)
    assert "\n" not in str(caught.value)
    assert not marker.exists() and not output.exists()


# ---------------------------------------------------------------------------------------- wan.convert


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return write_released_layout(tmp_path_factory.mktemp("released") / "checkpoints")


@pytest.mark.parametrize(
    ("name", "phrases"),
    [
        ("truncated", ["truncated.safetensors is not a valid, complete safetensors file"]),
        ("text_pt", ["text.pt is not a weights file"]),
    ],
)
def test_convert_refuses_a_broken_transformer_file(released, bad_files, name, phrases, tmp_path, capsys):
    flags = ["--checkpoints_dir", str(released.base_dir.parent), "--output", str(tmp_path / "converted")]
    code = run_cli(convert_main, [*flags, "--transformer_path", str(bad_files[name])])
    assert_one_line_error(capsys, code, *phrases)
    assert files_under(tmp_path) == set()


def test_convert_refuses_a_file_as_output_folder(released, bad_files, tmp_path, capsys) -> None:
    flags = ["--checkpoints_dir", str(released.base_dir.parent), "--output", str(bad_files["file"])]
    code = run_cli(convert_main, flags)
    assert_one_line_error(capsys, code, "--output", "is a file, not a folder")
    assert bad_files["file"].read_text() == "not a folder"


# ------------------------------------------------------------------------------------------- training


def test_training_refuses_zero_frames(tmp_path, capsys) -> None:
    code = main_for_preset(
        "1B_square",
        [
            "--pretrained_model_name_or_path",
            str(DEMO),
            "--output_dir",
            str(tmp_path / "run"),
            "--video_sample_n_frames",
            "0",
        ],
    )
    assert_one_line_error(capsys, code, "--video_sample_n_frames 0", "4k+1")
    assert not (tmp_path / "run").exists()


def test_resume_from_checkpoint_name_is_the_runs_own(tmp_path, monkeypatch) -> None:
    """`--resume_from_checkpoint checkpoint-100` names the checkpoint in --output_dir, even when the working
    directory happens to hold a folder of that name (another run's)."""
    for folder in (tmp_path / "checkpoint-100", tmp_path / "run" / "checkpoint-100"):
        folder.mkdir(parents=True)
        (folder / STATE_FILE).write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("checkpoint-100", tmp_path / "run") == tmp_path / "run" / "checkpoint-100"
    # a path to another folder still works
    assert (
        resolve_checkpoint(str(tmp_path / "checkpoint-100"), tmp_path / "run") == tmp_path / "checkpoint-100"
    )


# -------------------------------------------------------------------------------------- data preparation


def test_audio_extractor_refuses_a_folder_as_the_wav_file(tmp_path, capsys) -> None:
    (tmp_path / "out").mkdir()
    args = ["--video_path", str(EXAMPLE / "audio.wav"), "--saved_audio_path", str(tmp_path / "out")]
    code = run_cli(audio_extractor_main, args)
    assert_one_line_error(capsys, code, "--saved_audio_path", "is a folder", "pass a file path")
    assert files_under(tmp_path) == {tmp_path / "out"}


def test_audio_extractor_refuses_a_file_as_the_wav_folder(bad_files, tmp_path, capsys) -> None:
    args = ["--video_path", str(EXAMPLE), "--saved_audio_path", str(bad_files["file"])]
    code = run_cli(audio_extractor_main, args)
    assert_one_line_error(capsys, code, "--saved_audio_path", "is a file, not a folder")
    assert bad_files["file"].read_text() == "not a folder"


def test_audio_extractor_refuses_a_wav_path_below_a_file(bad_files, tmp_path, capsys) -> None:
    args = ["--video_path", str(EXAMPLE / "audio.wav"), "--saved_audio_path", f"{bad_files['file']}/x.wav"]
    code = run_cli(audio_extractor_main, args)
    assert_one_line_error(capsys, code, "--saved_audio_path", "is a file, not a folder")


def test_prepare_dataset_refuses_a_file_as_the_dataset_folder(bad_files, capsys) -> None:
    args = ["--video_path", str(EXAMPLE), "--output_root", str(bad_files["file"])]
    code = run_cli(prepare_dataset_main, args)
    assert_one_line_error(capsys, code, "--output_root", "is a file, not a folder")
    assert bad_files["file"].read_text() == "not a folder"


def test_mask_extractor_says_a_file_is_not_the_clip_folder(bad_files, capsys) -> None:
    code = run_cli(lip_mask_extractor_main, ["--folder_root", str(bad_files["file"])])
    assert_one_line_error(capsys, code, "is a file, not a folder", "clip folders")


def test_resume_refuses_a_checkpoint_holding_an_unsafe_pickle(malicious_pickle, tmp_path) -> None:
    """accelerate reads registered objects (the LR scheduler: custom_checkpoint_0.pkl) with
    weights_only=False; a replaced one must be refused before it runs."""
    path, marker = malicious_pickle
    model = write_tiny_model(tmp_path / "tiny")
    clips = write_dataset(tmp_path / "data", num_clips=1, seconds=1.0, size=(SIZE, SIZE), seed=9)
    config = tiny_config(
        tmp_path / "run", clips, pipeline_dir=model, max_train_steps=1, checkpointing_steps=1
    )
    Trainer(config).train()
    shutil.copy(path, tmp_path / "run" / "checkpoint-1" / "custom_checkpoint_0.pkl")
    resumed = replace(config, max_train_steps=2, resume_from_checkpoint="latest")
    with pytest.raises(CheckpointError, match="^unsafe pickle refused: .*custom_checkpoint_0.pkl would call"):
        Trainer(resumed).train()
    assert not marker.exists()
