"""The long-video sampler: timesteps outer, windows inner, overlapping windows fused after each step.

It works on tensors only (conditioning in, latents out) so it can be tested without encoders or a VAE. The
latent state of the whole video stays in host memory; only the active window is on the device.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import SchedulerMixin
from tqdm.auto import tqdm

from ..models import CrossAttentionCache, StableAvatarTransformer3DModel
from .guidance import Guidance, GuidanceInputs, PublishedGuidance, transformer_forward
from .windows import Window, blend_weights, plan_windows, video_frames_for_latents

# Called after every window step as callback(step_index, window_index, num_steps, num_windows).
ProgressCallback = Callable[[int, int, int, int], None]
# Called after every window's solver step as step_end(step_index, window_index, timestep, latents) with the
# window's latents `[1, 16, F, h, w]` (before the overlap blending); returns replacement latents or None.
StepEndCallback = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor | None]


@dataclass
class SamplingConditions:
    """What stays fixed over the whole video.

    prompt_embeds: `[1, Lp, text_dim]`, negative_prompt_embeds: `[1, Ln, text_dim]` (unpadded).
    image_embeds: `[1, 257, image_dim]` CLIP tokens of the reference image.
    condition: `[1, 4 + 16, W, h, w]`: the first-frame mask and the VAE latents of (reference frame, zeros...)
        for one full window; every window gets its first `length` frames, so each is anchored to the image.
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    image_embeds: torch.Tensor
    condition: torch.Tensor


class SlidingWindowSampler:
    """Denoises a video of any length with a transformer trained on fixed-length clips.

    Args:
        transformer: the StableAvatar DiT.
        scheduler: a diffusers flow-matching scheduler; every window steps its own copy, so solver state
            (step index, multistep history) never leaks between windows.
        window_length: latent frames per window (21 for 81-frame clips).
        overlap: latent frames shared by consecutive windows.
        weighting: 'uniform' or 'log' blending across the overlap.
        guidance: the text/audio guidance rule (`wan.pipeline.guidance`); default the published one at
            text 3, audio 5.
        device: where the transformer runs; the video's latent state stays on the CPU.
        cache_text_image: compute the text and image keys/values of every block once per video (one set for
            the guidance batch, one for the single batch) instead of at every step and window; same result.
    """

    def __init__(
        self,
        transformer: StableAvatarTransformer3DModel,
        scheduler: SchedulerMixin,
        window_length: int = 21,
        overlap: int = 5,
        weighting: str = "uniform",
        guidance: Guidance | None = None,
        device: torch.device | str = "cpu",
        cache_text_image: bool = True,
    ) -> None:
        blend_weights(2, weighting)  # validates the scheme name early
        self.transformer = transformer
        self.scheduler = scheduler
        self.window_length = window_length
        self.overlap = overlap
        self.weighting = weighting
        self.guidance = guidance or PublishedGuidance()
        self.device = torch.device(device)
        self.cache_text_image = cache_text_image

    def plan(self, num_latent_frames: int) -> list[Window]:
        return plan_windows(num_latent_frames, self.window_length, self.overlap)

    @torch.no_grad()
    def __call__(
        self,
        noise: torch.Tensor,
        conditions: SamplingConditions,
        window_audio: Callable[[Window], torch.Tensor],
        num_inference_steps: int = 50,
        callback: ProgressCallback | None = None,
        progress: bool = True,
        step_end: StepEndCallback | None = None,
        interrupted: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            noise: `[1, 16, L, h, w]` initial latents of the whole video (host memory).
            window_audio: gives a window's wav2vec2 features `[1, Na, 768]`; called once per window and
                cached, because the audio does not change between steps.
            callback: progress after each window step.
            step_end: sees (and may replace) each window's latents after its solver step.
            interrupted: asked after every window step; True stops sampling there.
        Returns:
            `[1, 16, L, h, w]` float32 denoised latents on the CPU (when interrupted: those of the last
            completed step).
        """
        state = noise.detach().to("cpu", torch.float32).clone()
        windows = self.plan(state.shape[2])
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        window_schedulers = [copy.deepcopy(self.scheduler) for _ in windows]
        audio_cache: dict[Window, torch.Tensor] = {}
        context_caches = {True: CrossAttentionCache(), False: CrossAttentionCache()}

        with tqdm(
            total=len(timesteps) * len(windows), desc="denoising", unit="window", disable=not progress
        ) as bar:
            for step_index, timestep in enumerate(timesteps):
                fused = torch.zeros_like(state)
                for window_index, window in enumerate(windows):
                    if window not in audio_cache:
                        audio_cache[window] = window_audio(window).to("cpu", torch.float32)
                    latents = state[:, :, window.start : window.end].to(self.device)
                    guided = self.guidance.active(step_index, len(timesteps))
                    inputs = GuidanceInputs(
                        conditions.prompt_embeds,
                        conditions.negative_prompt_embeds,
                        conditions.image_embeds,
                        audio_cache[window],
                    )
                    forward = transformer_forward(
                        self.transformer,
                        latents,
                        conditions.condition[:, :, : window.length].to(self.device),
                        timestep,
                        num_video_frames=video_frames_for_latents(window.length),
                        context_cache=context_caches[guided] if self.cache_text_image else None,
                    )
                    # Each window keeps its own step-cache state: windows never reuse each other's results.
                    with self._cache_context(f"window-{window_index}"):
                        prediction = self.guidance.predict(forward, inputs, guided)
                    latents = window_schedulers[window_index].step(
                        prediction, timestep, latents, return_dict=False
                    )[0]
                    if step_end is not None:
                        replaced = step_end(step_index, window_index, timestep, latents)
                        latents = latents if replaced is None else replaced
                    latents = latents.to("cpu", torch.float32)
                    # As published, overlaps blend from the second step on; a one-step sampler (a distilled
                    # student) blends at its only step, or each window would overwrite its predecessor: a seam.
                    if window.overlap and (step_index > 0 or len(timesteps) == 1):
                        weights = blend_weights(window.overlap, self.weighting).view(1, 1, -1, 1, 1)
                        previous = fused[:, :, window.start : window.start + window.overlap]
                        head = latents[:, :, : window.overlap]
                        latents[:, :, : window.overlap] = head * weights + previous * (1 - weights)
                    fused[:, :, window.start : window.end] = latents
                    bar.update()
                    if callback is not None:
                        callback(step_index, window_index, len(timesteps), len(windows))
                    if interrupted is not None and interrupted():
                        return state
                state = fused
        return state

    def _cache_context(self, name: str):
        context = getattr(self.transformer, "cache_context", None)
        return context(name) if context is not None else contextlib.nullcontext()
