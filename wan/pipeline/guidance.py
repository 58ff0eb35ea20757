"""Text and audio guidance in one place: which batch the model sees at a step, and how its outputs combine.

A guidance rule turns one sample's conditioning (`GuidanceInputs`, batch 1) into the batch the transformer
runs (`GuidanceBatch`: text, image and audio per sample, plus which sample's refined audio each sample
receives), and combines the batch's predictions into one guided prediction. Every sampler and the
distillation teacher call `Guidance.predict` with a model-forward callable; none of them builds guidance
batches itself, and the transformer has no guidance layout of its own (a batch is independent clips unless
`audio_sources` says otherwise).

Rules are registered by name (`@register_guidance("name")`) and built with `build_guidance(name, ...)`:

- "published": StableAvatar's rule, 3 forwards per guided step on [no audio, audio, audio] with texts
  [negative, negative, prompt]; the adapter runs on the last sample only and sample 1 reuses its output:
  `e = e_uncond + audio * (e_audio - e_uncond) + text * (e_full - e_audio)`.
- "ang": Audio Native Guidance (the paper's section 3.3, derived in docs/audio-native-guidance.md), also 3
  forwards, on [latent-audio pair dropped, audio dropped, full]: texts [negative, prompt, prompt], the
  adapter run on zeroed features for sample 1 and on the audio for sample 2:
  `e = e_pair + text * (e_no_audio - e_pair) + audio * (e_full - e_no_audio)`.

Usage (what a distillation teacher does for one window)::

    guidance = build_guidance("published", text_scale=3.0, audio_scale=5.0)
    forward = transformer_forward(transformer, latents, condition, timestep, num_video_frames)
    prediction = guidance.predict(forward, GuidanceInputs(prompt, negative, image, audio))  # [1, 16, F, h, w]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models import CrossAttentionCache, StableAvatarTransformer3DModel


@dataclass
class GuidanceInputs:
    """One sample's conditioning for one window (all batch 1, any device, any float dtype).

    prompt_embeds: `[1, Lp, text_dim]`, negative_prompt_embeds: `[1, Ln, text_dim]` (unpadded, Lp/Ln <= 512).
    image_embeds: `[1, 257, image_dim]` CLIP tokens.
    audio_embeds: `[1, Na, audio_dim]` wav2vec2 features of the window's audio.
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    image_embeds: torch.Tensor
    audio_embeds: torch.Tensor


@dataclass
class GuidanceBatch:
    """What one transformer call receives, B samples (B = 1 for an unguided step).

    encoder_hidden_states: `[B, L, text_dim]` (zero-padded to the longest text).
    encoder_hidden_states_image: `[B, 257, image_dim]`.
    audio_embeds: `[B, Na, audio_dim]`.
    audio_sources: per sample, the sample whose refined audio it receives, or None for none (the
        transformer's `audio_sources`); None: every sample its own.
    """

    encoder_hidden_states: torch.Tensor
    encoder_hidden_states_image: torch.Tensor
    audio_embeds: torch.Tensor
    audio_sources: tuple[int | None, ...] | None = None

    @property
    def size(self) -> int:
        return self.encoder_hidden_states.shape[0]


# Runs the transformer on a guidance batch (the noisy latents, timestep and the rest are bound in it) and
# returns its flow prediction `[B, 16, F, h, w]`.
ModelForward = Callable[[GuidanceBatch], torch.Tensor]


class Guidance(ABC):
    """A guidance rule. Subclasses define `build_batch` (guided steps) and `combine`.

    Args:
        text_scale, audio_scale: guidance strengths.
        interval: the fraction of the steps, [start, end), on which guidance runs; the other steps run one
            forward with full conditioning (prompt and audio). (0, 1) guides every step.
    """

    name: str = ""

    def __init__(
        self, text_scale: float = 3.0, audio_scale: float = 5.0, interval: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        self.text_scale = float(text_scale)
        self.audio_scale = float(audio_scale)
        self.interval = (float(interval[0]), float(interval[1]))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(text_scale={self.text_scale}, audio_scale={self.audio_scale}, "
            f"interval={self.interval})"
        )

    @property
    def needed(self) -> bool:
        """Whether guidance changes anything; with both scales 1 the rule reduces to e_full (one forward)."""
        return not (self.text_scale == 1.0 and self.audio_scale == 1.0)

    def active(self, step_index: int, num_steps: int) -> bool:
        """Whether step `step_index` of `num_steps` runs the guidance batch."""
        start, end = self.interval
        return self.needed and start <= step_index / num_steps < end

    @abstractmethod
    def build_batch(self, inputs: GuidanceInputs) -> GuidanceBatch:
        """The batch of a guided step."""

    @abstractmethod
    def combine(self, predictions: torch.Tensor) -> torch.Tensor:
        """`[B, 16, F, h, w]` predictions of `build_batch`'s batch -> `[1, 16, F, h, w]` guided prediction."""

    def unguided_batch(self, inputs: GuidanceInputs) -> GuidanceBatch:
        """The batch of an unguided step: one sample with the prompt and the audio."""
        return GuidanceBatch(inputs.prompt_embeds, inputs.image_embeds, inputs.audio_embeds)

    def predict(self, forward: ModelForward, inputs: GuidanceInputs, guided: bool = True) -> torch.Tensor:
        """The (guided) flow prediction `[1, 16, F, h, w]`, float32.

        Args:
            forward: runs the transformer on a `GuidanceBatch` (see `transformer_forward`).
            inputs: the window's conditioning.
            guided: False runs the unguided single forward (e.g. outside the guidance interval).
        """
        if not (guided and self.needed):
            return forward(self.unguided_batch(inputs)).float()
        return self.combine(forward(self.build_batch(inputs)).float())


GUIDANCE_RULES: dict[str, type[Guidance]] = {}


def register_guidance(name: str) -> Callable[[type[Guidance]], type[Guidance]]:
    """Class decorator: make a `Guidance` subclass selectable as `build_guidance(name)`."""

    def register(cls: type[Guidance]) -> type[Guidance]:
        if name in GUIDANCE_RULES:
            raise ValueError(f"a guidance rule named {name!r} is already registered")
        cls.name = name
        GUIDANCE_RULES[name] = cls
        return cls

    return register


def build_guidance(name: str = "published", **scales) -> Guidance:
    """The guidance rule registered as `name`, e.g. `build_guidance("published", text_scale=3, audio_scale=5)`."""
    if name not in GUIDANCE_RULES:
        raise ValueError(f"unknown guidance {name!r}; choose one of {', '.join(GUIDANCE_RULES)}")
    return GUIDANCE_RULES[name](**scales)


@register_guidance("published")
class PublishedGuidance(Guidance):
    """StableAvatar's text and audio guidance (3 forwards per guided step).

    Batch: texts [negative, negative, prompt], the same image, audio [none, audio, audio] with the adapter run
    on sample 2 only (`audio_sources=(None, 2, 2)`).
    Combination: `e = e_uncond + audio * (e_audio - e_uncond) + text * (e_full - e_audio)`.
    """

    def build_batch(self, inputs: GuidanceInputs) -> GuidanceBatch:
        negative, prompt = inputs.negative_prompt_embeds[0], inputs.prompt_embeds[0]
        text = torch.nn.utils.rnn.pad_sequence([negative, negative, prompt], batch_first=True)
        audio = inputs.audio_embeds
        return GuidanceBatch(
            encoder_hidden_states=text,
            encoder_hidden_states_image=inputs.image_embeds.expand(3, -1, -1),
            audio_embeds=torch.cat([torch.zeros_like(audio), audio, audio]),
            audio_sources=(None, 2, 2),
        )

    def combine(self, predictions: torch.Tensor) -> torch.Tensor:
        uncond, audio_only, full = predictions.chunk(3)
        return uncond + self.audio_scale * (audio_only - uncond) + self.text_scale * (full - audio_only)


@register_guidance("ang")
class AudioNativeGuidance(Guidance):
    """Audio Native Guidance (StableAvatar paper, section 3.3), 3 forwards per guided step like the published rule.

    The audio adapter's refined audio embedding is computed from the noisy latents at every step, so it is
    part of what the model predicts, jointly with the latents: guidance acts on the pair (latents, refined
    audio). Batch: texts [negative, prompt, prompt], audio [none, zeroed features, audio] with
    `audio_sources=(None, 1, 2)`: sample 0 has the latent-audio pair dropped (no refined audio at all),
    sample 1 has the audio dropped (the adapter still refines its null embedding from the latents, the
    condition the model was trained with under audio dropout), sample 2 has full conditioning.
    Combination (docs/audio-native-guidance.md derives it):
    `e = e_pair + text * (e_no_audio - e_pair) + audio * (e_full - e_no_audio)`.
    """

    def build_batch(self, inputs: GuidanceInputs) -> GuidanceBatch:
        negative, prompt = inputs.negative_prompt_embeds[0], inputs.prompt_embeds[0]
        text = torch.nn.utils.rnn.pad_sequence([negative, prompt, prompt], batch_first=True)
        audio = inputs.audio_embeds
        silence = torch.zeros_like(audio)
        return GuidanceBatch(
            encoder_hidden_states=text,
            encoder_hidden_states_image=inputs.image_embeds.expand(3, -1, -1),
            audio_embeds=torch.cat([silence, silence, audio]),
            audio_sources=(None, 1, 2),
        )

    def combine(self, predictions: torch.Tensor) -> torch.Tensor:
        pair_dropped, audio_dropped, full = predictions.chunk(3)
        return (
            pair_dropped
            + self.text_scale * (audio_dropped - pair_dropped)
            + self.audio_scale * (full - audio_dropped)
        )


def transformer_forward(
    transformer: StableAvatarTransformer3DModel,
    latents: torch.Tensor,
    condition: torch.Tensor,
    timestep: torch.Tensor,
    num_video_frames: int,
    context_cache: CrossAttentionCache | None = None,
) -> ModelForward:
    """A `ModelForward` for one window at one timestep: every sample of the batch denoises the same latents.

    Args:
        latents: `[1, 16, F, h, w]` noisy latents, on the transformer's device.
        condition: `[1, 20, F, h, w]` first-frame mask and reference latents, on the same device.
        timestep: scalar or `[1]` in [0, 1000].
        num_video_frames: pixel frames the window's audio covers (`4 (F - 1) + 1` for the Wan VAE).
        context_cache: text/image keys and values kept across calls with the same batch layout.
    """
    dtype = transformer.dtype
    device = latents.device
    model_input = torch.cat([latents, condition], dim=1).to(dtype)

    def forward(batch: GuidanceBatch) -> torch.Tensor:
        size = batch.size
        return transformer(
            hidden_states=model_input.expand(size, -1, -1, -1, -1),
            timestep=timestep.reshape(-1)[:1].expand(size).to(device),
            encoder_hidden_states=batch.encoder_hidden_states.to(device, dtype),
            encoder_hidden_states_image=batch.encoder_hidden_states_image.to(device, dtype),
            audio_embeds=batch.audio_embeds.to(device, dtype),
            num_video_frames=num_video_frames,
            audio_sources=batch.audio_sources,
            context_cache=context_cache,
            shared_input=True,  # every sample denoises the same latents at the same timestep
        ).sample

    return forward
