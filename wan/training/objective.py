"""The training objective: flow matching with StableAvatar's mask-weighted loss and motion term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .encode import EncodedBatch

# Loss weightings drawn once per step, as the published trainer does.
WHOLE_FACE_AND_LIPS, FACE_ONLY, LIPS_ONLY = "1+face+lip", "face", "lip"


@dataclass
class ObjectiveConfig:
    """Defaults are the published trainer's.

    mask_probabilities: chances of weighting the per-element loss by (1 + face + lip), face only, lip only.
    motion_weight: weight r of the motion term: loss = (1 - r) * loss + r * motion (0 turns it off).
    motion_axis: 'channels' (what the published code computes: differences along the latent channels)
        or 'frames' (differences between consecutive latent frames).
    audio_dropout: chance a step trains with zeroed audio features (keeps audio guidance meaningful).
    clip_level_audio: chance a step lets every video token attend to the whole clip's audio.
    """

    mask_probabilities: tuple[float, float, float] = (0.4, 0.1, 0.5)
    motion_weight: float = 0.25
    motion_axis: str = "channels"
    audio_dropout: float = 0.1
    clip_level_audio: float = 0.3

    def __post_init__(self) -> None:
        if abs(sum(self.mask_probabilities) - 1.0) > 1e-6 or min(self.mask_probabilities) < 0:
            raise ValueError(
                f"mask probabilities must be non-negative and sum to 1, got {self.mask_probabilities}"
            )
        if self.motion_axis not in ("channels", "frames"):
            raise ValueError(f"motion axis must be 'channels' or 'frames', got {self.motion_axis!r}")


@dataclass
class StepChoices:
    """The random decisions of one training step (drawn from the step's generator, so resumable)."""

    mask_weighting: str
    drop_audio: bool
    clip_level_audio: bool

    @classmethod
    def draw(cls, config: ObjectiveConfig, generator: torch.Generator) -> StepChoices:
        u = torch.rand(3, generator=generator).tolist()
        whole, face, _ = config.mask_probabilities
        weighting = WHOLE_FACE_AND_LIPS if u[0] < whole else FACE_ONLY if u[0] < whole + face else LIPS_ONLY
        return cls(weighting, u[1] < config.audio_dropout, u[2] < config.clip_level_audio)


def sample_sigmas(schedule_sigmas: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Noise levels `[B]`: the shifted schedule's sigma at a uniformly drawn training-timestep index."""
    num_train_timesteps = schedule_sigmas.numel() - 1 if schedule_sigmas[-1] == 0 else schedule_sigmas.numel()
    indices = torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    return schedule_sigmas[indices]


def noisy_latents_and_target(
    latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = (1 - s) x0 + s eps, and the flow target eps - x0. `sigmas` `[B]`."""
    s = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents)
    return (1.0 - s) * latents + s * noise, noise - latents


def masked_flow_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    face_masks: torch.Tensor,
    lip_masks: torch.Tensor,
    choices: StepChoices,
    config: ObjectiveConfig,
) -> torch.Tensor:
    """Scalar loss.

    Args:
        prediction, target: `[B, C, F, h, w]`.
        face_masks, lip_masks: `[B, 1, T, H, W]` pixel-space masks in [0, 1]; resized (trilinear) to the
            latent grid here.
    """
    size = target.shape[-3:]
    face = F.interpolate(face_masks.float(), size=size, mode="trilinear", align_corners=False)
    lip = F.interpolate(lip_masks.float(), size=size, mode="trilinear", align_corners=False)
    per_element = F.mse_loss(prediction.float(), target.float(), reduction="none")
    weight = {WHOLE_FACE_AND_LIPS: 1 + face + lip, FACE_ONLY: face, LIPS_ONLY: lip}[choices.mask_weighting]
    loss = (per_element * weight).mean()
    if config.motion_weight > 0:
        axis = 1 if config.motion_axis == "channels" else 2
        if prediction.shape[axis] > 2:
            motion = F.mse_loss(prediction.float().diff(dim=axis), target.float().diff(dim=axis))
            loss = loss * (1 - config.motion_weight) + motion * config.motion_weight
    return loss


def flow_matching_loss(
    transformer: torch.nn.Module,
    encoded: EncodedBatch,
    schedule_sigmas: torch.Tensor,
    generator: torch.Generator,
    objective: ObjectiveConfig,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The loss of one encoded batch with this step's random draws (posterior sample, noise, noise level,
    mask weighting, audio dropout, clip-level audio), all from `generator`."""
    latents, condition = encoded.sample(generator)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    sigmas = sample_sigmas(schedule_sigmas, latents.shape[0], generator).to(latents.device)
    noisy, target = noisy_latents_and_target(latents, noise, sigmas)
    choices = StepChoices.draw(objective, generator)
    audio = torch.zeros_like(encoded.audio) if choices.drop_audio else encoded.audio
    prediction = transformer(
        hidden_states=torch.cat([noisy, condition], dim=1).to(dtype),
        timestep=sigmas * 1000.0,
        encoder_hidden_states=encoded.text.to(dtype),
        encoder_hidden_states_image=encoded.image.to(dtype),
        audio_embeds=audio.to(dtype),
        num_video_frames=encoded.num_video_frames,
        clip_level_audio=choices.clip_level_audio,
    ).sample
    return masked_flow_loss(prediction, target, encoded.face_masks, encoded.lip_masks, choices, objective)
