"""Vocal separation with a UVR MDX-Net ONNX model (e.g. Kim_Vocal_2.onnx), run by onnxruntime.

An MDX-Net model maps a spectrogram chunk to the spectrogram of one stem. The audio (stereo, 44.1 kHz) is
cut into overlapping chunks of `hop * (dim_t - 1)` samples; each chunk goes through a centred STFT (periodic
Hann window of `n_fft` samples, `hop` samples apart, giving `dim_t` frames), of which the lowest `dim_f`
frequency bins are fed to the model as [batch, 4, dim_f, dim_t] = (left real, left imaginary, right real,
right imaginary); the three lowest bins are zeroed first, as in UVR. The model's output spectrogram goes
back through the inverse STFT (bins above `dim_f` zero), is multiplied by `compensate`, and the chunks are
blended by overlap-add with weights that are zero within `n_fft` samples of a chunk's ends (where the STFT
saw padding) and cross-fade (sin^2 / cos^2, summing to one) where neighbours overlap. The other stem is the
mix minus the model's stem.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import MissingFileError, UserFacingError
from .audio import load_stereo, write_wav

STEMS = ("vocals", "instrumental")


@dataclass(frozen=True)
class MdxParams:
    """Settings of one MDX-Net model.

    n_fft: STFT size in samples; dim_f: frequency bins the model sees (of n_fft // 2 + 1); dim_t: STFT
    frames per model call; hop: STFT hop in samples; compensate: gain applied to the model's output;
    primary_stem: what the network outputs ("vocals" or "instrumental"); sample_rate: in Hz.
    """

    n_fft: int
    dim_f: int
    dim_t: int
    hop: int = 1024
    compensate: float = 1.0
    primary_stem: str = "vocals"
    sample_rate: int = 44100

    @property
    def chunk_samples(self) -> int:
        """Samples per model call: dim_t frames of a centred STFT span hop * (dim_t - 1) samples."""
        return self.hop * (self.dim_t - 1)

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def check(self) -> MdxParams:
        """Raise UserFacingError for settings no MDX model can have; return self."""
        if min(self.n_fft, self.dim_f, self.dim_t, self.hop, self.sample_rate) <= 0 or self.n_fft % 2:
            raise UserFacingError(f"MDX settings must be positive with an even n_fft, got {self}")
        if self.dim_f > self.n_bins:
            raise UserFacingError(f"dim_f {self.dim_f} exceeds the {self.n_bins} bins of n_fft {self.n_fft}")
        if self.chunk_samples <= 4 * self.n_fft + self.hop:
            raise UserFacingError(
                f"a chunk of {self.chunk_samples} samples (hop * (dim_t - 1)) is too short for n_fft "
                f"{self.n_fft}; it must exceed 4 * n_fft + hop: raise dim_t"
            )
        if self.primary_stem not in STEMS:
            raise UserFacingError(
                f"primary stem must be one of {', '.join(STEMS)}, got {self.primary_stem!r}"
            )
        return self


# Settings of public UVR MDX-Net models, from UVR's model table (keyed there by file hash; here by name).
KNOWN_MDX_MODELS: dict[str, MdxParams] = {
    "Kim_Vocal_2": MdxParams(n_fft=7680, dim_f=3072, dim_t=256, compensate=1.009),
    "UVR-MDX-NET-Voc_FT": MdxParams(n_fft=7680, dim_f=3072, dim_t=256, compensate=1.021),
    "UVR-MDX-NET-Inst_HQ_3": MdxParams(
        n_fft=6144, dim_f=3072, dim_t=256, compensate=1.022, primary_stem="instrumental"
    ),
}


def known_params(model_file: str | os.PathLike[str]) -> MdxParams | None:
    """The table's settings for a model file, looked up by its name without extension (any case)."""
    stem = Path(model_file).stem.lower()
    return next((params for name, params in KNOWN_MDX_MODELS.items() if name.lower() == stem), None)


# ------------------------------------------------------------------------------------- STFT and chunks


def _window(params: MdxParams) -> torch.Tensor:
    return torch.hann_window(params.n_fft, periodic=True, dtype=torch.float64)


def chunks_to_spectrogram(chunks: torch.Tensor, params: MdxParams) -> torch.Tensor:
    """Audio chunks [N, 2, chunk_samples] -> model input [N, 4, dim_f, dim_t] (L re, L im, R re, R im)."""
    n = chunks.shape[0]
    spec = torch.stft(
        chunks.reshape(n * 2, -1).double(),
        params.n_fft,
        params.hop,
        window=_window(params),
        center=True,
        return_complex=True,
    )  # [2N, n_bins, dim_t]
    spec = torch.view_as_real(spec[:, : params.dim_f])  # [2N, dim_f, dim_t, 2]
    spec = spec.reshape(n, 2, params.dim_f, params.dim_t, 2).permute(0, 1, 4, 2, 3)
    spec = spec.reshape(n, 4, params.dim_f, params.dim_t).float()
    spec[:, :, :3] = 0  # UVR removes the lowest bins (near DC) before the model
    return spec


def spectrogram_to_chunks(spec: torch.Tensor, params: MdxParams) -> torch.Tensor:
    """Model output [N, 4, dim_f, dim_t] -> audio chunks [N, 2, chunk_samples] (bins above dim_f zero)."""
    n = spec.shape[0]
    parts = spec.double().reshape(n * 2, 2, params.dim_f, params.dim_t)
    full = torch.zeros(n * 2, params.n_bins, params.dim_t, dtype=torch.complex128)
    full[:, : params.dim_f] = torch.complex(parts[:, 0], parts[:, 1])
    audio = torch.istft(
        full, params.n_fft, params.hop, window=_window(params), center=True, length=params.chunk_samples
    )
    return audio.reshape(n, 2, -1).float()


@dataclass(frozen=True)
class ChunkPlan:
    """Where the chunks of a signal of `samples` samples go (all in samples).

    The signal is placed at offset `lead` in a zero-padded buffer of `padded` samples; chunk i covers
    [i * step, i * step + length) of that buffer, and `weights` [length] is its overlap-add weight.
    """

    samples: int
    length: int
    step: int
    lead: int
    count: int
    weights: np.ndarray

    @property
    def padded(self) -> int:
        return (self.count - 1) * self.step + self.length


def plan_chunks(samples: int, params: MdxParams, overlap: float) -> ChunkPlan:
    """Chunk a signal of `samples` samples with about `overlap` (0..1) of each chunk shared with the next.

    Weights are zero within `margin = n_fft` samples of both chunk ends: an output sample there depends on
    STFT frames that reach past the chunk. The overlap is at least 2 * margin + hop and a multiple of hop,
    so chunk starts stay on the STFT frame grid of the whole signal.
    """
    length, hop, margin = params.chunk_samples, params.hop, params.n_fft
    wanted = max(round(overlap * length), 2 * margin + hop)
    shared = min(math.ceil(wanted / hop) * hop, length - hop)
    ramp = shared - 2 * margin
    step = length - shared
    reach = samples + margin  # the buffer position the last chunk's trusted part must reach
    count = 1 if reach <= length - margin else 1 + math.ceil((reach - (length - margin)) / step)
    fade = np.sin(0.5 * np.pi * (np.arange(ramp) + 0.5) / ramp) ** 2  # rises; fade + fade[::-1] == 1
    weights = np.ones(length, np.float32)
    weights[:margin] = weights[length - margin :] = 0
    weights[margin : margin + ramp] = fade
    weights[length - margin - ramp : length - margin] = fade[::-1]
    return ChunkPlan(samples, length, step, margin, count, weights)


# ----------------------------------------------------------------------------------------- the model


class MdxSeparator:
    """An MDX-Net ONNX model with its settings: `separate(mix)` returns (vocals, instrumental).

    `params`: None takes the model's settings from `KNOWN_MDX_MODELS` by file name. `overlap`: share of each
    chunk (0..1) recomputed by the next. `batch_size`: chunks per model call (memory, not results).
    `denoise`: run the model on the spectrogram and its negative and keep the odd part (UVR's "denoise",
    twice the compute). `threads`: onnxruntime intra-op threads (None: its default).
    """

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        params: MdxParams | None = None,
        overlap: float = 0.25,
        batch_size: int = 1,
        denoise: bool = False,
        threads: int | None = None,
    ) -> None:
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise MissingFileError(
                f"separation model not found: {self.model_file}; pass the path of e.g. Kim_Vocal_2.onnx"
            )
        if not 0 <= overlap < 1:
            raise UserFacingError(f"--overlap must be in [0, 1), got {overlap}")
        if batch_size < 1:
            raise UserFacingError(f"--batch_size must be at least 1, got {batch_size}")
        self.session = _open_session(self.model_file, threads)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.params = _resolve_params(self.model_file, params, model_input.shape)
        fixed_batch = model_input.shape[0]
        self.batch_size = fixed_batch if isinstance(fixed_batch, int) and fixed_batch > 0 else batch_size
        self.overlap = overlap
        self.denoise = denoise

    def model_stem(self, mix: np.ndarray, progress: bool = True) -> np.ndarray:
        """The stem the network outputs (times `compensate`) for a mix [2, S] at params.sample_rate, [2, S]."""
        plan = plan_chunks(mix.shape[1], self.params, self.overlap)
        buffer = np.zeros((2, plan.padded), np.float32)
        buffer[:, plan.lead : plan.lead + plan.samples] = mix
        total = np.zeros((2, plan.padded), np.float32)
        weight_sum = np.zeros(plan.padded, np.float32)
        starts = [i * plan.step for i in range(plan.count)]
        bar = tqdm(total=plan.count, desc="separating", unit="chunk", disable=None if progress else True)
        for first in range(0, plan.count, self.batch_size):
            batch = starts[first : first + self.batch_size]
            chunks = torch.from_numpy(np.stack([buffer[:, s : s + plan.length] for s in batch]))
            outputs = spectrogram_to_chunks(
                self._run(chunks_to_spectrogram(chunks, self.params)), self.params
            )
            for start, output in zip(batch, outputs.numpy(), strict=True):
                total[:, start : start + plan.length] += output * plan.weights
                weight_sum[start : start + plan.length] += plan.weights
            bar.update(len(batch))
        bar.close()
        span = slice(plan.lead, plan.lead + plan.samples)
        return (total[:, span] / weight_sum[span] * self.params.compensate).astype(np.float32)

    def separate(self, mix: np.ndarray, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Split a mix [2, S] (float, at params.sample_rate) into (vocals, instrumental), each [2, S]."""
        mix = np.asarray(mix, dtype=np.float32)
        if mix.ndim != 2 or mix.shape[0] != 2 or mix.shape[1] == 0:
            raise UserFacingError(f"the mix has shape {list(mix.shape)}; pass stereo audio [2, samples]")
        peak = float(np.abs(mix).max())
        scale = peak if peak > 1 else 1.0  # the models expect audio within [-1, 1]
        stem = self.model_stem(mix / scale, progress) * scale
        rest = mix - stem
        return (stem, rest) if self.params.primary_stem == "vocals" else (rest, stem)

    def _call(self, array: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: array})[0]

    def _run(self, spec: torch.Tensor) -> torch.Tensor:
        """Model call on [N, 4, dim_f, dim_t] float32; with `denoise`, the odd part of the model."""
        array = spec.numpy()
        out = self._call(array)
        if self.denoise:
            out = (out - self._call(-array)) / 2
        expected = (spec.shape[0], 4, self.params.dim_f, self.params.dim_t)
        if tuple(out.shape) != expected:
            raise UserFacingError(
                f"{self.model_file.name} returned shape {list(out.shape)}, expected {list(expected)}; "
                "is it an MDX-Net model?"
            )
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _open_session(model_file: Path, threads: int | None):  # -> onnxruntime.InferenceSession
    try:
        import onnxruntime
    except ImportError:
        raise UserFacingError("onnxruntime is not installed; run: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        reason = " ".join(str(error).split())[:200]
        raise UserFacingError(f"cannot load ONNX model {model_file.name} ({reason})") from None


def _resolve_params(model_file: Path, params: MdxParams | None, input_shape: list) -> MdxParams:
    """The given settings, else the table's; checked against the model's input [batch, 4, dim_f, dim_t]."""
    params = params or known_params(model_file)
    if params is None:
        known = ", ".join(KNOWN_MDX_MODELS)
        raise UserFacingError(
            f"unknown MDX model {model_file.name} (known: {known}); pass --n_fft, --dim_f and --dim_t "
            "(and --compensate) from the model's documentation"
        )
    params.check()
    declared = [d if isinstance(d, int) and d > 0 else None for d in input_shape]
    if len(declared) != 4 or declared[1] not in (4, None):
        raise UserFacingError(
            f"{model_file.name} takes input of shape {input_shape}; an MDX-Net model takes [batch, 4, dim_f, dim_t]"
        )
    for name, got in (("dim_f", declared[2]), ("dim_t", declared[3])):
        if got is not None and got != getattr(params, name):
            raise UserFacingError(
                f"{model_file.name} expects {name} = {got} but the settings say {getattr(params, name)}; "
                f"pass --{name} {got}"
            )
    return params


def params_with(base: MdxParams | None, **overrides: object) -> MdxParams | None:
    """`base` with the non-None `overrides` applied; a new MdxParams when there is no base but n_fft,
    dim_f and dim_t are all given; otherwise None (look the model up by name)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if base is not None:
        return replace(base, **given)
    if all(key in given for key in ("n_fft", "dim_f", "dim_t")):
        return MdxParams(**given)
    return None


# ------------------------------------------------------------------------------------------- files


@dataclass
class SeparationResult:
    """Written files and the audio's length in seconds (stereo wav at `sample_rate` Hz)."""

    vocal_path: Path
    instrumental_path: Path | None
    duration: float
    sample_rate: int


def separate_file(
    separator: MdxSeparator,
    audio_file_path: str | os.PathLike[str],
    saved_vocal_path: str | os.PathLike[str],
    saved_instrumental_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> SeparationResult:
    """Separate one audio or video file; write the vocals (and the rest) as stereo 16-bit wav."""
    rate = separator.params.sample_rate
    mix = load_stereo(audio_file_path, rate)
    vocals, instrumental = separator.separate(mix, progress)
    vocal_path = write_wav(saved_vocal_path, _fit_to_full_scale(vocals), rate)
    instrumental_path = None
    if saved_instrumental_path is not None:
        instrumental_path = write_wav(saved_instrumental_path, _fit_to_full_scale(instrumental), rate)
    return SeparationResult(vocal_path, instrumental_path, mix.shape[1] / rate, rate)


def _fit_to_full_scale(audio: np.ndarray) -> np.ndarray:
    """Scale down audio whose peak exceeds 1 (so 16-bit PCM does not clip); quieter audio is unchanged."""
    peak = float(np.abs(audio).max(initial=0))
    return audio / peak if peak > 1 else audio
