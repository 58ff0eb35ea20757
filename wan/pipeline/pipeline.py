"""`StableAvatarPipeline`: reference image + audio (+ prompt) -> talking video with the audio muxed in."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from PIL import Image
from transformers import (
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    UMT5EncoderModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from ..checks import at_least, finite
from ..errors import UserFacingError
from ..generation_settings import PUBLISHED_FPS, PUBLISHED_SETTINGS, SAMPLE_RATE
from ..media import VideoWriter, load_audio, load_image
from ..models import StableAvatarTransformer3DModel
from .conditioning import (
    DEFAULT_NEGATIVE_PROMPT,
    encode_window_condition,
    image_to_tensor,
)
from .decoding import StreamingDecoder, stream_decode
from .encoders import encode_audio, encode_image, encode_prompt
from .guidance import build_guidance
from .sampler import ProgressCallback, SamplingConditions, SlidingWindowSampler, StepEndCallback
from .streaming import (
    AudioStream,
    FrameNoise,
    StreamedFrames,
    stream_latents_to_frames,
    streaming_windows,
    window_waveform,
)
from .windows import (
    FRAMES_PER_LATENT,
    Window,
    latent_frames_for_clip,
    latent_frames_for_video,
    video_frames_for_audio,
)
from .windows_outer import PREFIX_MODES, SAMPLING_ORDERS, WindowsOuterSampler

# Height and width: the VAE's 8x times the transformer's 2x2 patches (`_check_components` verifies it).
SIZE_MULTIPLE = 16
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes up to an unsigned 64-bit number

OUTPUT_TYPES = {
    "mp4": "an mp4 with the audio at output_path (frames decoded and written chunk by chunk)",
    "np": "frames in memory: a float32 array [T, H, W, 3] in [0, 1]",
    "pt": "frames in memory: a float32 tensor [T, 3, H, W] in [0, 1]",
    "latent": "the denoised latents [1, 16, L, H/8, W/8], nothing decoded",
}
# Called after every window step as callback_on_step_end(pipeline, step_index, timestep, callback_kwargs)
# (diffusers' convention); returns a dict whose "latents" replace the window's latents.
StepEndPipelineCallback = Callable[["StableAvatarPipeline", int, torch.Tensor, dict], dict]


@dataclass
class StableAvatarOutput:
    """What a generation produced."""

    video_path: Path | None
    num_frames: int
    num_windows: int
    seed: int
    seconds: float
    latents: torch.Tensor | None = None
    frames: np.ndarray | torch.Tensor | None = None  # output_type 'np' / 'pt'
    interrupted: bool = False  # stopped by `pipeline.interrupt`; nothing decoded or written


class StableAvatarPipeline(DiffusionPipeline):
    r"""Audio-driven avatar video of any length from one reference image.

    Components: `vae` (Wan causal VAE), `text_encoder` (umT5) + `tokenizer`, `image_encoder` (CLIP ViT-H/14
    vision tower), `transformer` (StableAvatar DiT), `scheduler` (flow matching, shift 5), `audio_encoder`
    (wav2vec2) + `audio_feature_extractor`.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->audio_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        image_encoder: CLIPVisionModel,
        transformer: StableAvatarTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        audio_encoder: Wav2Vec2Model,
        audio_feature_extractor: Wav2Vec2FeatureExtractor,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            image_encoder=image_encoder,
            transformer=transformer,
            scheduler=scheduler,
            audio_encoder=audio_encoder,
            audio_feature_extractor=audio_feature_extractor,
        )
        self._interrupt = False
        self._num_timesteps = 0
        self._current_window = 0
        self._num_windows = 0

    @property
    def vae_scale_factor_spatial(self) -> int:
        """Pixels per latent pixel along height and width (8 for the Wan VAE), from `vae.config`."""
        return int(getattr(self.vae.config, "scale_factor_spatial", None) or 8)

    @property
    def vae_scale_factor_temporal(self) -> int:
        """Pixel frames per latent frame (4 for the Wan VAE), from `vae.config`."""
        return int(getattr(self.vae.config, "scale_factor_temporal", None) or FRAMES_PER_LATENT)

    @property
    def interrupt(self) -> bool:
        """Set `pipeline._interrupt = True` (e.g. in `callback_on_step_end`) to stop at the next window step."""
        return self._interrupt

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_window(self) -> int:
        """Index of the window whose step just ended (in `callback_on_step_end`)."""
        return self._current_window

    @property
    def num_windows(self) -> int:
        return self._num_windows

    @torch.no_grad()
    def __call__(
        self,
        image: str | Path | Image.Image | np.ndarray,
        audio: str | Path | np.ndarray | torch.Tensor,
        prompt: str = "",
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        height: int = PUBLISHED_SETTINGS["height"],
        width: int = PUBLISHED_SETTINGS["width"],
        num_inference_steps: int = PUBLISHED_SETTINGS["num_inference_steps"],
        text_guidance_scale: float = PUBLISHED_SETTINGS["text_guidance_scale"],
        audio_guidance_scale: float = PUBLISHED_SETTINGS["audio_guidance_scale"],
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        guidance: str = "published",
        clip_length: int = PUBLISHED_SETTINGS["clip_length"],
        overlap: int = PUBLISHED_SETTINGS["overlap"],
        weighting: str = "uniform",
        seed: int | None = None,
        fps: int = PUBLISHED_FPS,
        audio_sample_rate: int | None = None,
        output_path: str | Path | None = None,
        frames_dir: str | Path | None = None,
        callback: ProgressCallback | None = None,
        output_type: str = "mp4",
        progress: bool = True,
        cache_text_image: bool = True,
        sampling_order: str = "steps",
        prefix: str = "renoise",
        blend_overlap: bool | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback_on_step_end: StepEndPipelineCallback | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> StableAvatarOutput:
        """Generate the video.

        Args:
            image: the reference portrait (path, PIL image or array); stretched to `width` x `height`.
            audio: speech or singing (a path to any audio or video file, or a waveform at
                `audio_sample_rate`); resampled to 16 kHz mono. Its length sets the video's length.
            prompt / negative_prompt: text guidance.
            height, width: output size, multiples of 16 (trained: 512x512, 480x832, 832x480).
            num_inference_steps: flow-matching Euler steps.
            text_guidance_scale, audio_guidance_scale: guidance strengths.
            guidance_interval: fraction of the steps [start, end) that run guidance (3 forwards); the rest
                run one forward. (0, 1), every step, is the published behaviour.
            guidance: the guidance rule by name (`wan.pipeline.guidance`): 'published' (StableAvatar's
                released rule) or 'ang' (the paper's Audio Native Guidance); both 3 forwards per guided step.
            clip_length: video frames per window, 4k+1 (81 as trained).
            overlap: latent frames shared by neighbouring windows.
            weighting: 'uniform' or 'log' blending across overlaps.
            seed: makes the noise reproducible on any device; random when None (reported in the output).
            fps: output frame rate; the audio is cut into frames at this rate (the model was trained at 25).
            output_path: the mp4 to write (written under a temporary name, renamed when complete).
            frames_dir: also save every frame as PNG here.
            callback: called after every window step with (step, window, steps, windows).
            output_type: 'mp4' (needs output_path), 'np' or 'pt' (frames in memory, for short clips) or
                'latent' (see OUTPUT_TYPES).
            cache_text_image: compute the text/image keys and values once per video (same result, less work).
            sampling_order: 'steps' (as published: every window at every step) or 'windows' (each window
                finished before the next, continuing from its last frames; what `stream` runs). The noise
                of 'windows' is drawn latent frame by latent frame, so the same seed gives another video.
            prefix: with 'windows', how the previous window's last frames condition the next
                ('renoise', 'condition' or 'both'; see `wan.pipeline.windows_outer`).
            blend_overlap: with 'windows', blend each window's last `overlap` frames with the next window's
                prediction of them (as the published order fuses overlaps); False keeps them as made; None
                (default): with the 'renoise' prefix only (measured better there, worse with 'condition').
            prompt_embeds, negative_prompt_embeds: `[1, L, text_dim]` umT5 embeddings (unpadded) to use
                instead of encoding `prompt` / `negative_prompt`.
            callback_on_step_end: called after every window step as (pipeline, step_index, timestep,
                {"latents": the window's latents `[1, 16, F, h, w]`}); the "latents" of the dict it returns
                replace the window's. `pipeline.current_window` / `num_windows` / `num_timesteps` say where
                it is; setting `pipeline._interrupt = True` stops the generation (nothing is decoded or
                written; the output has `interrupted=True`).
            callback_on_step_end_tensor_inputs: the tensors passed in `callback_kwargs` (only "latents").
        """
        started = time.monotonic()
        self._check_components()
        self.check_inputs(
            height,
            width,
            clip_length,
            overlap,
            fps,
            output_type,
            output_path,
            sampling_order,
            prefix,
            prompt_embeds,
            negative_prompt_embeds,
            callback_on_step_end_tensor_inputs,
            num_inference_steps,
            text_guidance_scale,
            audio_guidance_scale,
            seed,
        )
        self._interrupt = False
        self._num_timesteps = num_inference_steps
        reference = load_image(image)
        waveform = load_audio(audio, SAMPLE_RATE, audio_sample_rate)
        num_frames = video_frames_for_audio(len(waveform), fps)
        if num_frames < 1:
            raise UserFacingError(
                f"the audio is {len(waveform) / SAMPLE_RATE * 1000:.0f} ms long, shorter than one video frame "
                f"({1000 / fps:.0f} ms); pass a longer audio file"
            )
        device = self._execution_device
        window_length = latent_frames_for_clip(clip_length)
        num_latent_frames = latent_frames_for_video(num_frames)

        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else int(seed)
        if sampling_order == "windows":
            noise = FrameNoise(
                seed,
                self.vae.config.z_dim,
                height // self.vae_scale_factor_spatial,
                width // self.vae_scale_factor_spatial,
            ).frames(0, num_latent_frames)
        else:
            generator = torch.Generator("cpu").manual_seed(seed)
            latent_shape = (
                1,
                self.vae.config.z_dim,
                num_latent_frames,
                height // self.vae_scale_factor_spatial,
                width // self.vae_scale_factor_spatial,
            )
            noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32)

        conditions = self._conditions(
            reference,
            prompt,
            negative_prompt,
            width,
            height,
            min(window_length, num_latent_frames),
            prompt_embeds,
            negative_prompt_embeds,
        )
        sampler = (WindowsOuterSampler if sampling_order == "windows" else SlidingWindowSampler)(
            self.transformer,
            self.scheduler,
            window_length=window_length,
            overlap=overlap,
            weighting=weighting,
            guidance=build_guidance(
                guidance,
                text_scale=text_guidance_scale,
                audio_scale=audio_guidance_scale,
                interval=tuple(guidance_interval),
            ),
            device=device,
            cache_text_image=cache_text_image,
            **({"prefix": prefix, "blend_overlap": blend_overlap} if sampling_order == "windows" else {}),
        )
        num_windows = self._num_windows = len(sampler.plan(num_latent_frames))
        latents = sampler(
            noise,
            conditions,
            lambda window: self._window_audio(waveform, window, fps),
            num_inference_steps,
            callback=callback,
            progress=progress,
            step_end=self._step_end(callback_on_step_end, callback_on_step_end_tensor_inputs),
            interrupted=lambda: self._interrupt,
        )
        if self._interrupt or output_type in ("latent", "np", "pt"):
            frames = None
            if output_type in ("np", "pt") and not self._interrupt:
                video = torch.cat(list(stream_decode(self.vae, latents)), dim=2)[0, :, :num_frames]
                frames = ((video + 1.0) / 2.0).permute(1, 0, 2, 3)  # [T, 3, H, W] in [0, 1]
                frames = frames.permute(0, 2, 3, 1).numpy() if output_type == "np" else frames
            self.maybe_free_model_hooks()
            return StableAvatarOutput(
                None,
                num_frames,
                num_windows,
                seed,
                time.monotonic() - started,
                latents if output_type == "latent" else None,
                frames,
                self._interrupt,
            )

        output_path = Path(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        with VideoWriter(
            output_path, fps=fps, audio=waveform, audio_sample_rate=SAMPLE_RATE, frames_dir=frames_dir
        ) as writer:
            remaining = num_frames
            for chunk in stream_decode(self.vae, latents):
                frames = chunk[0, :, :remaining].permute(1, 2, 3, 0)  # [T, H, W, 3]
                writer.write(frames, value_range=(-1.0, 1.0))
                remaining -= frames.shape[0]
        self.maybe_free_model_hooks()
        return StableAvatarOutput(output_path, num_frames, num_windows, seed, time.monotonic() - started)

    def _step_end(
        self, callback: StepEndPipelineCallback | None, tensor_inputs: tuple[str, ...]
    ) -> StepEndCallback | None:
        """The sampler's per-window-step hook that runs `callback_on_step_end` diffusers' way."""
        if callback is None:
            return None

        def step_end(step_index: int, window_index: int, timestep: torch.Tensor, latents: torch.Tensor):
            self._current_window = window_index
            callback_kwargs = {"latents": latents} if "latents" in tensor_inputs else {}
            outputs = callback(self, step_index, timestep, callback_kwargs) or {}
            return outputs.get("latents")

        return step_end

    @torch.no_grad()
    def stream(
        self,
        image: str | Path | Image.Image | np.ndarray,
        audio: Iterable[np.ndarray | torch.Tensor],
        prompt: str = "",
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        height: int = PUBLISHED_SETTINGS["height"],
        width: int = PUBLISHED_SETTINGS["width"],
        num_inference_steps: int = PUBLISHED_SETTINGS["num_inference_steps"],
        text_guidance_scale: float = PUBLISHED_SETTINGS["text_guidance_scale"],
        audio_guidance_scale: float = PUBLISHED_SETTINGS["audio_guidance_scale"],
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        guidance: str = "published",
        clip_length: int = PUBLISHED_SETTINGS["clip_length"],
        overlap: int = PUBLISHED_SETTINGS["overlap"],
        seed: int | None = None,
        fps: int = PUBLISHED_FPS,
        prefix: str = "renoise",
        callback: ProgressCallback | None = None,
        cache_text_image: bool = True,
        weighting: str = "uniform",
        blend_overlap: bool | None = None,
    ) -> Iterator[StreamedFrames]:
        """Generate while the audio arrives: video frames come out latent frame by latent frame as each window
        is done and decoded.

        Takes `__call__`'s generation settings (so a model folder's `generation_settings.json` applies
        unchanged; `weighting` ramps the blended overlaps) and runs the windows-outer order. The image, prompt
        and conditioning are encoded before the first audio chunk is read.

        Args:
            audio: chunks of 16 kHz mono samples, any size (float in [-1, 1] or integer PCM), e.g. from a
                microphone or a pipe; the stream ends when the iterator does.
            seed: as in `__call__`; the result equals `__call__(..., sampling_order="windows")` on the
                whole audio with the same seed.
            callback: called after every step as (step, window, steps, windows so far).
            blend_overlap: as in `__call__`; the blended frames go out with the next window, so smooth
                playback lags the audio by the overlap more; False hands every frame out with its window.
        Yields:
            `StreamedFrames`: the frames of one latent frame `[T, H, W, 3]` in [-1, 1] (1 frame, then 4 each)
            with their audio, the window that made them final and the latency since the first audio sample
            arrived. The last one ends the video at the audio's length.
        """
        self._check_components()
        self.check_inputs(
            height,
            width,
            clip_length,
            overlap,
            fps,
            "latent",
            None,
            "windows",
            prefix,
            num_inference_steps=num_inference_steps,
            text_guidance_scale=text_guidance_scale,
            audio_guidance_scale=audio_guidance_scale,
            seed=seed,
        )
        device = self._execution_device
        window_length = latent_frames_for_clip(clip_length)
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else int(seed)
        noise = FrameNoise(
            seed,
            self.vae.config.z_dim,
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )
        conditions = self._conditions(
            load_image(image), prompt, negative_prompt, width, height, window_length
        )
        sampler = WindowsOuterSampler(
            self.transformer,
            self.scheduler,
            window_length=window_length,
            overlap=overlap,
            guidance=build_guidance(
                guidance,
                text_scale=text_guidance_scale,
                audio_scale=audio_guidance_scale,
                interval=tuple(guidance_interval),
            ),
            weighting=weighting,
            device=device,
            cache_text_image=cache_text_image,
            prefix=prefix,
            blend_overlap=blend_overlap,
        )
        sampler.reset()
        audio_stream = AudioStream(audio, SAMPLE_RATE // fps)
        count = 0

        def denoise(window: Window, known: torch.Tensor | None) -> torch.Tensor:
            nonlocal count
            index = count
            count += 1

            def report(step: int, steps: int) -> None:
                if callback is not None:
                    callback(step, index, steps, count)

            features = encode_audio(
                self.audio_encoder, self.audio_feature_extractor, audio_stream.window(window)
            )
            return sampler.denoise_window(
                noise.frames(window.start, window.end),
                conditions,
                features,
                window,
                known,
                num_inference_steps,
                report,
            )

        decoder = StreamingDecoder(self.vae)
        try:
            yield from stream_latents_to_frames(
                streaming_windows(audio_stream, window_length, overlap),
                denoise,
                decoder.decode,
                audio_stream,
                sampler.held_frames,
            )
        finally:
            decoder.close()

    def _conditions(
        self,
        reference: Image.Image,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        frames: int,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> SamplingConditions:
        """Prompt, negative prompt (unless given as embeddings), CLIP tokens and a `frames`-long window
        condition of the reference."""
        device = self._execution_device
        pixels = image_to_tensor(reference, width, height)
        if prompt_embeds is None:
            prompt_embeds = encode_prompt(self.tokenizer, self.text_encoder, prompt, device)
        if negative_prompt_embeds is None:
            negative_prompt_embeds = encode_prompt(self.tokenizer, self.text_encoder, negative_prompt, device)
        return SamplingConditions(
            prompt_embeds=prompt_embeds.float().cpu(),
            negative_prompt_embeds=negative_prompt_embeds.float().cpu(),
            image_embeds=encode_image(self.image_encoder, pixels),
            condition=encode_window_condition(self.vae, pixels, frames),
        )

    def _check_components(self) -> None:
        """The VAE and transformer compress as the window arithmetic assumes (a one-line error otherwise)."""
        if self.vae_scale_factor_temporal != FRAMES_PER_LATENT:
            raise UserFacingError(
                f"the VAE compresses {self.vae_scale_factor_temporal} frames into one latent frame; the audio "
                f"adapter is aligned to {FRAMES_PER_LATENT}: use a Wan2.1 VAE"
            )
        size_multiple = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        if SIZE_MULTIPLE % size_multiple:
            raise UserFacingError(
                f"this VAE and transformer need sides that are multiples of {size_multiple}; "
                f"use the Wan2.1 VAE (8x) with 2x2 patches"
            )

    def _window_audio(self, waveform: np.ndarray, window: Window, fps: int) -> torch.Tensor:
        """wav2vec2 features `[1, Na, 768]` of a window's audio (4 frames per latent frame; silence past the end)."""
        chunk = window_waveform(waveform, window, SAMPLE_RATE // fps)
        return encode_audio(self.audio_encoder, self.audio_feature_extractor, chunk)

    @staticmethod
    def check_inputs(
        height: int,
        width: int,
        clip_length: int,
        overlap: int,
        fps: int,
        output_type: str = "mp4",
        output_path: str | Path | None = None,
        sampling_order: str = "steps",
        prefix: str = "renoise",
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
        num_inference_steps: int = 1,
        text_guidance_scale: float = 0.0,
        audio_guidance_scale: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Raise a `UserFacingError` saying what to change when a setting cannot work (before any encoding;
        the command line calls it before loading the model)."""
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height <= 0 or width <= 0:
            raise UserFacingError(
                f"width and height must be positive multiples of {SIZE_MULTIPLE}, got {width}x{height}; "
                "try 512x512, 480x832 or 832x480"
            )
        if clip_length < 5 or (clip_length - 1) % FRAMES_PER_LATENT:
            raise UserFacingError(f"clip length must be 4k+1 frames (e.g. 81), got {clip_length}")
        window_length = latent_frames_for_clip(clip_length)
        if not 0 <= overlap < window_length:
            raise UserFacingError(
                f"overlap must be between 0 and {window_length - 1} latent frames for a {clip_length}-frame clip, got {overlap}"
            )
        if fps <= 0 or SAMPLE_RATE % fps:
            raise UserFacingError(f"fps must be a positive divisor of {SAMPLE_RATE} (e.g. 25), got {fps}")
        at_least(num_inference_steps, 1, "the number of denoising steps", " (30-50 recommended)")
        finite(text_guidance_scale, "the text guidance scale", " (3-6 recommended)")
        finite(audio_guidance_scale, "the audio guidance scale", " (3-6 recommended)")
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise UserFacingError(f"the seed must be a whole number from 0 to {MAX_SEED}, got {seed}")
        if output_type not in OUTPUT_TYPES:
            raise UserFacingError(
                f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}"
            )
        if output_type == "mp4" and output_path is None:
            raise UserFacingError("pass output_path for an mp4 (or output_type 'np', 'pt' or 'latent')")
        if sampling_order not in SAMPLING_ORDERS:
            raise UserFacingError(
                f"unknown sampling order {sampling_order!r}; choose one of {', '.join(SAMPLING_ORDERS)}"
            )
        if prefix not in PREFIX_MODES:
            raise UserFacingError(f"unknown prefix mode {prefix!r}; choose one of {', '.join(PREFIX_MODES)}")
        for name, embeds in (
            ("prompt_embeds", prompt_embeds),
            ("negative_prompt_embeds", negative_prompt_embeds),
        ):
            if embeds is not None and (embeds.ndim != 3 or embeds.shape[0] != 1):
                raise UserFacingError(f"{name} must be [1, L, text_dim], got {list(embeds.shape)}")
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - {"latents"})
        if unknown:
            raise UserFacingError(
                f"callback_on_step_end_tensor_inputs can only hold 'latents', got {unknown}"
            )
