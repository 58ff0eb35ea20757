"""The `talking_face_data` layout as a training dataset.

A path-list txt file names one clip folder per line (or a metadata `.csv` with a `path` column, or `.jsonl`
with a `path` key, each optionally with a `prompt`); each folder holds `sub_clip.mp4`, `audio.wav`,
`images/frame_i.png`, and optionally `face_masks/frame_i.png`, `lip_masks/frame_i.png` (a missing mask
counts as all ones) and `prompt.txt` (the clip's caption). Without a caption a clip trains with the prompt
of its category folder (`speech/`, `singing/`, `dancing/`). A sample is `num_frames` consecutive frames from a random start, the clip's first
sampled frame as reference, and the audio of exactly that span at the clip's real frame rate.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import MissingFileError, UserFacingError
from ..generation_settings import SAMPLE_RATE
from ..media import load_audio

# The prompt each category of clip trains with, found from the folder path (as the published trainer does).
CATEGORY_PROMPTS = {
    "singing": "The protagonist is singing",
    "speech": "The protagonist is talking",
    "dancing": "The protagonist is simultaneously dancing and singing",
}
_FRAME_NUMBER = re.compile(r"(\d+)")


@dataclass
class ClipInfo:
    folder: Path
    frames: list[Path]
    fps: float
    audio_seconds: float


def read_clip_list(list_file: str | Path) -> list[tuple[Path, str | None]]:
    """(clip folder, caption or None) of every clip a path list (txt), metadata CSV or JSONL names."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise MissingFileError(
            f"path list {list_file} not found; write one clip folder per line (prepare_dataset.py does)"
        )
    text = list_file.read_text()
    if list_file.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif list_file.suffix.lower() in (".jsonl", ".json"):
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise UserFacingError(f"{list_file}: not JSON lines ({error})") from None
    else:
        return [(Path(line.strip()), None) for line in text.splitlines() if line.strip()]
    if any("path" not in row or not row["path"] for row in rows):
        raise UserFacingError(
            f"{list_file}: every row needs a 'path' (the clip folder); 'prompt' is optional"
        )
    base = list_file.parent
    return [(base / Path(row["path"]), row.get("prompt") or None) for row in rows]


def read_path_list(list_file: str | Path) -> list[Path]:
    return [folder for folder, _ in read_clip_list(list_file)]


def prompt_for(folder: Path, default: str = "") -> str:
    """The clip's caption: `prompt.txt` in its folder, else the prompt of the nearest category folder above
    it (`.../speech/00001` talks, whatever the folders further up are called), else `default`."""
    caption = folder / "prompt.txt"
    if caption.is_file() and caption.read_text().strip():
        return caption.read_text().strip()
    for parent in folder.parents:
        if parent.name in CATEGORY_PROMPTS:
            return CATEGORY_PROMPTS[parent.name]
    return default


def _sorted_frames(folder: Path) -> list[Path]:
    frames = [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    return sorted(
        frames, key=lambda p: int(_FRAME_NUMBER.findall(p.stem)[-1]) if _FRAME_NUMBER.findall(p.stem) else -1
    )


def _video_fps(path: Path) -> float:
    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else 0.0
    except (av.FFmpegError, IndexError, OSError):
        return 0.0


def inspect_clip(folder: Path, num_frames: int) -> ClipInfo:
    """Check a clip folder; raise UserFacingError saying what is wrong with it."""
    if not folder.is_dir():
        raise UserFacingError(f"clip folder {folder} does not exist")
    images = folder / "images"
    audio_path = folder / "audio.wav"
    if not images.is_dir():
        raise UserFacingError(f"clip {folder} has no images/ folder")
    if not audio_path.is_file():
        raise UserFacingError(f"clip {folder} has no audio.wav")
    frames = _sorted_frames(images)
    if len(frames) < num_frames:
        raise UserFacingError(
            f"clip {folder} has {len(frames)} frames, fewer than the {num_frames} a sample needs"
        )
    for masks in ("face_masks", "lip_masks"):
        if (folder / masks).is_dir():
            names = {p.name for p in (folder / masks).iterdir()}
            missing = [p.name for p in frames if p.name not in names]
            if missing and len(missing) < len(frames):
                raise UserFacingError(
                    f"clip {folder}: {masks}/ lacks {len(missing)} of the frames (e.g. {missing[0]})"
                )
    audio_seconds = float(len(load_audio(audio_path, SAMPLE_RATE)) / SAMPLE_RATE)
    fps = _video_fps(folder / "sub_clip.mp4") or len(frames) / max(audio_seconds, 1e-6)
    if audio_seconds + 1e-3 < num_frames / fps:
        raise UserFacingError(
            f"clip {folder}: audio ({audio_seconds:.2f} s) is shorter than {num_frames} frames at {fps:g} fps"
        )
    return ClipInfo(folder, frames, fps, audio_seconds)


class TalkingFaceDataset(Dataset):
    """Samples of `num_frames` frames at `width` x `height`.

    Broken clip folders (missing audio, too few frames, masks that do not match the frames, unreadable
    files) are reported once, with their path, and left out; they never crash training mid-epoch.

    Items: `pixel_values` `[F, 3, H, W]` in [-1, 1]; `face_masks`, `lip_masks` `[1, F, H, W]` in [0, 1];
    `audio` `[S]` float32 16 kHz of the same span; `prompt`; `folder`. Sampling is deterministic given
    `(seed, epoch, index)` so a resumed run sees the same data.
    """

    def __init__(
        self,
        list_files: list[str | Path] | str | Path,
        width: int,
        height: int,
        num_frames: int = 81,
        seed: int = 0,
        default_prompt: str = "",
    ) -> None:
        if isinstance(list_files, (str, Path)):
            list_files = [list_files]
        self.width, self.height, self.num_frames, self.seed = width, height, num_frames, seed
        self.default_prompt = default_prompt
        self.epoch = 0
        self.clips: list[ClipInfo] = []
        self.prompts: list[str] = []
        self.skipped: list[tuple[Path, str]] = []
        for list_file in list_files:
            for folder, caption in read_clip_list(list_file):
                try:
                    self.clips.append(inspect_clip(folder, num_frames))
                    self.prompts.append(caption or prompt_for(folder, default_prompt))
                except (UserFacingError, OSError, ValueError) as error:
                    self.skipped.append((folder, str(error)))
                    warnings.warn(f"skipping clip: {error}", stacklevel=2)
        if not self.clips:
            raise UserFacingError(
                f"no usable clips in {', '.join(map(str, list_files))} ({len(self.skipped)} skipped)"
            )

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        start = int(rng.integers(0, len(clip.frames) - self.num_frames + 1))
        chosen = clip.frames[start : start + self.num_frames]
        pixels = torch.stack([self._image(path) for path in chosen])
        face = torch.stack([self._mask(clip.folder / "face_masks" / path.name) for path in chosen])[None]
        lip = torch.stack([self._mask(clip.folder / "lip_masks" / path.name) for path in chosen])[None]
        audio = load_audio(clip.folder / "audio.wav", SAMPLE_RATE)
        first = int(round(start / clip.fps * SAMPLE_RATE))
        length = int(round(self.num_frames / clip.fps * SAMPLE_RATE))
        span = np.zeros(length, np.float32)
        piece = audio[first : first + length]
        span[: len(piece)] = piece
        return {
            "pixel_values": pixels,
            "face_masks": face,
            "lip_masks": lip,
            "audio": torch.from_numpy(span),
            "prompt": self.prompts[index],
            "folder": str(clip.folder),
        }

    def _image(self, path: Path) -> torch.Tensor:
        image = Image.open(path).convert("RGB").resize((self.width, self.height), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(image, np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0

    def _mask(self, path: Path) -> torch.Tensor:
        if not path.is_file():
            return torch.ones(self.height, self.width)
        mask = Image.open(path).convert("L").resize((self.width, self.height), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(mask, np.float32).copy()) / 255.0


def collate(items: list[dict]) -> dict:
    """A batch of `TalkingFaceDataset` items (same size); audio zero-padded to the longest."""
    longest = max(item["audio"].numel() for item in items)
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "face_masks": torch.stack([item["face_masks"] for item in items]),
        "lip_masks": torch.stack([item["lip_masks"] for item in items]),
        "audio": torch.stack(
            [torch.nn.functional.pad(item["audio"], (0, longest - item["audio"].numel())) for item in items]
        ),
        "prompt": [item["prompt"] for item in items],
        "folder": [item["folder"] for item in items],
    }
