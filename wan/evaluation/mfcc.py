"""MFCC features as SyncNet's audio stream reads them.

The public SyncNet evaluation computes 13 cepstral coefficients every 10 ms over 25 ms rectangular windows of
16-bit PCM at 16 kHz (pre-emphasis 0.97, a 512-point FFT, 26 mel filters from 0 Hz to Nyquist, DCT-II,
sinusoidal liftering 22, coefficient 0 replaced by the log frame energy): 100 feature frames per second,
4 per 25 fps video frame. This module computes exactly that definition with numpy.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import dct

from ..generation_settings import SAMPLE_RATE

WINDOW_SECONDS = 0.025
STEP_SECONDS = 0.01
NUM_CEPSTRA = 13
NUM_FILTERS = 26
NFFT = 512
PREEMPHASIS = 0.97
LIFTER = 22


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    num_filters: int = NUM_FILTERS, nfft: int = NFFT, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """`[num_filters, nfft // 2 + 1]` triangular filters, equally spaced in mel from 0 Hz to Nyquist, with
    edges on whole FFT bins (`floor((nfft + 1) * hz / sample_rate)`)."""
    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), num_filters + 2)
    bins = np.floor((nfft + 1) * mel_to_hz(mels) / sample_rate).astype(int)
    bank = np.zeros((num_filters, nfft // 2 + 1))
    index = np.arange(nfft // 2 + 1)
    for j in range(num_filters):
        left, centre, right = bins[j], bins[j + 1], bins[j + 2]
        rising = (index >= left) & (index < centre)
        falling = (index >= centre) & (index < right)
        bank[j, rising] = (index[rising] - left) / (centre - left)
        bank[j, falling] = (right - index[falling]) / (right - centre)
    return bank


def frame_signal(signal: np.ndarray, length: int, step: int) -> np.ndarray:
    """`[N, length]` frames every `step` samples; the end is zero-padded so the last samples get a frame."""
    count = 1 if len(signal) <= length else 1 + int(np.ceil((len(signal) - length) / step))
    padded = np.concatenate([signal, np.zeros((count - 1) * step + length - len(signal))])
    starts = np.arange(count)[:, None] * step
    return padded[starts + np.arange(length)[None, :]]


def pcm16_scale(waveform: np.ndarray) -> np.ndarray:
    """A float waveform in [-1, 1] as the 16-bit integer sample values SyncNet's MFCC reads."""
    return np.clip(np.round(np.asarray(waveform, np.float64) * 32768.0), -32768, 32767)


def mfcc(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`[13, N]` MFCCs (N = 100 per second) of a mono float waveform in [-1, 1] at `sample_rate` (16 kHz)."""
    signal = pcm16_scale(waveform)
    signal = np.concatenate([signal[:1], signal[1:] - PREEMPHASIS * signal[:-1]])
    frames = frame_signal(signal, round(WINDOW_SECONDS * sample_rate), round(STEP_SECONDS * sample_rate))
    power = np.abs(np.fft.rfft(frames, NFFT)) ** 2 / NFFT
    eps = np.finfo(np.float64).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    filtered = power @ mel_filterbank(NUM_FILTERS, NFFT, sample_rate).T
    filtered = np.where(filtered == 0, eps, filtered)
    cepstra = dct(np.log(filtered), type=2, axis=1, norm="ortho")[:, :NUM_CEPSTRA]
    cepstra = cepstra * (1 + (LIFTER / 2) * np.sin(np.pi * np.arange(NUM_CEPSTRA) / LIFTER))
    cepstra[:, 0] = np.log(energy)
    return cepstra.T
