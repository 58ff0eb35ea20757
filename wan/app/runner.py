"""Runs generations for the app: one at a time, with the loaded model kept between runs, progress from
the pipeline's own steps x windows, and cancellation at the next window step."""

from __future__ import annotations

import gc
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import UserFacingError
from ..generation_settings import PUBLISHED_FPS as FPS
from ..loading.state_dict import library_load_errors
from ..media import load_image
from ..pipeline.conditioning import DEFAULT_NEGATIVE_PROMPT
from ..pipeline.memory import MEMORY_MODES
from ..pipeline.pipeline import StableAvatarPipeline
from ..pipeline.runtime import RuntimeOptions, configure_pipeline
from ..pipeline.solvers import SOLVERS
from ..pipeline.windows import WEIGHTING_SCHEMES
from .live import LiveSession, LiveSessions
from .logic import (
    ModelChoice,
    Settings,
    discover_models,
    progress_fraction,
    resolve_model,
    separation_model,
    summary_markdown,
)

logger = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]  # (done, total, description)


class Cancelled(Exception):
    """The person pressed Cancel; nothing was written."""


@dataclass
class RunResult:
    video_path: Path
    seed: int
    summary: str


def load_model(choice: ModelChoice, dtype: torch.dtype) -> StableAvatarPipeline:
    """The demo/converted folder of `choice`, or the tiny random pipeline."""
    if choice.path is None:
        from ..pipeline.tiny import build_tiny_pipeline

        logger.warning("using the tiny model with RANDOM weights: videos show noise, not a face")
        return build_tiny_pipeline()
    with library_load_errors(choice.path):
        return StableAvatarPipeline.from_pretrained(choice.path, dtype=dtype)


def separate_vocals(audio: Path, model_path: Path, work_dir: Path) -> Path:
    """The vocals of `audio` as a wav in `work_dir`, by the MDX-Net model `model_path` (Kim_Vocal_2.onnx).
    The page offers this only when that file and wan/preprocess/separation.py both exist."""
    from ..preprocess.separation import MdxSeparator, separate_file

    result = separate_file(
        MdxSeparator(model_path), audio, work_dir / f"{audio.stem}-vocals.wav", progress=False
    )
    return result.vocal_path


class Runner:
    """Holds the model menu, the loaded pipeline and the one-at-a-time lock of an app."""

    def __init__(
        self,
        checkpoints_dir: str | Path = "checkpoints",
        output_dir: str | Path = "outputs/app",
        device: str = "auto",
        dtype: str | None = None,
        loader: Callable[[ModelChoice, torch.dtype], StableAvatarPipeline] = load_model,
        live_idle_timeout: float = 10.0,
    ) -> None:
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.options = RuntimeOptions(device=device, dtype=dtype)
        self.device = self.options.torch_device()
        self.dtype = self.options.compute_dtype(self.device)
        self.models = discover_models(checkpoints_dir)
        self.separation_model = separation_model(checkpoints_dir)
        self._loader = loader
        self._loaded: tuple[tuple[str, str], StableAvatarPipeline] | None = None
        self._run_lock = threading.Lock()  # one generation at a time, even after Gradio drops a cancelled job
        self._events_lock = threading.Lock()
        self._cancel_events: dict[str, threading.Event] = {}
        self.live = LiveSessions(self._run_lock, self.output_dir, idle_timeout=live_idle_timeout)

    def cancel(self, session: str) -> bool:
        """Stop the generation or live stream of `session` at its next window step; False when it has none."""
        live = self.live.cancel(session)
        with self._events_lock:
            event = self._cancel_events.get(session)
        if event is None:
            return live
        event.set()
        return True

    def start_live(self, session: str, image: str | Path | None, settings: Settings) -> LiveSession:
        """Start streaming for `session`: the microphone's chunks go to the returned session's `push`."""
        choice = self._check(image, None, settings)
        options = {
            "prompt": settings.prompt,
            "negative_prompt": settings.negative_prompt,
            "height": settings.height,
            "width": settings.width,
            "num_inference_steps": settings.steps,
            "text_guidance_scale": settings.text_guidance,
            "audio_guidance_scale": settings.audio_guidance,
            "clip_length": settings.clip_length,
            "overlap": settings.overlap,
            "seed": settings.seed,
            "fps": FPS,
        }
        return self.live.start(session, lambda: self._pipeline(choice, settings), Path(image), options)

    def generate(
        self,
        image: str | Path | None,
        audio: Path,
        settings: Settings,
        session: str = "",
        progress: Progress | None = None,
    ) -> RunResult:
        """Check the inputs, then (after any running generation) load the model and write the mp4."""
        report = progress or (lambda done, total, text: None)
        choice = self._check(image, audio, settings)
        event = threading.Event()
        with self._events_lock:
            self._cancel_events[session] = event
        try:
            if self._run_lock.locked():
                report(0, 1, "waiting for the running generation to finish")
            with self._run_lock:
                return self._generate(choice, Path(image), audio, settings, event, report)
        finally:
            with self._events_lock:
                if self._cancel_events.get(session) is event:
                    del self._cancel_events[session]

    def _check(self, image: str | Path | None, audio: Path | None, settings: Settings) -> ModelChoice:
        """Everything that can be checked before waiting for the model: a readable error now."""
        choice = resolve_model(settings.model, self.models)
        if settings.memory_mode not in MEMORY_MODES:
            raise UserFacingError(
                f"unknown memory mode {settings.memory_mode!r}; choose one of {', '.join(MEMORY_MODES)}"
            )
        if settings.weighting not in WEIGHTING_SCHEMES:
            raise UserFacingError(
                f"unknown weighting {settings.weighting!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}"
            )
        if settings.solver not in SOLVERS:
            raise UserFacingError(f"unknown solver {settings.solver!r}; choose one of {', '.join(SOLVERS)}")
        if settings.separate_vocals and self.separation_model is None:
            raise UserFacingError(
                "vocal separation needs checkpoints/Kim_Vocal_2.onnx and its code; untick it"
            )
        StableAvatarPipeline.check_inputs(
            settings.height, settings.width, settings.clip_length, settings.overlap, FPS, "mp4", "-"
        )
        if not image:
            raise UserFacingError("upload a reference image of the person")
        load_image(image)  # a broken image fails here, before any waiting
        if audio is not None and not audio.is_file():
            raise UserFacingError("the audio upload is missing; upload it again")
        return choice

    def _pipeline(self, choice: ModelChoice, settings: Settings) -> StableAvatarPipeline:
        """The model of `choice`, loaded once per (model, memory mode), configured for this run's solver and
        step cache (the same `configure_pipeline` as the command line)."""
        options = replace(
            self.options,
            memory_mode=settings.memory_mode,
            solver=settings.solver,
            step_cache_threshold=settings.step_cache,
        )
        key = (choice.key, settings.memory_mode)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # free the previous model before loading the next
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._loaded = (key, self._loader(choice, self.dtype))
        pipeline = self._loaded[1]
        configure_pipeline(pipeline, options, self.device)
        return pipeline

    def _generate(
        self,
        choice: ModelChoice,
        image: Path,
        audio: Path,
        settings: Settings,
        event: threading.Event,
        report: Progress,
    ) -> RunResult:
        if event.is_set():
            raise Cancelled
        report(0, 1, f"loading {choice.label}")
        pipeline = self._pipeline(choice, settings)

        def on_step_end(pipe: StableAvatarPipeline, step: int, timestep, callback_kwargs: dict) -> dict:
            report(*progress_fraction(step, pipe.current_window, pipe.num_timesteps, pipe.num_windows))
            if event.is_set():
                pipe._interrupt = True  # diffusers' way: the pipeline stops at this window step
            return callback_kwargs

        name = f"{time.strftime('%Y%m%d-%H%M%S')}-seed{settings.seed}-{uuid.uuid4().hex[:6]}.mp4"
        with tempfile.TemporaryDirectory(dir=self.output_dir, prefix=".work-") as work:
            if settings.separate_vocals:
                report(0, 1, "separating the vocals")
                audio = separate_vocals(audio, self.separation_model, Path(work))
            if event.is_set():
                raise Cancelled
            report(0, 1, "encoding the image, prompt and audio")
            result = pipeline(
                image=image,
                audio=audio,
                prompt=settings.prompt,
                negative_prompt=settings.negative_prompt,
                height=settings.height,
                width=settings.width,
                num_inference_steps=settings.steps,
                text_guidance_scale=settings.text_guidance,
                audio_guidance_scale=settings.audio_guidance,
                clip_length=settings.clip_length,
                overlap=settings.overlap,
                weighting=settings.weighting,
                seed=settings.seed,
                fps=FPS,
                output_path=self.output_dir / name,
                callback_on_step_end=on_step_end,
                progress=False,
            )
            if result.interrupted:
                raise Cancelled
        summary = summary_markdown(
            settings,
            choice.label,
            result.num_frames,
            result.num_windows,
            result.seconds,
            FPS,
            default_negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        )
        return RunResult(result.video_path, result.seed, summary)
