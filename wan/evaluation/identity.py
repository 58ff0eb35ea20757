"""Identity over time: cosine similarity of face embeddings to the reference image's, per second.

Embedders: DINOv2 through transformers (default; a local model folder, or random weights when none is
given, which only measure how much the picture of the face changes) and ArcFace from a user-supplied ONNX
file (the usual face-recognition measure, "CSIM").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import UserFacingError
from .timeseries import linear_drop

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class FaceEmbedder(Protocol):
    name: str

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """`[N, H, W, 3]` RGB uint8 face crops -> `[N, D]` embeddings."""


def _resize(crops: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA) for crop in crops])


class Dinov2Embedder:
    """DINOv2 image embedding (the pooled, layer-normed CLS token) of 224x224 crops, ImageNet-normalised.

    Args:
        model_dir: a local transformers DINOv2 folder (e.g. a download of facebook/dinov2-small); None
            builds a model of `config` (default DINOv2-small) with random weights (seeded).
    """

    def __init__(
        self, model_dir: str | Path | None = None, batch_size: int = 32, config: Any | None = None
    ) -> None:
        from transformers import Dinov2Config, Dinov2Model

        if model_dir is None:
            torch.manual_seed(0)
            config = config or Dinov2Config(
                hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224
            )
            self.model, self.name = Dinov2Model(config), "dinov2 (random weights)"
        else:
            if not Path(model_dir).is_dir():
                raise UserFacingError(f"DINOv2 model folder not found: {model_dir}")
            self.model, self.name = (
                Dinov2Model.from_pretrained(str(model_dir)),
                f"dinov2 ({Path(model_dir).name})",
            )
        self.model.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        pixels = (_resize(crops, 224).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        out = [self.model(pixel_values=b).pooler_output for b in tensor.split(self.batch_size)]
        return torch.cat(out).numpy()


class OnnxModel:
    """An ONNX network with one float32 NCHW (or NCTHW) input, run by onnxruntime on the CPU."""

    def __init__(self, path: str | Path, what: str) -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise UserFacingError(f"{what} model not found: {path}")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001
            raise UserFacingError(
                f"cannot load {what} model {path.name}: {str(error).splitlines()[0]}"
            ) from None
        self.input = self.session.get_inputs()[0]
        self.name = path.stem

    def static_dim(self, axis: int, default: int) -> int:
        value = self.input.shape[axis]
        return value if isinstance(value, int) and value > 0 else default

    def run(self, batch: np.ndarray) -> np.ndarray:
        output = self.session.run(None, {self.input.name: batch.astype(np.float32)})[0]
        return output.reshape(len(batch), -1)


class ArcFaceEmbedder:
    """ArcFace (e.g. insightface's w600k_r50.onnx): 112x112 RGB crops scaled to [-1, 1]."""

    def __init__(self, path: str | Path) -> None:
        self.model = OnnxModel(path, "ArcFace")
        self.name = f"arcface ({self.model.name})"
        self.size = self.model.static_dim(2, 112)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        pixels = (_resize(crops, self.size).astype(np.float32) - 127.5) / 127.5
        return np.concatenate(
            [self.model.run(pixels[i : i + 1].transpose(0, 3, 1, 2)) for i in range(len(pixels))]
        )


def cosine_similarity(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`[N]` cosine similarity of each row of `[N, D]` embeddings to the `[D]` reference."""
    embeddings = np.asarray(embeddings, np.float64)
    reference = np.asarray(reference, np.float64).reshape(-1)
    norms = np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference)
    return embeddings @ reference / np.maximum(norms, 1e-12)


@dataclass
class IdentityResult:
    """`per_second`: mean similarity of each whole second's sampled frames; `drop_per_minute`: the fall of a
    least-squares line through them over 60 s (negative: it rises)."""

    embedder: str
    mean: float
    per_second: np.ndarray = field(repr=False)
    drop_per_minute: float

    def as_dict(self) -> dict:
        return {
            "embedder": self.embedder,
            "mean": self.mean,
            "drop_per_minute": self.drop_per_minute,
            "per_second": np.round(self.per_second, 4).tolist(),
        }


def measure_identity(
    embedder: FaceEmbedder,
    crops: np.ndarray,
    reference_crop: np.ndarray,
    fps: int = 25,
    samples_per_second: int = 5,
) -> IdentityResult:
    """Similarity of `[T, H, W, 3]` face crops (sampled `samples_per_second` times a second) to the
    reference face crop `[H, W, 3]`."""
    stride = max(1, fps // samples_per_second)
    picked = np.arange(0, len(crops), stride)
    similarity = cosine_similarity(embedder(crops[picked]), embedder(reference_crop[None])[0])
    seconds = picked // fps
    per_second = np.array([similarity[seconds == s].mean() for s in range(int(seconds.max()) + 1)])
    whole = per_second[: len(crops) // fps] if len(crops) >= fps else per_second
    return IdentityResult(
        embedder=embedder.name,
        mean=float(similarity.mean()),
        per_second=whole,
        drop_per_minute=linear_drop(whole, span=60.0) if len(whole) > 1 else 0.0,
    )
