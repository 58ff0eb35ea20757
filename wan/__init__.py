"""StableAvatar on diffusers: audio-driven, infinite-length avatar video generation."""

__version__ = "0.1.0"
