"""Lip and face masks from MediaPipe Face Mesh (468 landmarks), for the training loss weighting.

A lip mask is the filled outer-lip polygon (upper and lower outline), a face mask the filled face oval;
every detected face (up to 10) is drawn. Masks are 8-bit single-channel images, 255 inside and 0 outside,
the size of the frame. MediaPipe 0.10.14 ships the face-mesh model inside the wheel, so nothing is
downloaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..checks import existing_folder
from ..errors import UserFacingError
from ..media import load_image

# Face Mesh landmark indices (MediaPipe's canonical 468-point topology).
UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
FACE_OVAL = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)

MASK_POLYGONS: dict[str, tuple[tuple[int, ...], ...]] = {"lip": (UPPER_LIP, LOWER_LIP), "face": (FACE_OVAL,)}
MASK_FOLDERS = {"lip": "lip_masks", "face": "face_masks"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MEDIAPIPE_HINT = "pip install mediapipe==0.10.14 (its OpenCV needs the Debian package libgl1)"


class FaceMeshDetector:
    """Find face landmarks in RGB frames with MediaPipe Face Mesh.

    `detector(frame)` takes uint8 [H, W, 3] RGB and returns one float32 [468, 2] array of (x, y) pixel
    coordinates per face found (an empty list when there is none). `static_image_mode=True` detects
    afresh in every frame (frames in any order); False tracks faces between consecutive video frames.
    Use as a context manager, or call `close()`.
    """

    def __init__(
        self, max_faces: int = 10, min_confidence: float = 0.5, static_image_mode: bool = True
    ) -> None:
        face_mesh = _import_face_mesh()
        # MediaPipe prints start-up notices (TFLite delegate, absl) to stderr from its own threads while
        # it starts; a first frame inside the quiet block waits for that to finish.
        with _quiet_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=static_image_mode,
                max_num_faces=max_faces,
                min_detection_confidence=min_confidence,
                min_tracking_confidence=min_confidence,
            )
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def __call__(self, frame: np.ndarray) -> list[np.ndarray]:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise UserFacingError(f"a frame has shape {list(frame.shape)}; pass RGB [H, W, 3]")
        height, width = frame.shape[:2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protobuf deprecation notices from inside MediaPipe
            result = self._mesh.process(frame)
        faces = result.multi_face_landmarks or []
        scale = np.array([width, height], np.float32)
        return [np.array([(p.x, p.y) for p in face.landmark], np.float32) * scale for face in faces]

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 (what C++ code writes to) to /dev/null for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        with contextlib.suppress(OSError, AttributeError):  # C stdio buffers what it has not written yet
            ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 2)
        os.close(saved)


def _import_face_mesh():  # -> the mediapipe.solutions.face_mesh module
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError as error:
        raise UserFacingError(f"MediaPipe is not usable ({error}); {MEDIAPIPE_HINT}") from None
    return face_mesh


def polygon_mask(polygons: Iterable[np.ndarray], height: int, width: int) -> np.ndarray:
    """Fill polygons (each [K, 2] (x, y) pixel coordinates) into a uint8 [height, width] mask of 0 / 255."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon([(float(x), float(y)) for x, y in polygon], fill=255)
    return np.asarray(canvas)


def landmark_mask(faces: Sequence[np.ndarray], kind: str, height: int, width: int) -> np.ndarray:
    """The `kind` ("lip" or "face") mask, uint8 [height, width] of 0 / 255, of all `faces` ([468, 2] each)."""
    polygons = [face[list(indices)] for face in faces for indices in MASK_POLYGONS[kind]]
    return polygon_mask(polygons, height, width)


def save_png(path: Path, image: np.ndarray) -> None:
    """Save a uint8 [H, W] or [H, W, 3] image as PNG via a partial file, so a crash leaves no half file
    that a later run would take for a finished one."""
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial.png")
    try:
        Image.fromarray(image).save(partial, format="PNG")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- folder mode


def frame_sort_key(path: Path) -> tuple[int, str]:
    """`frame_12.png` sorts by 12; other names by the first number in them, then by name."""
    match = re.search(r"(\d+)", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def list_frames(images_dir: Path) -> list[Path]:
    """The PNG/JPEG frames of a clip's images folder, in frame order."""
    frames = [
        p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    return sorted(frames, key=frame_sort_key)


def select_clips(folder_root: Path, start: int = 0, end: int | None = None) -> list[Path]:
    """Clip folders of `folder_root` numbered in [start, end) (end None: no limit).

    When every clip folder's name is a number (00001, 00002, ... as the dataset builder writes), that
    number is the clip's index, as in the published script; otherwise the index is the position in the
    sorted list of folder names, from 0.
    """
    existing_folder(folder_root, "the folder that holds the clip folders")
    folders = sorted(p for p in folder_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    numbered = bool(folders) and all(p.name.isdigit() for p in folders)
    indexed = [(int(p.name) if numbered else i, p) for i, p in enumerate(folders)]
    return [p for i, p in indexed if i >= start and (end is None or i < end)]


@dataclass
class MaskReport:
    """What a mask run did, per kind: masks written, masks already there, frames with no face found."""

    kinds: tuple[str, ...]
    written: int = 0
    existing: int = 0
    frames_without_face: dict[str, int] = field(default_factory=dict)  # clip name -> frames
    clips_without_images: list[str] = field(default_factory=list)

    def summary(self) -> str:
        names = " and ".join(f"{kind} masks" for kind in self.kinds)
        line = f"{names}: {self.written} written, {self.existing} already there"
        no_face = sum(self.frames_without_face.values())
        if no_face:
            per_clip = ", ".join(f"{clip} ({n})" for clip, n in self.frames_without_face.items())
            line += f"; {no_face} frame(s) without a face got empty masks: {per_clip}"
        if self.clips_without_images:
            line += f"; no images/ folder in {', '.join(self.clips_without_images)}"
        return line


def extract_masks(
    folder_root: str | os.PathLike[str],
    kinds: Sequence[str] = ("lip",),
    start: int = 0,
    end: int | None = None,
    detector: FaceMeshDetector | None = None,
    progress: bool = True,
) -> MaskReport:
    """Write FOLDER_ROOT/<clip>/<kind>_masks/<frame name> for every frame in FOLDER_ROOT/<clip>/images.

    Masks that already exist are kept (so an interrupted run resumes); a frame is read and searched for
    faces only when one of its masks is missing. A frame without a face gets an empty (all-zero) mask.
    A mask has its frame's file name (the trainer looks it up by that) and is always PNG-encoded, so a
    JPEG frame's mask stays exactly 0 / 255.
    """
    unknown = [kind for kind in kinds if kind not in MASK_FOLDERS]
    if unknown or not kinds:
        raise UserFacingError(f"mask kinds must be among {', '.join(MASK_FOLDERS)}, got {list(kinds)}")
    report = MaskReport(tuple(kinds))
    work: list[tuple[Path, Path]] = []  # (clip folder, frame)
    for clip in select_clips(Path(folder_root), start, end):
        if not (clip / "images").is_dir():
            report.clips_without_images.append(clip.name)
            continue
        for frame in list_frames(clip / "images"):
            missing = [kind for kind in kinds if not (clip / MASK_FOLDERS[kind] / frame.name).exists()]
            report.existing += len(kinds) - len(missing)
            if missing:
                work.append((clip, frame))
    with contextlib.ExitStack() as stack:
        detector = detector or stack.enter_context(FaceMeshDetector())
        for clip, frame in tqdm(work, desc="masks", unit="frame", disable=None if progress else True):
            _mask_one_frame(clip, frame, kinds, detector, report)
    return report


def _mask_one_frame(
    clip: Path, frame: Path, kinds: Sequence[str], detector: FaceMeshDetector, report: MaskReport
) -> None:
    image = np.asarray(load_image(frame))
    faces = detector(image)
    if not faces:
        report.frames_without_face[clip.name] = report.frames_without_face.get(clip.name, 0) + 1
    for kind in kinds:
        target = clip / MASK_FOLDERS[kind] / frame.name
        if target.exists():
            continue
        target.parent.mkdir(exist_ok=True)
        save_png(target, landmark_mask(faces, kind, *image.shape[:2]))
        report.written += 1
