"""Synthetic talking faces in the `talking_face_data` layout: deterministic from a seed, no downloads.

Each clip is a cartoon face (face shape, skin, hair, eyes, clothing and background drawn from the seed)
whose mouth opening follows the loudness of the audio frame by frame, with blinks and small head motion.
The audio is espeak-ng speech when the program is installed, otherwise speech-like synthesized syllables.
Face and lip masks come from the drawing itself, so they are exact.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from ..generation_settings import SAMPLE_RATE
from ..media import VideoWriter, load_audio

SENTENCES = [
    "Hello, how are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "I would like to tell you a short story.",
    "Music and speech move the lips in different ways.",
    "Please remember to bring the blue umbrella.",
    "We will meet again tomorrow at noon.",
    "Numbers like seven, eight and nine are easy to say.",
    "Open your mouth wide and say ah.",
]


@dataclass(frozen=True)
class FaceStyle:
    """What one identity looks like (all colours RGB 0-255, sizes relative to the frame)."""

    background: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    eyes: tuple[int, int, int]
    clothing: tuple[int, int, int]
    face_width: float
    face_height: float

    @classmethod
    def random(cls, rng: np.random.Generator, face_scale: float = 1.0) -> FaceStyle:
        """A random identity; `face_scale` > 1 draws a closer view (the same draws, a bigger face)."""

        def colour(low: int, high: int) -> tuple[int, int, int]:
            return tuple(int(v) for v in rng.integers(low, high, 3))

        skin_tone = rng.uniform(0.35, 1.0)
        skin = (int(235 * skin_tone), int(190 * skin_tone), int(160 * skin_tone))
        return cls(
            colour(0, 256),
            skin,
            colour(0, 120),
            colour(20, 140),
            colour(0, 256),
            face_scale * float(rng.uniform(0.30, 0.40)),
            face_scale * float(rng.uniform(0.42, 0.52)),
        )


def speech_audio(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """16 kHz mono speech: espeak-ng sentences when available, else synthesized syllables. `[S]` float32."""
    if shutil.which("espeak-ng"):
        pieces, total = [], 0
        while total < seconds * SAMPLE_RATE:
            sentence = SENTENCES[int(rng.integers(len(SENTENCES)))]
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "s.wav"
                voice = ["en-us", "en", "en-gb"][int(rng.integers(3))]
                speed = str(int(rng.integers(130, 180)))
                subprocess.run(
                    ["espeak-ng", "-v", voice, "-s", speed, "-w", str(path), sentence],
                    check=True,
                    capture_output=True,
                )
                piece = load_audio(path, SAMPLE_RATE)
            pieces += [piece, np.zeros(int(rng.integers(1600, 6400)), np.float32)]
            total += len(pieces[-2]) + len(pieces[-1])
        audio = np.concatenate(pieces)
    else:
        audio = _synthetic_syllables(seconds, rng)
    audio = audio[: int(seconds * SAMPLE_RATE)]
    return (audio / max(float(np.abs(audio).max()), 1e-6) * 0.8).astype(np.float32)


def _synthetic_syllables(seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    envelope = np.zeros(n)
    position = 0
    while position < n:
        length = int(rng.uniform(0.08, 0.3) * SAMPLE_RATE)
        if rng.random() < 0.8:
            envelope[position : position + length] = np.hanning(len(envelope[position : position + length]))
        position += length + int(rng.uniform(0.02, 0.15) * SAMPLE_RATE)
    pitch = 110 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (voiced * envelope).astype(np.float32)


def loudness_per_frame(audio: np.ndarray, num_frames: int, fps: int = 25) -> np.ndarray:
    """RMS loudness of each video frame's audio, normalised to [0, 1]. `[num_frames]`."""
    per_frame = SAMPLE_RATE // fps
    frames = np.zeros((num_frames, per_frame), np.float32)
    usable = audio[: num_frames * per_frame]
    frames.reshape(-1)[: len(usable)] = usable
    rms = np.sqrt((frames**2).mean(axis=1))
    return np.clip(rms / max(float(np.percentile(rms, 95)), 1e-6), 0.0, 1.0)


def luminance(frames: np.ndarray) -> np.ndarray:
    """`[..., H, W, 3]` uint8 or [0, 1] floats -> `[..., H, W]` luminance in [0, 1]."""
    frames = frames.astype(np.float32) / (255.0 if frames.dtype == np.uint8 else 1.0)
    return frames @ np.array([0.299, 0.587, 0.114], np.float32)


def mouth_opening(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """`[T]` mean darkness (1 - luminance) of the box (x0, y0, x1, y1) in each frame `[T, H, W, 3]`: the
    mouth's interior is nearly black, so a wider-open mouth makes its box darker."""
    x0, y0, x1, y1 = box
    return 1.0 - luminance(frames[:, y0:y1, x0:x1]).mean(axis=(1, 2))


def draw_face(
    style: FaceStyle, size: tuple[int, int], mouth_open: float, eyes_open: bool, offset: tuple[float, float]
) -> tuple[Image.Image, Image.Image, Image.Image]:
    """One frame and its face and lip masks (mode 'L', 255 inside). `size` is (width, height)."""
    width, height = size
    image = Image.new("RGB", size, style.background)
    face_mask = Image.new("L", size, 0)
    lip_mask = Image.new("L", size, 0)
    draw, face_draw, lip_draw = ImageDraw.Draw(image), ImageDraw.Draw(face_mask), ImageDraw.Draw(lip_mask)
    cx, cy = width * (0.5 + offset[0]), height * (0.45 + offset[1])
    fw, fh = width * style.face_width / 2, height * style.face_height / 2
    draw.rectangle([cx - fw * 1.6, cy + fh * 0.9, cx + fw * 1.6, height], fill=style.clothing)  # shoulders
    draw.ellipse([cx - fw * 1.08, cy - fh * 1.12, cx + fw * 1.08, cy + fh * 0.3], fill=style.hair)
    face_box = [cx - fw, cy - fh, cx + fw, cy + fh]
    draw.ellipse(face_box, fill=style.skin)
    face_draw.ellipse(face_box, fill=255)
    for side in (-1, 1):
        ex, ey = cx + side * fw * 0.4, cy - fh * 0.2
        if eyes_open:
            draw.ellipse(
                [ex - fw * 0.14, ey - fh * 0.08, ex + fw * 0.14, ey + fh * 0.08], fill=(250, 250, 250)
            )
            draw.ellipse([ex - fw * 0.07, ey - fh * 0.07, ex + fw * 0.07, ey + fh * 0.07], fill=style.eyes)
        else:
            draw.line([ex - fw * 0.14, ey, ex + fw * 0.14, ey], fill=(40, 30, 30), width=max(1, width // 128))
    mx, my = cx, cy + fh * 0.5
    mouth_half_height = fh * (0.03 + 0.22 * mouth_open)
    lips = [
        mx - fw * 0.35,
        my - mouth_half_height - fh * 0.05,
        mx + fw * 0.35,
        my + mouth_half_height + fh * 0.05,
    ]
    draw.ellipse(lips, fill=(170, 60, 70))
    draw.ellipse(
        [mx - fw * 0.28, my - mouth_half_height, mx + fw * 0.28, my + mouth_half_height], fill=(60, 15, 20)
    )
    lip_draw.ellipse(lips, fill=255)
    return image, face_mask, lip_mask


def write_clip(
    folder: Path,
    seed: int,
    seconds: float,
    size: tuple[int, int],
    fps: int = 25,
    audio: np.ndarray | None = None,
    face_scale: float = 1.0,
) -> Path:
    """One clip: `sub_clip.mp4`, `audio.wav`, `images/`, `face_masks/`, `lip_masks/` (frame_i.png)."""
    rng = np.random.default_rng(seed)
    style = FaceStyle.random(rng, face_scale)
    audio = speech_audio(seconds, rng) if audio is None else audio
    num_frames = int(len(audio) / SAMPLE_RATE * fps)
    loudness = loudness_per_frame(audio, num_frames, fps)
    blink_frames = set()
    for start in rng.choice(max(num_frames - 3, 1), size=max(num_frames // 60, 1), replace=False):
        blink_frames.update(range(int(start), int(start) + 3))
    phase = rng.uniform(0, 2 * np.pi, 2)
    for sub in ("images", "face_masks", "lip_masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    sf.write(folder / "audio.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    with VideoWriter(folder / "sub_clip.mp4", fps=fps, audio=audio, audio_sample_rate=SAMPLE_RATE) as writer:
        for i in range(num_frames):
            offset = (0.02 * np.sin(i / fps * 1.3 + phase[0]), 0.015 * np.sin(i / fps * 0.9 + phase[1]))
            image, face, lip = draw_face(style, size, float(loudness[i]), i not in blink_frames, offset)
            image.save(folder / "images" / f"frame_{i}.png")
            face.save(folder / "face_masks" / f"frame_{i}.png")
            lip.save(folder / "lip_masks" / f"frame_{i}.png")
            writer.write(np.asarray(image)[None])
    return folder


def write_dataset(
    root: Path,
    num_clips: int,
    seconds: float,
    size: tuple[int, int] = (512, 512),
    seed: int = 0,
    list_name: str = "video_square_path.txt",
    face_scale: float = 1.0,
) -> Path:
    """`num_clips` clips under `root/speech/` and the path list `root/<list_name>`; returns the list file."""
    root = Path(root)
    clips = [
        write_clip(
            root / "speech" / f"{seed:04d}_{i:05d}", seed * 100_003 + i, seconds, size, face_scale=face_scale
        )
        for i in range(num_clips)
    ]
    list_file = root / list_name
    list_file.write_text("".join(f"{clip.resolve()}\n" for clip in clips))
    return list_file
