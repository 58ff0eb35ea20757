"""What every command-line entry point shares: one-line errors, dtype names, atomic output folders."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import UserFacingError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise UserFacingError(f"unknown dtype {name!r}; use one of {', '.join(sorted(DTYPES))}") from None


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so whatever cleans up after Ctrl-C cleans up after it too."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the program at once
    raise Terminated


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread (elsewhere it is left as it is)."""
    try:
        previous, installed = signal.signal(signal.SIGTERM, _raise_terminated), True
    except ValueError:  # not the main thread: only the main thread may set handlers
        previous, installed = None, False
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run `main`; a UserFacingError becomes `error: <message>` on stderr and exit code 2.

    Ctrl-C (SIGINT) and SIGTERM unwind the program like an exception, so every `with` block removes its
    half-written files; one line on stderr says so and the exit code is 128 + the signal's number (130, 143).
    """
    try:
        with sigterm_raises():
            return int(main(argv) or 0)
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print("stopped (SIGTERM); nothing was written under the final name", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted; nothing was written under the final name", file=sys.stderr)
        return 128 + signal.SIGINT


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target`, on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
