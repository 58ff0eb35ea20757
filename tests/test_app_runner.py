"""The app's generation runner on the tiny random model (progress, cancel, one at a time, model cache,
early errors) and its Gradio server without a browser (binding, file access, errors through the API)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import soundfile
from PIL import Image

from tests.app_helpers import free_port, http_get
from wan.app.logic import CUSTOM_SIZE, TINY_MODEL_KEY, make_settings
from wan.app.runner import Cancelled, Runner, load_model
from wan.errors import UserFacingError
from wan.media import read_video_info
from wan.pipeline.tiny import build_tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "case-1"
IMAGE = EXAMPLE / "reference.png"
SMALL = dict(
    model=TINY_MODEL_KEY,
    prompt="A person speaks.",
    negative_prompt="",
    preset=CUSTOM_SIZE,
    width=32,
    height=32,
    steps=2,
    text_guidance=3.0,
    audio_guidance=5.0,
    clip_length=21,
    overlap=2,
    weighting="uniform",
    seed=3,
    memory_mode="model_full_load",
)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """The first 1.2 s of the bundled speech: 30 frames, two 21-frame windows."""
    samples, rate = soundfile.read(EXAMPLE / "audio.wav", frames=int(16000 * 1.2))
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    soundfile.write(path, samples, rate)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """A checkpoints folder holding one converted model (the tiny pipeline saved as a diffusers folder)."""
    root = tmp_path_factory.mktemp("checkpoints")
    build_tiny_pipeline(seed=1).save_pretrained(root / "my-model")
    return root


class CountingLoader:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, choice, dtype):
        self.calls.append(choice.key)
        return load_model(choice, dtype)


@pytest.fixture
def runner(tmp_path, checkpoints) -> Runner:
    return Runner(checkpoints, tmp_path / "out", device="cpu", loader=CountingLoader())


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.mp4") if not p.name.startswith("."))


def test_generation_reports_steps_times_windows_and_writes_the_video(runner, audio) -> None:
    reports = []
    result = runner.generate(IMAGE, audio, make_settings(**SMALL), "s", lambda *r: reports.append(r))
    info = read_video_info(result.video_path)
    assert info["frames"] == 30 and info["has_audio"] and (info["width"], info["height"]) == (32, 32)
    assert (
        result.video_path.parent == runner.output_dir and result.seed == 3 and "**Seed: 3**" in result.summary
    )
    sampling = [(done, total) for done, total, _ in reports if total > 1]
    assert sampling == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 2 steps x 2 windows
    assert [text for _, total, text in reports if total > 1][-2:] == [
        "step 2/2, window 1/2",
        "decoding the video and writing the mp4",
    ]
    assert "Tiny RANDOM model" in result.summary
    # the loaded model is kept between runs; choosing the converted folder loads it in its place
    runner.generate(IMAGE, audio, make_settings(**{**SMALL, "seed": -1}), "s")
    assert runner._loader.calls == [TINY_MODEL_KEY]
    converted = str(runner.models[1].path)
    result = runner.generate(IMAGE, audio, make_settings(**{**SMALL, "model": converted}), "s")
    assert runner._loader.calls == [TINY_MODEL_KEY, converted] and "my-model" in result.summary
    assert len(_videos(runner.output_dir)) == 3


def test_cancel_stops_at_the_next_window_step_and_writes_nothing(runner, audio) -> None:
    reports = []

    def progress(done, total, text):
        reports.append(done)
        if total > 1:
            assert runner.cancel("me")

    with pytest.raises(Cancelled):
        runner.generate(IMAGE, audio, make_settings(**SMALL), "me", progress)
    assert reports[-1] == 1  # stopped right after the first window step
    assert _videos(runner.output_dir) == [] and not list(runner.output_dir.glob(".*"))
    assert not runner.cancel("me")  # nothing left to cancel


def test_one_generation_at_a_time(runner, audio) -> None:
    waited = threading.Event()
    second: dict = {}

    def run_second():
        def progress(done, total, text):
            if text.startswith("waiting"):
                waited.set()

        second["result"] = runner.generate(IMAGE, audio, make_settings(**{**SMALL, "seed": 4}), "b", progress)

    thread = threading.Thread(target=run_second)

    def first_progress(done, total, text):
        if done == 1 and total > 1 and not thread.is_alive():
            thread.start()
            assert waited.wait(30), "the second generation did not wait for the first"

    first = runner.generate(IMAGE, audio, make_settings(**SMALL), "a", first_progress)
    thread.join(60)
    assert first.seed == 3 and second["result"].seed == 4


def test_vocal_separation_feeds_the_vocals_to_the_video(tmp_path, checkpoints, audio) -> None:
    separation = pytest.importorskip("tests.test_preprocess_separation", reason="needs onnx and onnxruntime")
    folder = tmp_path / "with-separation"
    shutil.copytree(checkpoints, folder)
    kim = separation.KIM  # an identity network under Kim_Vocal_2's name: the "vocals" are the input
    separation.mdx_model(folder / "Kim_Vocal_2.onnx", kim.dim_f, kim.dim_t)
    runner = Runner(folder, tmp_path / "out", device="cpu")
    assert runner.separation_model == folder / "Kim_Vocal_2.onnx"
    texts = []
    settings = make_settings(**{**SMALL, "separate_vocals": True})
    result = runner.generate(IMAGE, audio, settings, progress=lambda d, t, text: texts.append(text))
    assert "separating the vocals" in texts and "separate vocals: True" in result.summary
    info = read_video_info(result.video_path)
    assert info["frames"] == 30 and info["has_audio"]
    assert [p.name for p in runner.output_dir.iterdir()] == [result.video_path.name]  # work files removed


@pytest.mark.parametrize(
    ("change", "image", "message"),
    [
        ({"clip_length": 20}, IMAGE, "clip length must be 4k\\+1"),
        ({"overlap": 6}, IMAGE, "overlap must be between 0 and 5"),
        ({"memory_mode": "all"}, IMAGE, "unknown memory mode"),
        ({"model": "/etc"}, IMAGE, "unknown model"),
        ({"separate_vocals": True}, IMAGE, "vocal separation needs"),
        ({}, None, "upload a reference image"),
        ({}, REPO / "README.md", "cannot read image file README.md"),
    ],
)
def test_bad_input_fails_before_any_model_is_loaded(runner, audio, change, image, message) -> None:
    with pytest.raises(UserFacingError, match=message):
        runner.generate(image, audio, make_settings(**{**SMALL, **change}))
    assert runner._loader.calls == []


def test_page_errors_and_fit_to_image(tmp_path, caplog) -> None:
    ui = pytest.importorskip("wan.app.ui")
    error = ui._page_error(UserFacingError("the width must be a multiple of 16"))
    assert error.message == "the width must be a multiple of 16" and not error.print_exception
    assert "server log" in ui._page_error(KeyError("x")).message and "KeyError" in caplog.text
    photo = tmp_path / "phone.jpg"  # stored 200x100, shown 100x200 (EXIF orientation 6: rotate 90)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (200, 100), "red").save(photo, exif=exif)
    assert ui._fit(str(photo), 64, 64) == (48, 96)
    for image, message in [
        (None, "upload the reference image first"),
        (str(REPO / "README.md"), "cannot read"),
    ]:
        with pytest.raises(ui.gr.Error, match=message):
            ui._fit(image, 64, 64)


def test_app_command_line_defaults_are_safe_and_errors_are_one_line(capsys) -> None:
    from wan.app.cli import build_parser, main
    from wan.cli import run_cli

    args = build_parser().parse_args([])
    assert (args.server_name, args.server_port, args.share) == ("127.0.0.1", 7860, False)
    assert (args.max_file_size, args.output_dir) == ("200mb", Path("outputs/app"))

    assert run_cli(main, ["--dtype", "float7"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dtype 'float7'")


def test_server_is_local_serves_only_its_outputs_and_shows_readable_errors(
    tmp_path, audio, monkeypatch
) -> None:
    gradio_client = pytest.importorskip("gradio_client")
    Client, handle_file = gradio_client.Client, gradio_client.handle_file
    httpx = pytest.importorskip("httpx")
    # Gradio's temp folder, shared by every Gradio app and user of the machine (/tmp/gradio by default).
    shared = tmp_path / "gradio-shared"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(shared))
    secret = shared / "0123abcd" / "another-apps-upload.txt"
    secret.parent.mkdir(parents=True)
    secret.write_text("not yours")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")

    from wan.app.cli import build_parser
    from wan.app.ui import build_ui, launch_options

    port = free_port()
    args = build_parser().parse_args(
        ["--server_port", str(port), "--output_dir", str(tmp_path / "out"), "--max_file_size", "1mb"]
    )
    runner = Runner(tmp_path / "checkpoints", args.output_dir, device="cpu", loader=CountingLoader())
    options = launch_options(args, runner.output_dir)
    assert options["server_name"] == "127.0.0.1" and not options["share"]
    assert options["allowed_paths"] == [str(runner.output_dir)] and options["max_file_size"] == "1mb"
    demo = build_ui(runner)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    (runner.output_dir / "old.mp4").write_bytes(b"\0" * 16)
    try:
        demo.launch(**options, prevent_thread_lock=True, quiet=True)
        base = f"http://127.0.0.1:{port}"
        assert http_get(base + "/")[0] == 200
        assert http_get(f"{base}/gradio_api/file={runner.output_dir / 'old.mp4'}")[0] == 200
        for path in ("/etc/passwd", REPO / "README.md", IMAGE, secret):
            assert http_get(f"{base}/gradio_api/file={path}")[0] == 403, path
        upload = f"{base}/gradio_api/upload"
        uploaded = httpx.post(upload, files={"files": ("a.wav", b"\0" * 1000)}, timeout=10)
        assert uploaded.status_code == 200
        (own,) = uploaded.json()  # the app's own uploads are served back to the page, from its own folder
        assert http_get(f"{base}/gradio_api/file={own}")[0] == 200 and shared not in Path(own).parents
        too_big = httpx.post(upload, files={"files": ("b.wav", b"\0" * 2_000_000)}, timeout=10)
        assert too_big.status_code == 413
        generation = [fn for fn in demo.fns.values() if fn.api_name == "generate"]
        assert len(generation) == 1 and generation[0].concurrency_limit == 1
        client = Client(base + "/", verbose=False)
        page = dict(
            image=None,
            audio_source="Audio file or microphone",
            audio=None,
            video=None,
            separate_vocals=False,
            prompt="p",
            negative_prompt="",
            model=TINY_MODEL_KEY,
            preset="Custom",
            width=64,
            height=64,
            steps=2,
            seed=-1,
            text_guidance=3.0,
            audio_guidance=5.0,
            clip_length=81,
            overlap=5,
            weighting="uniform",
            memory_mode="model_full_load",
        )
        with pytest.raises(Exception, match="upload or record the driving audio") as caught:
            client.predict(**page, api_name="/generate")
        assert "Traceback" not in str(caught.value)
        with pytest.raises(Exception, match="the width must be a multiple of 16, got 100; try 96 or 112"):
            client.predict(**{**page, "width": 100}, api_name="/generate")
        with pytest.raises(
            Exception, match="broken.png is not an image this app can read; upload a PNG"
        ) as caught:
            client.predict(
                **{**page, "image": handle_file(broken), "audio": handle_file(audio)}, api_name="/generate"
            )
        assert "Traceback" not in str(caught.value)
    finally:
        demo.close()
    assert runner._loader.calls == []
