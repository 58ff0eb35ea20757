"""Run a measurement in a fresh process so its peak memory is its own, not the benchmark driver's."""

from __future__ import annotations

import multiprocessing as mp
import resource
from collections.abc import Callable
from typing import Any


def _child(function: Callable[..., dict], kwargs: dict, queue: mp.Queue) -> None:
    result = function(**kwargs)
    # ru_maxrss is in KiB on Linux: the process's peak resident memory, weights and activations included.
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def run_isolated(function: Callable[..., dict], **kwargs: Any) -> dict:
    """Call `function(**kwargs)` in a spawned process; returns its result dict plus `peak_rss_mib`."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(function, kwargs, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode:
        raise RuntimeError(f"measurement {function.__name__} failed with exit code {process.exitcode}")
    return result


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row[c]).ljust(widths[c]) for c in columns))


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
