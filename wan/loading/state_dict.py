"""Safe reading of checkpoint files: safetensors, or pickles with `torch.load(weights_only=True)`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError, MissingFileError

# Wrappers that training frameworks put around a state dict.
_WRAPPER_KEYS = ("state_dict", "module", "model")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from `.pt`/`.pth`/`.bin`/`.ckpt` without running pickled code.

    A dict wrapped in `"state_dict"`, `"module"` or `"model"` (as DeepSpeed and Lightning save them) is
    unwrapped. Tensors are returned on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Old (non-zip) pickles cannot be memory-mapped.
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError and friends: say what the file is, not a traceback
        raise CheckpointError(
            f"{path} is not a readable weights file ({type(error).__name__}: {error})"
        ) from None
    return unwrap_state_dict(loaded, source=str(path))


def unwrap_state_dict(loaded: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Peel wrapper dicts off until a flat `{name: tensor}` mapping remains."""
    while isinstance(loaded, Mapping):
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(loaded):
            return dict(tensors)
        inner = next((loaded[k] for k in _WRAPPER_KEYS if k in loaded), None)
        if inner is None:
            break
        loaded = inner
    raise CheckpointError(f"{source} holds no state dict of tensors")
