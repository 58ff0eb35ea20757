"""Generation: the user-facing pipeline, the sliding-window sampler, window schedule and conditioning."""

from .pipeline import StableAvatarOutput, StableAvatarPipeline
from .sampler import GuidanceScales, SamplingConditions, SlidingWindowSampler
from .windows import Window, blend_weights, plan_windows

__all__ = [
    "GuidanceScales",
    "SamplingConditions",
    "SlidingWindowSampler",
    "StableAvatarOutput",
    "StableAvatarPipeline",
    "Window",
    "blend_weights",
    "plan_windows",
]
