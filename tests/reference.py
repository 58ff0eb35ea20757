"""Access to the reference fixtures (outputs of the published StableAvatar code) and their weight rule."""

from __future__ import annotations

import json
import os
import zlib
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

_DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "reference"


def reference_dir() -> Path:
    """The fixture folder: `$STABLEAVATAR_REFERENCE_DIR`, else `../shared/fixtures/reference`."""
    return Path(os.environ.get("STABLEAVATAR_REFERENCE_DIR", _DEFAULT_DIR)).resolve()


def require_file(name: str) -> Path:
    """Path of a fixture file; skips the test (with the reason) when the fixture set lacks it."""
    path = reference_dir() / name
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found (set STABLEAVATAR_REFERENCE_DIR)")
    return path


@cache
def load_json(name: str) -> dict:
    return json.loads(require_file(name).read_text())


@cache
def load_tensors(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(require_file(name)))


def formula_weight(key: str, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """The fixtures' weight rule: N(0, 0.02) seeded by crc32 of the reference key, +1 for 1-D `*weight`."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    weight = torch.randn(tuple(shape), generator=generator, dtype=torch.float32) * 0.02
    if len(shape) == 1 and key.endswith("weight"):
        weight += 1.0
    return weight


def formula_state_dict(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A whole state dict in reference naming, every entry from the weight rule."""
    return {key: formula_weight(key, shape) for key, shape in keys.items()}


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref||, in float64."""
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).norm() / ref.norm())
