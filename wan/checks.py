"""Checks of what the user named, shared by every entry point; each failure is a one-line `UserFacingError`.

Command lines run them on their arguments before anything slow (loading a model, decoding a video), so a
wrong path or an impossible number costs seconds, not a whole generation. None of them writes anything.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .errors import MissingFileError, UserFacingError


def existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """`path` as a Path when it is an existing file; `what` names it in the message ("audio file", ...)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what} not found: {path}; check the path")
    if path.is_dir():
        raise UserFacingError(f"{what} {path} is a folder, not a file; pass the file itself")
    if not path.is_file():
        raise UserFacingError(f"{what} {path} is not a regular file; pass a file")
    return path


def existing_folder(path: str | os.PathLike[str], what: str) -> Path:
    """`path` as a Path when it is an existing folder; `what` says which ("the folder of clips", ...)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"folder not found: {path}; pass {what}")
    if not path.is_dir():
        raise UserFacingError(f"{path} is a file, not a folder; pass {what}")
    return path


def writable_file(path: str | os.PathLike[str], what: str) -> Path:
    """`path` can be written as a file: it is not a folder and its folder exists or can be created."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise UserFacingError(f"{what} {str(path)!r} has no file name; pass a file path")
    if path.is_dir():
        raise UserFacingError(f"{what} {path} is a folder; pass a file path (a new name inside it)")
    _creatable(path.parent, what)
    return path


def writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """`path` is a folder files can be written in, or can be created as one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserFacingError(
            f"{what} {path} is a file, not a folder; pass a folder (it is created if missing)"
        )
    _creatable(path, what)
    return path


def _creatable(folder: Path, what: str) -> None:
    """The nearest existing folder at or above `folder` accepts new files (probed with an unnamed
    temporary file, so nothing is left behind)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserFacingError(f"{what} {folder}: {existing} is a file, not a folder; pick another location")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserFacingError(
            f"{what} {folder}: cannot write in {existing} ({reason}); pick a writable location"
        ) from None


def file_name(name: str, flag: str) -> str:
    """A bare file name (what --output_name takes): not empty, not '.' or '..'."""
    if not name.strip() or name in (".", "..") or name.endswith(("/", os.sep)):
        raise UserFacingError(f"{flag} {name!r} is not a file name; pass one such as video_with_audio.mp4")
    return name


def finite(value: float, what: str, hint: str = "") -> float:
    """`value` when it is a finite number (not NaN or infinite)."""
    if not math.isfinite(value):
        raise UserFacingError(f"{what} must be a finite number{hint}, got {value}")
    return value


def at_least(value: int, minimum: int, what: str, hint: str = "") -> int:
    """`value` when it is `minimum` or more."""
    if value < minimum:
        raise UserFacingError(f"{what} must be at least {minimum}{hint}, got {value}")
    return value


def model_folder(path: str | os.PathLike[str]) -> Path:
    """A converted (diffusers) model folder: `model_index.json` and a sub-folder for every component it lists."""
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise UserFacingError(
            f"{path} is not a converted model folder (no model_index.json); run python -m wan.convert"
        )
    try:
        components = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserFacingError(f"{index} is not valid JSON ({error}); convert the model again") from None
    for name, value in components.items():
        if name.startswith("_") or not isinstance(value, list) or None in value:
            continue
        if not (path / name).is_dir():
            raise UserFacingError(
                f"model folder {path} has no {name}/ (incomplete copy?); copy the whole folder or run "
                "python -m wan.convert again"
            )
    return path
