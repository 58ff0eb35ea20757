"""The Gradio page of `python app.py`: inputs, settings, a progress bar over steps x windows, Cancel, and
the mp4 with its seed and settings. Safe by default: 127.0.0.1, upload limits, only the output folder and
the app's own temp folder served, one generation at a time behind a queue."""

from __future__ import annotations

import argparse
import atexit
import inspect
import logging
import os
import shutil
import tempfile
import types
from pathlib import Path

import gradio as gr
from gradio.data_classes import ImageData

from ..errors import UserFacingError
from ..media import load_image
from ..pipeline.conditioning import DEFAULT_NEGATIVE_PROMPT
from ..pipeline.memory import MEMORY_MODES
from ..pipeline.solvers import SOLVERS
from ..pipeline.windows import WEIGHTING_SCHEMES
from .logic import (
    AUDIO_FROM_AUDIO,
    AUDIO_FROM_VIDEO,
    AUDIO_SOURCES,
    CUSTOM_SIZE,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    SIZE_MULTIPLE,
    SIZE_PRESETS,
    fit_to_image,
    make_settings,
    resolve_audio,
    size_choice,
    user_message,
)
from .runner import FPS, Cancelled, Runner

logger = logging.getLogger(__name__)
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "case-1"
DEFAULT_PROMPT = "The protagonist is speaking."
RANDOM_MODEL_NOTE = (
    "**Tiny RANDOM model.** No trained model was found, so the default is a tiny model with random "
    "weights: its videos are coloured noise, not a face. It shows that everything runs. For real videos, "
    "convert the released weights into `checkpoints/` (see the README) and restart the app."
)
CANCELLED = "**Cancelled.** The generation stopped; nothing was saved."
# System fonts: nothing is fetched, and Gradio's bundled bold font lacks some capitals.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)
CSS = (
    "#model-banner {background: rgba(245, 158, 11, 0.15); border-left: 4px solid #f59e0b; padding: 6px 12px;}"
)


def _model_banner(key: str, runner: Runner, **options) -> gr.Markdown:
    """The warning shown while the tiny random model is chosen (a new component, or an update)."""
    random = any(c.key == key and c.is_random for c in runner.models)
    return gr.Markdown(RANDOM_MODEL_NOTE if random else "", visible=random, **options)


def _model_settings(key: str, runner: Runner) -> tuple:
    """New values for (size preset, custom row, width, height, steps, text and audio guidance, clip length,
    overlap): what the chosen model was made for."""
    settings = next(c for c in runner.models if c.key == key).settings()
    width, height = int(settings["width"]), int(settings["height"])
    preset = size_choice(width, height)
    return (
        preset,
        gr.Row(visible=preset == CUSTOM_SIZE),
        width,
        height,
        settings["num_inference_steps"],
        settings["text_guidance_scale"],
        settings["audio_guidance_scale"],
        settings["clip_length"],
        settings["overlap"],
    )


def _page_error(error: Exception) -> gr.Error:
    """What the page shows for `error`: one readable line, never a traceback (unexpected errors are
    logged in full on the server)."""
    if not isinstance(error, UserFacingError):
        logger.error("request failed", exc_info=error)
    return gr.Error(user_message(error), print_exception=False)


def _readable_preprocess(image: gr.Image, payload: ImageData | None) -> str | None:
    """`gr.Image.preprocess`, with an unreadable upload as one readable line on the page (Gradio decodes the
    upload before any handler runs, and shows its failure only as "Error")."""
    try:
        return gr.Image.preprocess(image, payload)
    except Exception:
        name = getattr(payload, "orig_name", None) or "the uploaded file"
        raise _page_error(
            UserFacingError(
                f"{name} is not an image this app can read; upload a PNG, JPEG or WebP image of the person"
            )
        ) from None


def _reference_image(elem_id: str) -> gr.Image:
    """The reference image input (a file path). Its preprocess is replaced on the instance, not in a subclass:
    Gradio writes a .pyi stub beside the source of every component subclass."""
    image = gr.Image(
        label="Reference image", type="filepath", sources=["upload", "clipboard"], height=280, elem_id=elem_id
    )
    image.preprocess = types.MethodType(_readable_preprocess, image)
    return image


def own_temp_folder() -> Path:
    """Point Gradio at a new private folder of this app's own (uploads, copies of the videos shown), removed
    at exit, and return it.

    Gradio serves every file under its temp folder, and its default, /tmp/gradio (or GRADIO_TEMP_DIR), is
    shared by every Gradio app and user of the machine. Components read the folder when they are built and
    the server when it starts, so this runs first (`build_ui` calls it). TMPDIR moves it elsewhere.
    """
    folder = Path(tempfile.mkdtemp(prefix="stableavatar-app-")).resolve()
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder / "examples")  # also served; by default ./.gradio
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _fit(image: str | None, width: float | None, height: float | None) -> tuple[int, int]:
    """The "Fit to image" button: the image's aspect ratio (after EXIF rotation) at about the current
    number of pixels."""
    try:
        if not image:
            raise UserFacingError("upload the reference image first, then fit the size to it")
        return fit_to_image(*load_image(image).size, area=(width or 512) * (height or 512))
    except Exception as error:
        raise _page_error(error) from None


def _on_preset(preset: str) -> tuple:
    """Show the custom size fields for "Custom"; a preset fills them, so "Custom" starts from it."""
    if preset == CUSTOM_SIZE:
        return gr.Row(visible=True), gr.skip(), gr.skip()
    return gr.Row(visible=False), *SIZE_PRESETS[preset]


SETTINGS_FIELDS = tuple(inspect.signature(make_settings).parameters)
# The Generate tab's settings the live tab uses (all but the vocal separation of uploaded audio).
LIVE_FIELDS = tuple(name for name in SETTINGS_FIELDS if name != "separate_vocals")


def build_ui(runner: Runner) -> gr.Blocks:
    """The page; `runner` does the work. Gradio's files go to a folder of this app's own (`own_temp_folder`)."""
    own_temp_folder()
    models = runner.models

    with gr.Blocks(title="StableAvatar", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(
            "# StableAvatar\nOne picture of a person and a speech or singing track give a video of that person "
            "talking or singing, as long as the audio, with the audio in the mp4."
        )
        banner = _model_banner(models[0].key, runner, elem_id="model-banner")
        initial = models[0].settings()
        initial_size = (int(initial["width"]), int(initial["height"]))
        with gr.Tab("Generate", elem_id="generate-tab"), gr.Row(equal_height=False):
            with gr.Column(scale=1):
                image = _reference_image("reference-image")
                audio_source = gr.Radio(
                    list(AUDIO_SOURCES), value=AUDIO_FROM_AUDIO, label="Audio from", elem_id="audio-source"
                )
                audio = gr.Audio(
                    label="Driving audio (upload or record)",
                    sources=["upload", "microphone"],
                    type="filepath",
                    elem_id="audio-input",
                )
                video = gr.Video(
                    label="Video to take the audio from",
                    sources=["upload"],
                    visible=False,
                    elem_id="video-input",
                )
                separate = gr.Checkbox(
                    label="Separate the vocals first (the voice alone drives the video and is the mp4's audio)",
                    value=False,
                    visible=runner.separation_model is not None,
                    elem_id="separate-vocals",
                )
                prompt = gr.Textbox(
                    label="Prompt",
                    value=DEFAULT_PROMPT,
                    lines=2,
                    elem_id="prompt",
                    info="Describe the person, what they do and the background.",
                )
                if (EXAMPLE_DIR / "reference.png").is_file() and (EXAMPLE_DIR / "audio.wav").is_file():
                    example_prompt = EXAMPLE_DIR / "prompt.txt"
                    gr.Examples(
                        [
                            [
                                str(EXAMPLE_DIR / "reference.png"),
                                str(EXAMPLE_DIR / "audio.wav"),
                                example_prompt.read_text().strip()
                                if example_prompt.is_file()
                                else DEFAULT_PROMPT,
                            ]
                        ],
                        inputs=[image, audio, prompt],
                        label="Bundled example",
                    )
            with gr.Column(scale=1):
                model = gr.Dropdown(
                    [(c.label, c.key) for c in models],
                    value=models[0].key,
                    label="Model",
                    elem_id="model",
                    info="The demo or tiny model, and every converted folder under checkpoints/ (restart to rescan).",
                )
                preset = gr.Radio(
                    [*SIZE_PRESETS, CUSTOM_SIZE],
                    value=size_choice(*initial_size),
                    label="Size (width x height)",
                    elem_id="size-preset",
                )
                with gr.Row(
                    visible=size_choice(*initial_size) == CUSTOM_SIZE, equal_height=True
                ) as custom_row:
                    side = {"minimum": MIN_SIDE, "maximum": MAX_SIDE, "step": SIZE_MULTIPLE, "precision": 0}
                    width = gr.Number(initial_size[0], label="Width", elem_id="width", **side)
                    height = gr.Number(initial_size[1], label="Height", elem_id="height", **side)
                    fit = gr.Button("Fit to image", elem_id="fit-to-image")
                with gr.Row():
                    steps = gr.Slider(
                        1,
                        MAX_STEPS,
                        value=initial["num_inference_steps"],
                        step=1,
                        label="Steps",
                        elem_id="steps",
                    )
                    seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, elem_id="seed")
                with gr.Accordion("More settings", open=False):
                    with gr.Row():
                        text_guidance = gr.Slider(
                            0,
                            10,
                            value=initial["text_guidance_scale"],
                            step=0.5,
                            label="Text guidance",
                            elem_id="text-guidance",
                        )
                        audio_guidance = gr.Slider(
                            0,
                            10,
                            value=initial["audio_guidance_scale"],
                            step=0.5,
                            label="Audio guidance",
                            info="Higher: tighter lip sync",
                            elem_id="audio-guidance",
                        )
                    with gr.Row():
                        clip_length = gr.Number(
                            initial["clip_length"],
                            label="Clip length (frames, 4k+1)",
                            precision=0,
                            elem_id="clip-length",
                        )
                        overlap = gr.Number(
                            initial["overlap"],
                            label="Overlap (latent frames)",
                            precision=0,
                            elem_id="overlap",
                        )
                        weighting = gr.Radio(
                            list(WEIGHTING_SCHEMES),
                            value="uniform",
                            label="Overlap weighting",
                            elem_id="weighting",
                        )
                    with gr.Row():
                        solver = gr.Radio(
                            list(SOLVERS),
                            value="euler",
                            label="Solver",
                            elem_id="solver",
                            info="; ".join(f"{k}: {v}" for k, v in SOLVERS.items()),
                        )
                        step_cache = gr.Number(
                            0.0,
                            label="Step cache threshold (0: off)",
                            elem_id="step-cache",
                            info="skip DiT blocks on steps whose first block barely changes (e.g. 0.1)",
                        )
                    memory_mode = gr.Dropdown(
                        list(MEMORY_MODES),
                        value="model_full_load",
                        label="Memory mode",
                        elem_id="memory-mode",
                        info="; ".join(f"{k}: {v}" for k, v in MEMORY_MODES.items()),
                    )
                    negative_prompt = gr.Textbox(
                        label="Negative prompt",
                        value=DEFAULT_NEGATIVE_PROMPT,
                        lines=2,
                        elem_id="negative-prompt",
                    )
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
                result = gr.Video(
                    label="Result (mp4 with audio)",
                    interactive=False,
                    buttons=["download"],
                    height=520,
                    elem_id="result-video",
                )
                summary = gr.Markdown(elem_id="summary")

        with gr.Tab("Live", elem_id="live-tab"):
            gr.Markdown(
                "Speak into the microphone: the video starts while you talk (windows-outer sampling); "
                "every half second the player shows what was made since. The model, size, steps, guidance "
                "and windows are those of the Generate tab. The first frame comes once the first window's "
                "audio is in and denoised; the latency is shown below."
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    live_image = _reference_image("live-image")
                    microphone = gr.Audio(
                        label="Microphone",
                        sources=["microphone"],
                        streaming=True,
                        type="numpy",
                        elem_id="live-microphone",
                    )
                with gr.Column(scale=1):
                    live_video = gr.Video(
                        label="Live: the newest frames",
                        autoplay=True,
                        interactive=False,
                        height=320,
                        elem_id="live-video",
                    )
                    live_status = gr.Markdown(elem_id="live-status")
                    live_whole = gr.Video(
                        label="The whole stream (when you stop)",
                        interactive=False,
                        buttons=["download"],
                        elem_id="live-whole",
                    )

        private = {"api_visibility": "private", "queue": False}
        model.change(lambda key: _model_banner(key, runner), model, banner, **private)
        model.change(
            lambda key: _model_settings(key, runner),
            model,
            [preset, custom_row, width, height, steps, text_guidance, audio_guidance, clip_length, overlap],
            **private,
        )
        preset.change(_on_preset, preset, [custom_row, width, height], **private)
        audio_source.change(
            lambda s: (gr.Audio(visible=s == AUDIO_FROM_AUDIO), gr.Video(visible=s == AUDIO_FROM_VIDEO)),
            audio_source,
            [audio, video],
            **private,
        )
        fit.click(_fit, [image, width, height], [width, height], **private)

        # The generation's inputs; their names are the API's parameter names (gradio_client, /gradio_api).
        def generate(
            image,
            audio_source,
            audio,
            video,
            separate_vocals,
            prompt,
            negative_prompt,
            model,
            preset,
            width,
            height,
            steps,
            seed,
            text_guidance,
            audio_guidance,
            clip_length,
            overlap,
            weighting,
            memory_mode,
            solver,
            step_cache,
            request: gr.Request,
            progress=gr.Progress(),  # noqa: B008 (Gradio's idiom)
        ):
            def report(done: int, total: int, text: str) -> None:
                if total > 1:
                    progress((done, total), desc=text, unit="window steps")
                else:
                    progress(done / total, desc=text)

            page = locals()  # the page's values by name, as make_settings takes them
            try:
                settings = make_settings(**{name: page[name] for name in SETTINGS_FIELDS})
                audio_path = resolve_audio(audio_source, audio, video)
                result = runner.generate(image, audio_path, settings, request.session_hash or "", report)
            except Cancelled:
                return None, CANCELLED
            except Exception as error:
                raise _page_error(error) from None
            return str(result.video_path), result.summary

        def cancel(request: gr.Request) -> str:
            runner.cancel(request.session_hash or "")
            return CANCELLED

        job = run.click(
            generate,
            [
                image,
                audio_source,
                audio,
                video,
                separate,
                prompt,
                negative_prompt,
                model,
                preset,
                width,
                height,
                steps,
                seed,
                text_guidance,
                audio_guidance,
                clip_length,
                overlap,
                weighting,
                memory_mode,
                solver,
                step_cache,
            ],
            [result, summary],
            api_name="generate",
            concurrency_limit=1,
            concurrency_id="generation",
        )
        stop.click(cancel, None, summary, cancels=[job], api_visibility="private", concurrency_limit=None)

        components = locals()  # the page's components, named as make_settings names their values
        live_settings = [components[name] for name in LIVE_FIELDS]

        def live_chunk(request: gr.Request, audio, image, *values):
            """A microphone chunk: (re)start the session's stream if needed, queue the audio, show what is new."""
            page = dict(zip(LIVE_FIELDS, values, strict=True))  # the Generate tab's settings
            session = request.session_hash or ""
            try:
                live = runner.live.get(session)
                if live is None or not (live.accepting and live.running):
                    settings = make_settings(**page)
                    live = runner.start_live(session, image, settings)
                if audio is not None:
                    live.push(*audio)
            except Exception as error:
                raise _page_error(error) from None
            segment = live.next_segment()
            return (str(segment) if segment else gr.skip()), live.status(FPS)

        def live_stop(request: gr.Request):
            """The recording stopped: the last windows are made and shown, then the whole video."""
            live = runner.live.get(request.session_hash or "")
            if live is None:
                yield gr.skip(), "", gr.skip()
                return
            live.finish()
            while not live.wait(0.25):
                segment = live.next_segment()
                if segment:
                    yield str(segment), live.status(FPS), gr.skip()
            segment = live.next_segment()
            whole = str(live.video_path) if live.frames else None
            yield (str(segment) if segment else gr.skip()), live.status(FPS), whole

        live_options = {"api_visibility": "private", "concurrency_limit": None}
        microphone.stream(
            live_chunk,
            [microphone, live_image, *live_settings],
            [live_video, live_status],
            stream_every=0.5,
            time_limit=3600,
            **live_options,
        )
        microphone.stop_recording(live_stop, None, [live_video, live_status, live_whole], **live_options)

        def page_closed(request: gr.Request) -> None:
            runner.cancel(request.session_hash or "")  # frees a live stream's worker at once

        demo.unload(page_closed)
    return demo


def launch_options(args: argparse.Namespace, output_dir: Path) -> dict:
    """Keyword arguments of `Blocks.launch`: the safe defaults and the command line's choices."""
    return {
        "server_name": args.server_name,
        "server_port": args.server_port,
        "share": args.share,
        "allowed_paths": [str(output_dir.resolve())],
        "max_file_size": args.max_file_size,
        "show_error": False,
        "footer_links": ["settings"],
        "run_history": False,
        "enable_monitoring": False,
        "mcp_server": False,
        "pwa": False,
        "ssr_mode": False,
        "theme": THEME,
        "css": CSS,
    }
