"""Safe reading of checkpoint files (safetensors, or pickles with `torch.load(weights_only=True)`), and the
conversion machinery the encoder loaders share: every parameter of the maintained model names the released
key it comes from (the converter's inverse), so missing and unexpected released keys are both reported by
their released name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file

from ..errors import CheckpointError, MissingFileError

# (released key, transform of the released tensor into the model's tensor or None for identity)
Source = tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]
SourceOf = Callable[[str], Source]
StateDictOrPath = str | Path | Mapping[str, torch.Tensor]
ModelT = TypeVar("ModelT", bound=torch.nn.Module)

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


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    source_of: SourceOf,
    *,
    ignored: Callable[[str], bool] = lambda key: False,
    what: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Build the model's state dict from a released one.

    `targets` is the model's own `state_dict()` (meta tensors are fine: only names and shapes are read).
    Raises `CheckpointError` naming the released key when one is missing, unexpected (and not `ignored`) or
    converts to the wrong shape.
    """
    converted: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for target, reference in targets.items():
        name, transform = source_of(target)
        if name not in state_dict:
            missing.append(name)
            continue
        tensor = state_dict[name] if transform is None else transform(state_dict[name])
        if tuple(tensor.shape) != tuple(reference.shape):
            raise CheckpointError(
                f"{what}: key '{name}' has shape {tuple(state_dict[name].shape)}, which does not fit "
                f"'{target}' {tuple(reference.shape)} (wrong model size or config?)"
            )
        converted[target] = tensor
        used.add(name)
    if missing:
        missing = list(dict.fromkeys(missing))
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{what}: missing key '{missing[0]}'{more} (truncated file or wrong model?)")
    unexpected = [key for key in state_dict if key not in used and not ignored(key)]
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{what}: unexpected key '{unexpected[0]}'{more} (wrong file or config?)")
    return converted


def load_converted(
    build: Callable[[], ModelT],
    path_or_state_dict: StateDictOrPath,
    source_of: SourceOf,
    *,
    ignored: Callable[[str], bool] = lambda key: False,
    dtype: torch.dtype = torch.float32,
    what: str = "checkpoint",
) -> ModelT:
    """Build a model with parameters on the meta device, then assign the converted released tensors.

    Nothing is allocated twice (memory-mapped file tensors of the requested dtype are used as they are).
    The model is returned in eval mode with gradients off: these encoders are always frozen.
    """
    if isinstance(path_or_state_dict, Mapping):
        state_dict = path_or_state_dict
    else:
        state_dict = load_state_dict_file(path_or_state_dict)
        what = f"{what} {path_or_state_dict}"
    with init_empty_weights(include_buffers=False):  # buffers (e.g. position ids) stay real
        model = build()
    converted = convert_state_dict(state_dict, model.state_dict(), source_of, ignored=ignored, what=what)
    converted = {key: tensor.to(dtype) for key, tensor in converted.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval().requires_grad_(False)
