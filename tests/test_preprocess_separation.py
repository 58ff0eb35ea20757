"""MDX-Net separation (STFT, chunking, overlap-add) with ONNX models built here whose right output is known.

An identity model must give back the input (times the model's compensation); a frequency-mask model
must give exactly what the same mask does to the STFT of the whole signal, unchunked, and so remove a
high tone. The input is real speech (espeak-ng) plus tones, longer than two chunks.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from scipy.signal import butter, sosfiltfilt

from tests.preprocess_media import mdx_model, speech
from wan.cli import run_cli
from wan.errors import UserFacingError
from wan.media import load_audio
from wan.preprocess.audio import write_wav
from wan.preprocess.cli import vocal_separator_main
from wan.preprocess.separation import KNOWN_MDX_MODELS, MdxParams, MdxSeparator, plan_chunks

pytest.importorskip("onnx", reason="the onnx package builds the test models (pip install onnx)")
pytest.importorskip("onnxruntime", reason="separation runs on onnxruntime (pip install onnxruntime)")

RATE = 44100
KIM = KNOWN_MDX_MODELS["Kim_Vocal_2"]
LOW_TONE, HIGH_TONE = 440.0, 12000.0  # Hz
CUTOFF_BIN = 1200  # the mask model keeps bins below this: 1200 * 44100 / 7680 = 6.9 kHz


def low_pass_mask(dim_f: int = KIM.dim_f) -> np.ndarray:
    return (np.arange(dim_f) < CUTOFF_BIN).astype(np.float32)


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """14 s of stereo at 44.1 kHz (three Kim_Vocal_2 chunks): speech band-passed to 50 Hz - 16 kHz (a
    Kim_Vocal_2 model sees 17 Hz - 17.6 kHz), a 440 Hz tone on the right, a 12 kHz tone on both."""
    folder = tmp_path_factory.mktemp("separation")
    talk = load_audio(speech(folder / "speech.wav"), RATE)
    talk = np.tile(talk, int(np.ceil(14 * RATE / talk.size)))[: 14 * RATE]
    talk = sosfiltfilt(butter(6, (50, 16000), "bandpass", fs=RATE, output="sos"), talk)
    t = np.arange(talk.size) / RATE
    high = 0.1 * np.sin(2 * np.pi * HIGH_TONE * t)
    left = 0.6 * talk + high
    right = 0.3 * talk + 0.2 * np.sin(2 * np.pi * LOW_TONE * t) + high
    fade = np.minimum(1, np.minimum(t, t[-1] - t) / 0.05)  # 50 ms in and out: no click at the ends
    return (np.stack([left, right]) * np.sin(0.5 * np.pi * fade) ** 2).astype(np.float32)


def tone_amplitude(signal: np.ndarray, frequency: float) -> float:
    """Amplitude of a sinusoid at `frequency` in a 1-D signal (projection on sin and cos)."""
    phase = 2 * np.pi * frequency * np.arange(signal.size) / RATE
    return float(2 * np.hypot(signal @ np.sin(phase), signal @ np.cos(phase)) / signal.size)


def whole_signal_mask(mix: np.ndarray, params: MdxParams, mask: np.ndarray) -> np.ndarray:
    """The mask applied to one STFT of the whole signal (no chunks), lowest three bins removed as in UVR."""
    window = torch.hann_window(params.n_fft, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        torch.from_numpy(mix).double(), params.n_fft, params.hop, window=window, return_complex=True
    )
    gain = torch.zeros(params.n_bins, dtype=torch.float64)
    gain[: params.dim_f] = torch.from_numpy(mask).double()
    gain[:3] = 0
    out = torch.istft(spec * gain[:, None], params.n_fft, params.hop, window=window, length=mix.shape[1])
    return out.numpy() * params.compensate


def test_identity_model_gives_back_the_input(tmp_path, mix) -> None:
    separator = MdxSeparator(mdx_model(tmp_path / "Kim_Vocal_2.onnx", KIM.dim_f, KIM.dim_t))
    assert separator.params == KIM  # found by name: n_fft 7680, dim_f 3072, dim_t 256, hop 1024, 1.009
    assert plan_chunks(mix.shape[1], KIM, separator.overlap).count == 3
    vocals, rest = separator.separate(mix, progress=False)
    error = vocals / KIM.compensate - mix  # the mix peaks near 0.56; measured error 9e-7 (float32)
    assert np.abs(error).max() < 1e-5
    np.testing.assert_allclose(vocals + rest, mix, atol=1e-6)


def test_mask_model_equals_the_unchunked_stft_and_removes_the_high_tone(tmp_path, mix) -> None:
    model = mdx_model(tmp_path / "Kim_Vocal_2.onnx", KIM.dim_f, KIM.dim_t, low_pass_mask())
    vocals, _ = MdxSeparator(model).separate(mix, progress=False)
    reference = whole_signal_mask(mix, KIM, low_pass_mask())
    assert np.abs(vocals - reference).max() < 2e-5  # measured 6e-6
    assert tone_amplitude(mix[0], HIGH_TONE) > 0.09
    assert tone_amplitude(vocals[0], HIGH_TONE) < 1e-4 and tone_amplitude(vocals[1], HIGH_TONE) < 1e-4
    assert abs(tone_amplitude(vocals[1], LOW_TONE) / KIM.compensate - 0.2) < 2e-3


def test_overlap_and_batch_size_do_not_change_the_result(tmp_path, mix) -> None:
    model = mdx_model(tmp_path / "Kim_Vocal_2.onnx", KIM.dim_f, KIM.dim_t, low_pass_mask())
    first, _ = MdxSeparator(model, overlap=0.1).separate(mix, progress=False)
    second, _ = MdxSeparator(model, overlap=0.5, batch_size=3).separate(mix, progress=False)
    np.testing.assert_allclose(first, second, atol=1e-5)


def test_command_line_with_model_settings_as_flags(tmp_path, capsys) -> None:
    """A model the table does not know, with its settings given as flags; any file with audio works."""
    model = mdx_model(tmp_path / "custom.onnx", 512, 64)
    talk = load_audio(speech(tmp_path / "s.wav"), RATE)
    write_wav(tmp_path / "in.wav", np.stack([talk, 0.5 * talk]), RATE)
    argv = [
        "--audio_separator_model_file",
        str(model),
        "--audio_file_path",
        str(tmp_path / "in.wav"),
        "--saved_vocal_path",
        str(tmp_path / "vocal.wav"),
        "--saved_instrumental_path",
        str(tmp_path / "music.wav"),
        "--n_fft",
        "2048",
        "--dim_f",
        "512",
        "--dim_t",
        "64",
        "--hop",
        "512",
    ]
    assert run_cli(vocal_separator_main, argv) == 0
    assert "vocal.wav" in capsys.readouterr().out
    vocals, rate = soundfile.read(str(tmp_path / "vocal.wav"), dtype="float32", always_2d=True)
    music, _ = soundfile.read(str(tmp_path / "music.wav"), dtype="float32", always_2d=True)
    assert rate == RATE and vocals.shape == (talk.size, 2) and music.shape == vocals.shape
    # 2048-point frames keep 512 of 1025 bins: up to 11 kHz, all of espeak's 22 kHz speech.
    assert np.corrcoef(vocals[:, 0], talk)[0, 1] > 0.99
    assert np.sqrt(np.mean(music**2)) < 0.05 * np.sqrt(np.mean(vocals**2))


def test_unknown_model_or_wrong_settings_are_one_line_errors(tmp_path, capsys) -> None:
    model = mdx_model(tmp_path / "custom.onnx", 512, 64)
    with pytest.raises(UserFacingError, match="unknown MDX model custom.onnx .* pass --n_fft"):
        MdxSeparator(model)
    with pytest.raises(UserFacingError, match="expects dim_f = 512 .* pass --dim_f 512"):
        MdxSeparator(model, MdxParams(n_fft=2048, dim_f=256, dim_t=64, hop=512))
    argv = ["--audio_separator_model_file", str(tmp_path / "Kim_Vocal_2.onnx"), "--audio_file_path", "x.wav"]
    assert run_cli(vocal_separator_main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: separation model not found") and err.count("\n") == 1
