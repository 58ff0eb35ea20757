"""`python app.py` in a real browser: Debian's Chromium driven by Playwright uploads the bundled example,
sees a readable error, cancels a run, generates a short video with the default model and checks the mp4
the page offers (frames, audio). Skips, saying why, when Chromium or Playwright is missing
(`bash scripts/browser-setup.sh` installs both). A screenshot is saved to the test's tmp folder and, when
STABLEAVATAR_SCREENSHOT_DIR is set, there too."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.app_helpers import free_port, http_get
from wan.media import read_video_info

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "case-1"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    for candidate in (os.environ.get("STABLEAVATAR_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` on a free 127.0.0.1 port with an empty checkpoints folder (so the default model is
    the tiny random one); stopped at the end."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -r requirements.txt)")
    root = tmp_path_factory.mktemp("app")
    port = free_port()
    log = (root / "server.log").open("w")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio"), "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "app.py",
        "--server_port",
        str(port),
        "--checkpoints_dir",
        str(root / "checkpoints"),
        "--output_dir",
        str(root / "out"),
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # bounded: 120 s at most
            if process.poll() is not None:
                pytest.fail(
                    f"app.py exited with {process.returncode}:\n{(root / 'server.log').read_text()[-3000:]}"
                )
            try:
                if http_get(url + "/")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("app.py did not answer within 120 s")
            time.sleep(0.5)
        yield {"url": url, "out": root / "out", "log": root / "server.log"}
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)
        log.close()


@pytest.fixture(scope="module")
def playwright():
    """One Playwright for the module (two sync instances cannot run at once); skips (before any server
    starts) when Playwright or Chromium is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (bash scripts/browser-setup.sh)"
    )
    if _chromium() is None:
        pytest.skip(
            "Chromium is not installed at /usr/bin/chromium (bash scripts/browser-setup.sh installs it)"
        )
    with sync_api.sync_playwright() as playwright:
        yield playwright


@contextlib.contextmanager
def _chromium_browser(playwright, extra_flags: list[str] = ()):
    """Debian's Chromium, closed at the end."""
    browser = playwright.chromium.launch(
        executable_path=_chromium(), headless=True, args=[*CHROMIUM_FLAGS, *extra_flags]
    )
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def browser(playwright):
    with _chromium_browser(playwright) as browser:
        yield browser


@pytest.fixture(scope="module")
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server["url"])
    page.wait_for_selector("#generate")
    yield page
    page.close()


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("STABLEAVATAR_SCREENSHOT_DIR"):
        folder = Path(os.environ["STABLEAVATAR_SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    return path


def _set_number(page, selector: str, value: int) -> None:
    field = page.locator(f"{selector} input[type=number]")
    field.fill(str(value))
    field.press("Tab")


def test_generate_in_the_browser(page, server, tmp_path) -> None:
    # the page says plainly that the default model has random weights
    assert "Tiny RANDOM model" in page.locator("#model-banner").inner_text()

    # nothing uploaded: a readable message, no traceback
    page.click("#generate")
    toast = page.get_by_text("upload or record the driving audio")
    toast.first.wait_for()
    assert "Traceback" not in page.content()
    page.get_by_test_id("toast-close").click()
    page.get_by_test_id("toast-close").wait_for(state="detached")

    audio = tmp_path / "speech-1s.wav"  # 1 s of the example speech keeps the run short
    samples, rate = soundfile.read(EXAMPLE / "audio.wav", frames=16000)
    soundfile.write(audio, samples, rate)
    page.locator("#reference-image input[type=file]").set_input_files(str(EXAMPLE / "reference.png"))
    page.locator("#audio-input input[type=file]").set_input_files(str(audio))
    page.locator("#reference-image img").first.wait_for()
    page.get_by_label("Custom").check()
    _set_number(page, "#width", 64)
    _set_number(page, "#height", 64)

    # a long run is cancelled from its progress bar: nothing is written
    _set_number(page, "#steps", 200)
    page.click("#generate")
    page.get_by_text("window steps").first.wait_for()
    page.click("#cancel")
    page.get_by_text("Cancelled.").first.wait_for()

    # a short run: 2 steps, random seed shown afterwards
    _set_number(page, "#steps", 2)
    page.click("#generate")
    video = page.locator("#result-video video")
    video.wait_for()
    page.locator("#summary").get_by_text("Seed:").wait_for()
    summary = page.locator("#summary").inner_text()
    assert "64x64" in summary and "25 frames (1.00 s at 25 fps)" in summary
    assert "negative prompt: the default (published) one" in summary
    shot = _screenshot(page, tmp_path, "app.png")
    assert shot.stat().st_size > 10_000

    # the offered file is a playable mp4 with the audio
    source = urllib.parse.urljoin(server["url"] + "/", video.get_attribute("src"))
    status, body = http_get(source)
    assert status == 200 and body[4:8] == b"ftyp"
    (tmp_path / "offered.mp4").write_bytes(body)
    info = read_video_info(tmp_path / "offered.mp4")
    assert info["frames"] == 25 and info["has_audio"] and (info["width"], info["height"]) == (64, 64)
    playable = page.evaluate(
        "async () => { const v = document.querySelector('#result-video video');"
        " if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));"
        " return {duration: v.duration, width: v.videoWidth}; }"
    )
    assert abs(playable["duration"] - 1.0) < 0.1 and playable["width"] == 64

    # the cancelled run left no file; only the finished video is in the output folder
    written = [p.name for p in server["out"].iterdir()]
    assert len(written) == 1 and written[0].endswith(".mp4"), written
    assert "Traceback" not in server["log"].read_text()


LIVE_AUDIO_SECONDS = 40.0


@pytest.fixture(scope="module")
def microphone_browser(playwright, tmp_path_factory):
    """Chromium whose microphone plays a wav file (the example speech repeated for 40 s, once, in real time)."""
    speech = tmp_path_factory.mktemp("microphone") / "speech.wav"
    samples, rate = soundfile.read(EXAMPLE / "audio.wav")
    soundfile.write(speech, np.tile(samples, 8)[: int(rate * LIVE_AUDIO_SECONDS)], rate)
    flags = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with _chromium_browser(playwright, flags) as browser:
        yield browser


def test_live_tab_streams_the_microphone_into_video(microphone_browser, server, tmp_path) -> None:
    page = microphone_browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server["url"])
    page.wait_for_selector("#generate")
    # small and quick (4-latent-frame windows: the first needs 0.52 s of audio); the Generate tab's settings
    # apply to the live tab
    page.get_by_label("Custom").check()
    _set_number(page, "#width", 64)
    _set_number(page, "#height", 64)
    _set_number(page, "#steps", 1)
    page.get_by_text("More settings").click()
    _set_number(page, "#clip-length", 13)
    _set_number(page, "#overlap", 1)
    page.get_by_role("tab", name="Live").click()
    page.locator("#live-image input[type=file]").set_input_files(str(EXAMPLE / "reference.png"))
    page.locator("#live-image img").first.wait_for()

    page.locator("#live-microphone").get_by_role("button", name="Record").click()
    started = time.monotonic()
    video = page.locator("#live-video video")
    video.wait_for(timeout=LIVE_AUDIO_SECONDS * 1000)
    first_video_after = time.monotonic() - started
    # frames came while the microphone was still playing the speech
    assert first_video_after < LIVE_AUDIO_SECONDS, first_video_after
    assert "Latency" in page.locator("#live-status").inner_text()
    source = urllib.parse.urljoin(server["url"] + "/", video.get_attribute("src"))
    status, body = http_get(source)
    assert status == 200
    (tmp_path / "window.mp4").write_bytes(body)
    info = read_video_info(tmp_path / "window.mp4")
    assert info["frames"] > 0 and info["has_audio"] and (info["width"], info["height"]) == (64, 64)
    playable = page.evaluate(
        "async () => { const v = document.querySelector('#live-video video');"
        " if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));"
        " return {duration: v.duration, width: v.videoWidth}; }"
    )
    assert playable["duration"] > 0 and playable["width"] == 64
    _screenshot(page, tmp_path, "live.png")

    # stopping ends the stream; the whole video is offered
    page.locator("#live-microphone").get_by_role("button", name="Stop").click()
    whole = page.locator("#live-whole video")
    whole.wait_for()
    source = urllib.parse.urljoin(server["url"] + "/", whole.get_attribute("src"))
    status, body = http_get(source)
    (tmp_path / "whole.mp4").write_bytes(body)
    whole_info = read_video_info(tmp_path / "whole.mp4")
    assert status == 200 and whole_info["frames"] >= info["frames"] and whole_info["has_audio"]
    assert "Traceback" not in server["log"].read_text()
    page.close()
