"""Small helpers for measures over time."""

from __future__ import annotations

import numpy as np


def per_second(values: np.ndarray, fps: int = 25) -> np.ndarray:
    """Means over each whole second of a per-frame series."""
    seconds = len(values) // fps
    return np.asarray(values[: seconds * fps]).reshape(seconds, fps).mean(axis=1)


def linear_drop(values: np.ndarray, span: float | None = None) -> float:
    """How much a least-squares line through `values` (one per unit of time) falls over `span` units
    (default: their length); negative when it rises."""
    x = np.arange(len(values), dtype=np.float64)
    slope = np.polyfit(x, np.asarray(values, np.float64), 1)[0]
    return float(-slope * (len(values) if span is None else span))
