"""Model code: the StableAvatar transformer (Wan2.1 DiT + audio adapter) and its configurations."""

from .attention import CrossAttentionCache
from .audio_adapter import StableAvatarAudioAdapter
from .configs import STABLEAVATAR_1_3B, STABLEAVATAR_14B, TINY, config_from_reference
from .transformer_stableavatar import StableAvatarTransformer3DModel, StableAvatarTransformerBlock

__all__ = [
    "STABLEAVATAR_1_3B",
    "STABLEAVATAR_14B",
    "TINY",
    "CrossAttentionCache",
    "StableAvatarAudioAdapter",
    "StableAvatarTransformer3DModel",
    "StableAvatarTransformerBlock",
    "config_from_reference",
]
