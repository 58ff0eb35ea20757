"""Safe reading of checkpoint files (safetensors, or pickles with `torch.load(weights_only=True)`), and the
conversion machinery the encoder loaders share: every parameter of the maintained model names the released
key it comes from (the converter's inverse), so missing and unexpected released keys are both reported by
their released name."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import init_empty_weights
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..checks import existing_file
from ..errors import CheckpointError

# (released key, transform of the released tensor into the model's tensor or None for identity)
Source = tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]
SourceOf = Callable[[str], Source]
StateDictOrPath = str | Path | Mapping[str, torch.Tensor]
ModelT = TypeVar("ModelT", bound=torch.nn.Module)

# Wrappers that training frameworks put around a state dict.
_WRAPPER_KEYS = ("state_dict", "module", "model")
_PICKLE_PROTO = b"\x80"  # the first byte of every pickle since protocol 2
# torch.load(weights_only=True) names what a refused pickle would have called, e.g. "GLOBAL posix.system".
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from `.pt`/`.pth`/`.bin`/`.ckpt` without running pickled code.

    A dict wrapped in `"state_dict"`, `"module"` or `"model"` (as DeepSpeed and Lightning save them) is
    unwrapped. Tensors are returned on the CPU. A truncated or foreign file, or a pickle that would call
    anything but tensor constructors, raises a one-line `CheckpointError`.
    """
    path = check_weights_file(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        if zipfile.is_zipfile(path):
            loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        else:  # old (non-zip) pickles cannot be memory-mapped
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every unreadable file gets one line naming it
        raise weights_error(path, error) from None
    return unwrap_state_dict(loaded, source=str(path))


def check_weights_file(path: str | Path) -> Path:
    """`path` when it looks like a complete weights file, judged from its header alone (cheap, so command
    lines call it before loading anything else): a safetensors header that covers the file, a zip archive
    (PyTorch's format) or an old-style pickle."""
    path = existing_file(path, "checkpoint file")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt"):
                return path
        if zipfile.is_zipfile(path):
            return path
        with path.open("rb") as handle:
            if handle.read(1) == _PICKLE_PROTO:
                return path
    except Exception as error:  # noqa: BLE001
        raise weights_error(path, error) from None
    raise CheckpointError(
        f"{path} is not a weights file (neither safetensors nor a PyTorch archive); pass the .safetensors or "
        ".pt file itself"
    )


def check_safe_pickle(path: str | Path) -> Path:
    """Refuse a `torch.save` file that would call anything but what `torch.load(weights_only=True)` allows
    (plus accelerate's numpy RNG state), before a loader that trusts it reads it; memory-mapped, so no
    tensor data is read."""
    path = existing_file(path, "checkpoint file")
    try:
        accelerate_load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))
    except Exception as error:  # noqa: BLE001
        raise weights_error(path, error) from None
    return path


@contextmanager
def library_load_errors(source: str | Path) -> Iterator[None]:
    """Around a library's `from_pretrained` of `source`: a pickle its `weights_only` loading refused, or a
    broken safetensors file, becomes the one-line error (diffusers and transformers wrap them in long
    messages of their own); anything else passes through."""
    try:
        yield
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, (pickle.UnpicklingError, SafetensorError)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise weights_error(Path(source), cause) from None


def weights_error(path: Path, error: BaseException) -> CheckpointError:
    """The one-line message for a weights file that could not be read."""
    reason = " ".join(str(error).split())
    refused = _REFUSED_GLOBAL.search(reason)
    if isinstance(error, pickle.UnpicklingError) and refused:
        return CheckpointError(
            f"unsafe pickle refused: {path} would call {refused.group(1)} when loaded; only tensors are "
            "accepted, so use a .safetensors file (or re-save the weights as a plain state dict)"
        )
    if path.is_dir():
        return CheckpointError(
            f"{path} holds a weights file that cannot be read ({type(error).__name__}: {reason}); copy or "
            "convert the folder again"
        )
    if path.suffix == ".safetensors":
        return CheckpointError(
            f"{path} is not a valid, complete safetensors file ({reason}); download or save it again"
        )
    return CheckpointError(
        f"{path} is not a readable weights file ({type(error).__name__}: {reason}); pass a .safetensors "
        "or PyTorch .pt state dict"
    )


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
