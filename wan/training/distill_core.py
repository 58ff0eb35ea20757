"""The pieces of few-step distillation: the teacher's guided samples, the student's grid, the two losses.

A student samples in N steps with ONE forward per step (prompt and audio, no guidance batch) on the same
flow-matching Euler schedule as its teacher (the folder's scheduler, N steps). Two objectives:

* `trajectory_regression_loss` (the recipe shipped): the teacher's guided sampler maps a noise `eps` of
  a training window to a clean latent `x0`; the student learns the straight path between them
  (`x_s = (1 - s) x0 + s eps`, flow target `eps - x0`) at the noise levels its N-step Euler grids visit.
  A student that is exact there reaches `x0` in one Euler step, and every later Euler state lies on the
  same straight line, so 1, 2 and 4 steps all land on the teacher's sample.
* `distribution_matching_losses` (DMD): the student's one-step sample is noised again and pushed along the
  difference of a critic's denoising ("fake score", trained on the student's own samples) and the
  guided teacher's; no teacher samples needed, but three networks a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from ..pipeline.conditioning import first_frame_mask
from ..pipeline.guidance import Guidance, GuidanceBatch, GuidanceInputs
from .encode import EncodedBatch


def euler_grid(scheduler: FlowMatchEulerDiscreteScheduler, steps: int) -> torch.Tensor:
    """The noise levels `[steps]` an Euler sampler of `steps` steps evaluates the model at."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler.sigmas[:-1].float()


def student_grid(scheduler: FlowMatchEulerDiscreteScheduler, steps: tuple[int, ...]) -> torch.Tensor:
    """The union `[K]` (descending) of the Euler grids of every step count the student serves."""
    levels = torch.cat([euler_grid(scheduler, n) for n in steps])
    return torch.unique(levels.round(decimals=6)).flip(0)


def window_condition(encoded: EncodedBatch) -> torch.Tensor:
    """The DiT's conditioning `[B, 20, F, h, w]` as inference builds it: first-frame mask + the reference
    latents' posterior mean (no sampling)."""
    batch, _, frames, h, w = encoded.condition_mean.shape
    mask = first_frame_mask(frames, h, w).to(encoded.condition_mean).expand(batch, -1, -1, -1, -1)
    return torch.cat([mask, encoded.condition_mean], dim=1)


@torch.no_grad()
def teacher_samples(
    teacher,
    scheduler: FlowMatchEulerDiscreteScheduler,
    encoded: EncodedBatch,
    negative_prompt_embeds: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    guidance: Guidance,
) -> torch.Tensor:
    """The teacher's guided Euler samples `[B, 16, F, h, w]` from `noise` `[B, 16, F, h, w]`, one per window of
    `encoded` (batch B): what the inference sampler draws for a lone window (tested equal)."""
    grid = euler_grid(scheduler, steps).tolist() + [0.0]
    latents = noise.float()
    for sigma, following in zip(grid, grid[1:], strict=False):
        sigmas = torch.full((latents.shape[0],), sigma, device=latents.device)
        flow = guided_flow(teacher, latents, sigmas, encoded, negative_prompt_embeds, guidance, teacher.dtype)
        latents = latents + (following - sigma) * flow
    return latents


def _text_length(text: torch.Tensor) -> int:
    """Tokens up to the last non-zero one (the cache zero-pads prompts)."""
    used = text.abs().sum(dim=(0, 2)).nonzero()
    return int(used[-1]) + 1 if len(used) else text.shape[1]


def student_prediction(
    student, latents: torch.Tensor, sigmas: torch.Tensor, encoded: EncodedBatch, dtype: torch.dtype
) -> torch.Tensor:
    """The student's flow `[B, 16, F, h, w]` at noise levels `sigmas` `[B]`: one forward, prompt and audio."""
    condition = window_condition(encoded)
    return student(
        hidden_states=torch.cat([latents, condition], dim=1).to(dtype),
        timestep=sigmas.to(latents.device) * 1000.0,
        encoder_hidden_states=encoded.text.to(dtype),
        encoder_hidden_states_image=encoded.image.to(dtype),
        audio_embeds=encoded.audio.to(dtype),
        num_video_frames=encoded.num_video_frames,
    ).sample.float()


def face_weights(encoded: EncodedBatch, size: tuple[int, int, int]) -> torch.Tensor:
    """Per-element loss weights `[B, 1, F, h, w]`: 1 + face + lips (the trainer's default weighting)."""
    face = F.interpolate(encoded.face_masks.float(), size=size, mode="trilinear", align_corners=False)
    lip = F.interpolate(encoded.lip_masks.float(), size=size, mode="trilinear", align_corners=False)
    return 1.0 + face + lip


@dataclass
class GridDraw:
    """How a step draws its noise levels: the grid and the chance of each level."""

    levels: torch.Tensor  # [K]
    probabilities: torch.Tensor  # [K]

    @classmethod
    def weighted(cls, levels: torch.Tensor, first_weight: float) -> GridDraw:
        """Level 1.0 (the one-step student's only input) drawn with `first_weight`, the rest evenly."""
        probabilities = torch.full((len(levels),), (1.0 - first_weight) / max(len(levels) - 1, 1))
        probabilities[0] = first_weight if len(levels) > 1 else 1.0
        return cls(levels, probabilities)

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return self.levels[
            torch.multinomial(self.probabilities, batch, replacement=True, generator=generator)
        ]


def trajectory_regression_loss(
    student,
    encoded: EncodedBatch,
    noise: torch.Tensor,
    target: torch.Tensor,
    sigmas: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Face-weighted MSE of the student's flow on the straight path from `noise` to the teacher's `target`.

    Args:
        noise, target: `[B, 16, F, h, w]` a noise and the teacher's sample from it.
        sigmas: `[B]` noise levels (from the student's grid).
    """
    s = sigmas.view(-1, 1, 1, 1, 1).to(noise)
    latents = (1.0 - s) * target + s * noise
    prediction = student_prediction(student, latents, sigmas, encoded, dtype)
    weights = face_weights(encoded, target.shape[-3:])
    return ((prediction - (noise - target)) ** 2 * weights).mean()


def guided_flow(
    teacher,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    encoded: EncodedBatch,
    negative_prompt_embeds: torch.Tensor,
    guidance: Guidance,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The teacher's guided flow `[B, 16, F, h, w]` for B windows in one forward.

    Each window's guidance batch is what `guidance` builds for it at inference (for the published rule
    [negative, negative, prompt] with audio [none, audio, audio]); the batches are concatenated (their
    `audio_sources` shifted) and each part is combined by the rule.
    """
    batches = []
    for index in range(latents.shape[0]):
        prompt = encoded.text[index : index + 1]
        inputs = GuidanceInputs(
            prompt[:, : _text_length(prompt)],
            negative_prompt_embeds.to(prompt),
            encoded.image[index : index + 1],
            encoded.audio[index : index + 1],
        )
        batches.append(guidance.build_batch(inputs) if guidance.needed else guidance.unguided_batch(inputs))
    sizes = [batch.size for batch in batches]
    offsets = [sum(sizes[:index]) for index in range(len(sizes))]
    sources = [
        None if source is None else source + offset
        for batch, offset in zip(batches, offsets, strict=True)
        for source in (batch.audio_sources or range(batch.size))
    ]
    texts = [text for batch in batches for text in batch.encoder_hidden_states]
    joined = GuidanceBatch(
        torch.nn.utils.rnn.pad_sequence(texts, batch_first=True),
        torch.cat([batch.encoder_hidden_states_image for batch in batches]),
        torch.cat([batch.audio_embeds for batch in batches]),
        tuple(sources),
    )
    repeats = torch.tensor(sizes, device=latents.device)
    model_input = torch.cat([latents, window_condition(encoded)], dim=1).repeat_interleave(repeats, dim=0)
    output = teacher(
        hidden_states=model_input.to(dtype),
        timestep=(sigmas.to(latents.device) * 1000.0).repeat_interleave(repeats),
        encoder_hidden_states=joined.encoder_hidden_states.to(dtype),
        encoder_hidden_states_image=joined.encoder_hidden_states_image.to(dtype),
        audio_embeds=joined.audio_embeds.to(dtype),
        num_video_frames=encoded.num_video_frames,
        audio_sources=joined.audio_sources,
    ).sample.float()
    parts = output.split(sizes)
    if not guidance.needed:
        return torch.cat(parts)
    return torch.cat([guidance.combine(part) for part in parts])


def distribution_matching_losses(
    student,
    critic,
    teacher,
    encoded: EncodedBatch,
    noise: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    guidance: Guidance,
    schedule_sigmas: torch.Tensor,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(critic loss, student DMD loss) of one batch; the student generates in one step from `noise`.

    The critic learns flow matching on the student's (detached) samples; the student moves each sample
    along (critic's clean estimate - teacher's guided clean estimate), normalised per sample by the mean
    distance to the teacher's estimate (DMD). Both noise levels are drawn from the shifted training schedule.
    """
    batch = noise.shape[0]
    ones = torch.ones(batch, device=noise.device)
    sample = noise - student_prediction(student, noise, ones, encoded, dtype)  # x0 = eps - v at sigma 1

    def draw_level() -> torch.Tensor:
        index = torch.randint(0, len(schedule_sigmas) - 1, (batch,), generator=generator)
        return schedule_sigmas[index].to(noise.device)

    # critic: flow matching on the student's samples
    level = draw_level()
    fresh = torch.randn(noise.shape, generator=generator).to(noise)
    s = level.view(-1, 1, 1, 1, 1)
    clean = sample.detach()
    critic_flow = student_prediction(critic, (1 - s) * clean + s * fresh, level, encoded, dtype)
    critic_loss = F.mse_loss(critic_flow, fresh - clean)

    # student: distribution matching gradient
    level = draw_level()
    fresh = torch.randn(noise.shape, generator=generator).to(noise)
    s = level.view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        noisy = (1 - s) * clean + s * fresh
        real = noisy - s * guided_flow(
            teacher, noisy, level, encoded, negative_prompt_embeds, guidance, dtype
        )
        fake = noisy - s * student_prediction(critic, noisy, level, encoded, dtype)
        scale = (clean - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        gradient = (fake - real) / scale
    student_loss = 0.5 * F.mse_loss(sample, (sample - gradient).detach(), reduction="mean")
    return critic_loss, student_loss
