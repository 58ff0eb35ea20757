"""Windows outer, timesteps inner: each window is denoised to the end before the next begins.

The published sampler (`SlidingWindowSampler`) runs every window at every step, so no frame is final before
the last step of the last window. Here window k is finished first; window k+1 then continues from k's last
clean latent frames (the overlap), which act as a known motion prefix. That makes frames final window by
window, so a video can be decoded and shown while the audio is still arriving (`wan.pipeline.streaming`).
Same model, no retraining; the published order stays the default for the released models.

How the known prefix reaches the next window (`prefix`):

- 'renoise': at every step the overlap frames of the window's latents are replaced by the previous window's
  clean latents re-noised to that step's level, `(1 - sigma) * x0 + sigma * noise` (inpainting by
  replacement); the model sees the prefix the way it sees any partly denoised frame.
- 'condition': the overlap frames go in through the image-to-video mask and condition channels (mask 1,
  condition latents = the clean prefix) as the reference image does for frame 0; the latents stay free.
- 'both': the two together.

Overlap blending (`blend_overlap`; by default with 'renoise' only): the published order fuses each overlap
from both windows at every step; here, at every step, the last `overlap` frames of the re-noised prefix are
ramped towards the window's own latents with the published weights (`blend_weights`, the sampler's
`weighting`), and the result keeps that ramp between the previous window's clean frames and this window's.
So those frames of window k become final only once window k+1 is done: a stream holds them back until then
(`held_frames`). Measured on the demo (README "Streaming"): seams 1.46 -> 1.35 for the 5-step teacher,
1.61 -> 1.43 for the 1-step student; through the condition channels the window's own prediction of the
known frames is worse (seams 1.48 -> 2.27), so 'condition' and 'both' do not blend unless asked.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..models import CrossAttentionCache
from .guidance import GuidanceInputs, transformer_forward
from .sampler import ProgressCallback, SamplingConditions, SlidingWindowSampler, StepEndCallback
from .windows import Window, blend_weights, video_frames_for_latents

PREFIX_MODES = ("renoise", "condition", "both")
SAMPLING_ORDERS = {
    "steps": "timesteps outer, windows inner, overlaps blended after every step (as published)",
    "windows": "windows outer: each window finished before the next, continuing from its last frames "
    "(frames are final window by window: needed for streaming)",
}


class WindowsOuterSampler(SlidingWindowSampler):
    """Denoises window after window; takes the `SlidingWindowSampler` arguments plus:

    Args:
        prefix: how the previous window's clean overlap frames condition the next window ('renoise',
            'condition' or 'both', see the module docstring).
        blend_overlap: blend the next window's prediction into the last `overlap` frames (see the module
            docstring); False keeps a window's frames as it made them (nothing held back when streaming);
            None: blend with the 'renoise' prefix only.
    """

    def __init__(self, *args, prefix: str = "renoise", blend_overlap: bool | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if prefix not in PREFIX_MODES:
            raise ValueError(f"unknown prefix mode {prefix!r}; choose one of {', '.join(PREFIX_MODES)}")
        self.prefix = prefix
        self.blend_overlap = prefix == "renoise" if blend_overlap is None else blend_overlap
        self._context_caches: dict[bool, CrossAttentionCache] = {}
        self._windows_done = 0

    @property
    def held_frames(self) -> int:
        """Latent frames at the end of every window but the last that the next window still changes (blends).

        One frame of overlap blends with weight 0 on the new window (`blend_weights`), so it is not held."""
        return self.overlap if self.blend_overlap and self.overlap > 1 else 0

    def reset(self) -> None:
        """Forget the per-video caches (call before a new video when reusing the sampler)."""
        self._context_caches = {True: CrossAttentionCache(), False: CrossAttentionCache()}
        self._windows_done = 0

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
        """The whole video at once, window after window (same arguments and result as `SlidingWindowSampler`).

        Returns:
            `[1, 16, L, h, w]` float32 latents on the CPU (when interrupted: with the windows not yet
            finished left as noise).
        """
        noise = noise.detach().to("cpu", torch.float32)
        state = noise.clone()
        windows = self.plan(state.shape[2])
        self.reset()
        with tqdm(
            total=num_inference_steps * len(windows), desc="denoising", unit="step", disable=not progress
        ) as bar:
            for index, window in enumerate(windows):
                known = (
                    state[:, :, window.start : window.start + window.overlap].clone()
                    if window.overlap
                    else None
                )

                def report(step: int, steps: int, index: int = index) -> None:
                    bar.update()
                    if callback is not None:
                        callback(step, index, steps, len(windows))

                state[:, :, window.start : window.end] = self.denoise_window(
                    noise[:, :, window.start : window.end],
                    conditions,
                    window_audio(window),
                    window,
                    known,
                    num_inference_steps,
                    report,
                    None if step_end is None else functools.partial(self._window_step_end, step_end, index),
                    interrupted,
                )
                if interrupted is not None and interrupted():
                    break
        return state

    @torch.no_grad()
    def denoise_window(
        self,
        noise: torch.Tensor,
        conditions: SamplingConditions,
        audio: torch.Tensor,
        window: Window,
        known: torch.Tensor | None,
        num_inference_steps: int,
        callback: Callable[[int, int], None] | None = None,
        step_end: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
        interrupted: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Denoise one window from its noise to the end.

        Args:
            noise: `[1, 16, F, h, w]` the window's initial noise (F = `window.length`).
            audio: `[1, Na, 768]` the window's wav2vec2 features.
            known: `[1, 16, window.overlap, h, w]` the previous window's clean latents of the overlap frames,
                or None for a window without predecessor.
            callback: called after every step as callback(step_index, num_steps).
            step_end: step_end(step_index, timestep, latents) after every solver step; may return
                replacement latents.
            interrupted: asked after every step; True stops the window there.
        Returns:
            `[1, 16, F, h, w]` float32 clean latents on the CPU; the first `window.overlap` frames are the
            known prefix, its last `held_frames` blended with this window's own prediction of them.
        """
        if not self._context_caches:
            self.reset()
        scheduler = copy.deepcopy(self.scheduler)  # solver state never leaks between windows
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        sigmas = scheduler.sigmas.detach().to("cpu", torch.float32)
        noise = noise.detach().to("cpu", torch.float32)
        overlap = 0 if known is None else known.shape[2]
        window_conditions = self._window_conditions(conditions, window, known)
        renoise = overlap > 0 and self.prefix in ("renoise", "both")
        latents = noise.clone()
        inputs = GuidanceInputs(
            conditions.prompt_embeds, conditions.negative_prompt_embeds, conditions.image_embeds, audio
        )
        name = f"window-{self._windows_done}"
        self._windows_done += 1
        for step_index, timestep in enumerate(scheduler.timesteps):
            if renoise:
                sigma = sigmas[step_index]
                renoised = (1 - sigma) * known + sigma * noise[:, :, :overlap]
                latents[:, :, :overlap] = self._join_overlap(renoised, latents[:, :, :overlap])
            guided = self.guidance.active(step_index, num_inference_steps)
            forward = transformer_forward(
                self.transformer,
                latents.to(self.device),
                window_conditions.condition[:, :, : window.length].to(self.device),
                timestep,
                num_video_frames=video_frames_for_latents(window.length),
                context_cache=self._context_caches[guided] if self.cache_text_image else None,
            )
            with self._cache_context(name):
                prediction = self.guidance.predict(forward, inputs, guided)
            latents = scheduler.step(prediction, timestep, latents.to(self.device), return_dict=False)[0]
            if step_end is not None:
                replaced = step_end(step_index, timestep, latents)
                latents = latents if replaced is None else replaced
            latents = latents.to("cpu", torch.float32)
            if callback is not None:
                callback(step_index, num_inference_steps)
            if interrupted is not None and interrupted():
                break
        if overlap:
            latents[:, :, :overlap] = self._join_overlap(known, latents[:, :, :overlap])
        return latents

    def _join_overlap(self, known: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """The overlap `[1, 16, n, h, w]`: `known` (the previous window's frames, clean or re-noised to this
        step's level) with its last `held_frames` ramped towards this window's `own` (frames before them were
        final already)."""
        joined = known.clone()
        held = min(self.held_frames, known.shape[2])
        if held:
            weights = blend_weights(held, self.weighting).view(1, 1, -1, 1, 1)
            joined[:, :, -held:] = own[:, :, -held:] * weights + known[:, :, -held:] * (1 - weights)
        return joined

    @staticmethod
    def _window_step_end(
        step_end: StepEndCallback,
        window_index: int,
        step_index: int,
        timestep: torch.Tensor,
        latents: torch.Tensor,
    ) -> torch.Tensor | None:
        return step_end(step_index, window_index, timestep, latents)

    def _window_conditions(
        self, conditions: SamplingConditions, window: Window, known: torch.Tensor | None
    ) -> SamplingConditions:
        """The conditions with the known prefix in the mask/condition channels ('condition', 'both')."""
        if known is None or self.prefix == "renoise":
            return conditions
        condition = conditions.condition[:, :, : window.length].clone()
        overlap = known.shape[2]
        condition[:, :4, :overlap] = 1.0
        condition[:, 4:, :overlap] = known.to(condition.dtype)
        return SamplingConditions(
            conditions.prompt_embeds, conditions.negative_prompt_embeds, conditions.image_embeds, condition
        )
