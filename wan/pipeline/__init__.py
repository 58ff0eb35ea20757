"""Generation: the user-facing pipeline, the sliding-window sampler, window schedule and conditioning."""

from .guidance import (
    GUIDANCE_RULES,
    AudioNativeGuidance,
    Guidance,
    GuidanceBatch,
    GuidanceInputs,
    PublishedGuidance,
    build_guidance,
    register_guidance,
    transformer_forward,
)
from .pipeline import StableAvatarOutput, StableAvatarPipeline
from .sampler import SamplingConditions, SlidingWindowSampler
from .windows import Window, blend_weights, plan_windows

__all__ = [
    "AudioNativeGuidance",
    "GUIDANCE_RULES",
    "Guidance",
    "GuidanceBatch",
    "GuidanceInputs",
    "PublishedGuidance",
    "SamplingConditions",
    "SlidingWindowSampler",
    "StableAvatarOutput",
    "StableAvatarPipeline",
    "Window",
    "blend_weights",
    "build_guidance",
    "plan_windows",
    "register_guidance",
    "transformer_forward",
]
