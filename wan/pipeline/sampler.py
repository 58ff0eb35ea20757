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
from .windows import Window, blend_weights, plan_windows

# Called after every window step as callback(step_index, window_index, num_steps, num_windows).
ProgressCallback = Callable[[int, int, int, int], None]


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


@dataclass
class GuidanceScales:
    """e = e_uncond + audio * (e_audio - e_uncond) + text * (e_full - e_audio).

    `interval`: the fraction of the steps, [start, end), on which guidance runs; the other steps run one
    forward (prompt and audio) instead of three. (0, 1) guides every step, as published.
    """

    text: float = 3.0
    audio: float = 5.0
    interval: tuple[float, float] = (0.0, 1.0)

    @property
    def needed(self) -> bool:
        """With both scales 1 the formula reduces to e_full: one forward instead of three."""
        return not (self.text == 1.0 and self.audio == 1.0)

    def active(self, step_index: int, num_steps: int) -> bool:
        start, end = self.interval
        return self.needed and start <= step_index / num_steps < end


class SlidingWindowSampler:
    """Denoises a video of any length with a transformer trained on fixed-length clips.

    Args:
        transformer: the StableAvatar DiT.
        scheduler: a diffusers flow-matching scheduler; every window steps its own copy, so solver state
            (step index, multistep history) never leaks between windows.
        window_length: latent frames per window (21 for 81-frame clips).
        overlap: latent frames shared by consecutive windows.
        weighting: 'uniform' or 'log' blending across the overlap.
        guidance: text and audio guidance scales.
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
        guidance: GuidanceScales | None = None,
        device: torch.device | str = "cpu",
        cache_text_image: bool = True,
    ) -> None:
        blend_weights(2, weighting)  # validates the scheme name early
        self.transformer = transformer
        self.scheduler = scheduler
        self.window_length = window_length
        self.overlap = overlap
        self.weighting = weighting
        self.guidance = guidance or GuidanceScales()
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
    ) -> torch.Tensor:
        """
        Args:
            noise: `[1, 16, L, h, w]` initial latents of the whole video (host memory).
            window_audio: gives a window's wav2vec2 features `[1, Na, 768]`; called once per window and
                cached, because the audio does not change between steps.
            callback: progress after each window step.
        Returns:
            `[1, 16, L, h, w]` float32 denoised latents on the CPU.
        """
        state = noise.detach().to("cpu", torch.float32).clone()
        windows = self.plan(state.shape[2])
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        window_schedulers = [copy.deepcopy(self.scheduler) for _ in windows]
        audio_cache: dict[Window, torch.Tensor] = {}
        text, image = self._batched_text_and_image(conditions)
        context_caches = {True: CrossAttentionCache(), False: CrossAttentionCache()}
        dtype = self.transformer.dtype

        bar = tqdm(total=len(timesteps) * len(windows), desc="denoising", unit="window", disable=not progress)
        for step_index, timestep in enumerate(timesteps):
            fused = torch.zeros_like(state)
            for window_index, window in enumerate(windows):
                if window not in audio_cache:
                    audio_cache[window] = window_audio(window).to("cpu", torch.float32)
                latents = state[:, :, window.start : window.end].to(self.device)
                guided = self.guidance.active(step_index, len(timesteps))
                batch_text, batch_image = (text, image) if guided else (text[-1:], image[-1:])
                # Each window keeps its own step-cache state: windows never reuse each other's results.
                with self._cache_context(f"window-{window_index}"):
                    prediction = self._predict(
                        latents,
                        timestep,
                        conditions,
                        batch_text,
                        batch_image,
                        audio_cache[window],
                        window,
                        dtype,
                        guided,
                        context_caches[guided] if self.cache_text_image else None,
                    )
                latents = window_schedulers[window_index].step(
                    prediction, timestep, latents, return_dict=False
                )[0]
                latents = latents.to("cpu", torch.float32)
                if window.overlap and step_index > 0:
                    weights = blend_weights(window.overlap, self.weighting).view(1, 1, -1, 1, 1)
                    previous = fused[:, :, window.start : window.start + window.overlap]
                    latents[:, :, : window.overlap] = latents[:, :, : window.overlap] * weights + previous * (
                        1 - weights
                    )
                fused[:, :, window.start : window.end] = latents
                bar.update()
                if callback is not None:
                    callback(step_index, window_index, len(timesteps), len(windows))
            state = fused
        bar.close()
        return state

    def _cache_context(self, name: str):
        context = getattr(self.transformer, "cache_context", None)
        return context(name) if context is not None else contextlib.nullcontext()

    def _batched_text_and_image(self, conditions: SamplingConditions) -> tuple[torch.Tensor, torch.Tensor]:
        """Text `[3, L, text_dim]` as [negative, negative, prompt] (zero-padded) and image tokens `[3, 257, C]`,
        or the prompt alone when guidance is off."""
        dtype = self.transformer.dtype
        if not self.guidance.needed:
            return conditions.prompt_embeds.to(self.device, dtype), conditions.image_embeds.to(
                self.device, dtype
            )
        negative, prompt = conditions.negative_prompt_embeds[0], conditions.prompt_embeds[0]
        text = torch.nn.utils.rnn.pad_sequence([negative, negative, prompt], batch_first=True)
        image = conditions.image_embeds.expand(3, -1, -1)
        return text.to(self.device, dtype), image.to(self.device, dtype)

    def _predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        conditions: SamplingConditions,
        text: torch.Tensor,
        image: torch.Tensor,
        audio: torch.Tensor,
        window: Window,
        dtype: torch.dtype,
        guided: bool,
        context_cache: CrossAttentionCache | None = None,
    ) -> torch.Tensor:
        """The (guided) flow prediction `[1, 16, F, h, w]` (float32) for one window."""
        batch = 3 if guided else 1
        condition = conditions.condition[:, :, : window.length].to(self.device)
        model_input = torch.cat([latents, condition], dim=1).expand(batch, -1, -1, -1, -1).to(dtype)
        audio = audio.to(self.device, dtype)
        if batch == 3:
            audio = torch.cat([torch.zeros_like(audio), audio, audio])
        output = self.transformer(
            hidden_states=model_input,
            timestep=timestep.expand(batch).to(self.device),
            encoder_hidden_states=text,
            encoder_hidden_states_image=image,
            audio_embeds=audio,
            num_video_frames=4 * (window.length - 1) + 1,
            audio_guidance_triple=batch == 3,
            context_cache=context_cache,
        ).sample.float()
        if batch == 1:
            return output
        uncond, audio_only, full = output.chunk(3)
        return uncond + self.guidance.audio * (audio_only - uncond) + self.guidance.text * (full - audio_only)
