"""Real media made on this machine for the data-preparation tests: espeak-ng speech, skimage's astronaut
(a real face), and videos muxed from those with wan.media.VideoWriter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from wan.media import VideoWriter, load_audio

RATE = 16000
FPS = 25
# The astronaut's head (rows, columns) in skimage.data.astronaut(), 512x512.
HEAD = (slice(0, 300), slice(100, 350))


def speech(path: Path, text: str = "Hello, this is a short test of the data preparation tools.") -> Path:
    """Speak `text` into a wav file (espeak-ng, 22.05 kHz mono)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng)")
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def speech_samples(folder: Path, seconds: float, rate: int = RATE) -> np.ndarray:
    """At least `seconds` of speech as float32 mono [S] at `rate` Hz (repeated if needed), cut to length."""
    once = load_audio(speech(folder / "speech.wav"), rate)
    repeats = int(np.ceil(seconds * rate / once.size))
    return np.tile(once, repeats)[: round(seconds * rate)]


def astronaut_head() -> np.ndarray:
    """uint8 [300, 250, 3]: the astronaut's head and shoulders."""
    return data.astronaut()[HEAD]


def face_frames(width: int, height: int, count: int) -> np.ndarray:
    """uint8 [count, height, width, 3]: the astronaut's head centred on grey, drifting a few pixels."""
    head = Image.fromarray(astronaut_head())
    factor = min(width / head.width, height / head.height) * 0.9
    head = np.asarray(head.resize((round(head.width * factor), round(head.height * factor)), Image.BICUBIC))
    frames = np.full((count, height, width, 3), 128, np.uint8)
    for i in range(count):
        dx = round(3 * np.sin(i / 4))  # a little motion, like a real clip
        top = (height - head.shape[0]) // 2
        left = (width - head.shape[1]) // 2 + dx
        frames[i, top : top + head.shape[0], left : left + head.shape[1]] = head
    return frames


def write_video(path: Path, frames: np.ndarray, audio: np.ndarray | None) -> Path:
    """Mux frames [T, H, W, 3] at 25 fps with optional 16 kHz mono audio into an mp4."""
    with VideoWriter(path, fps=FPS, audio=audio, audio_sample_rate=RATE) as writer:
        writer.write(frames)
    return path


def mdx_model(path: Path, dim_f: int, dim_t: int, mask: np.ndarray | None = None) -> Path:
    """An ONNX model [batch, 4, dim_f, dim_t] -> same shape: identity, or times a per-bin `mask` [dim_f]
    (an MDX-Net stand-in whose right output is known). Needs the `onnx` package."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = ["batch", 4, dim_f, dim_t]
    spec_in = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
    spec_out = helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)
    if mask is None:
        nodes, weights = [helper.make_node("Identity", ["input"], ["output"])], []
    else:
        weight = numpy_helper.from_array(mask.astype(np.float32).reshape(1, 1, dim_f, 1), "mask")
        nodes, weights = [helper.make_node("Mul", ["input", "mask"], ["output"])], [weight]
    graph = helper.make_graph(nodes, "mdx_test", [spec_in], [spec_out], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by older onnxruntime builds too
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
