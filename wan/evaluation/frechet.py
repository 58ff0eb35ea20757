"""FID and FVD: the Fréchet distance between Gaussians fitted to features of real and generated frames
(FID, an Inception-v3 pool feature network) or 16-frame clips (FVD, an I3D network), when the user supplies
the feature network as ONNX. The network receives float32 RGB in [0, 1] at its declared input size
(NCHW for FID, NCTHW for FVD); any normalisation it needs belongs inside the ONNX graph."""

from __future__ import annotations

import numpy as np
from scipy import linalg

from ..errors import UserFacingError
from .identity import OnnxModel, _resize


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of `[N, D]` feature sets."""
    if len(real) < 2 or len(fake) < 2:
        raise UserFacingError("the Fréchet distance needs at least two feature vectors on each side")
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    cov_r = np.atleast_2d(np.cov(real, rowvar=False))
    cov_f = np.atleast_2d(np.cov(fake, rowvar=False))
    root, _ = linalg.sqrtm(cov_r @ cov_f, disp=False)
    if not np.isfinite(root).all():
        offset = np.eye(len(cov_r)) * 1e-6
        root = linalg.sqrtm((cov_r + offset) @ (cov_f + offset))
    root = np.real(root)
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r) + np.trace(cov_f) - 2 * np.trace(root))


class FrameFeatures:
    """FID features of video frames `[T, H, W, 3]` uint8 with an ONNX image network."""

    def __init__(self, path) -> None:
        self.model = OnnxModel(path, "FID feature")
        self.size = self.model.static_dim(2, 299)

    def __call__(self, frames: np.ndarray, batch_size: int = 16) -> np.ndarray:
        pixels = _resize(frames, self.size).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return np.concatenate(
            [self.model.run(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
        )


class ClipFeatures:
    """FVD features of consecutive non-overlapping clips of a video with an ONNX video network."""

    def __init__(self, path) -> None:
        self.model = OnnxModel(path, "FVD feature")
        self.length = self.model.static_dim(2, 16)
        self.size = self.model.static_dim(3, 224)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        clips = len(frames) // self.length
        if clips < 1:
            raise UserFacingError(f"FVD needs videos of at least {self.length} frames")
        pixels = _resize(frames[: clips * self.length], self.size).astype(np.float32) / 255.0
        batch = pixels.reshape(clips, self.length, self.size, self.size, 3).transpose(0, 4, 1, 2, 3)
        return np.concatenate([self.model.run(batch[i : i + 1]) for i in range(clips)])
