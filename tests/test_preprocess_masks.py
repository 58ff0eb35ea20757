"""Lip and face masks on a real face (skimage's astronaut), checked against where her mouth and face are.

The boxes below were read off the 512x512 image by eye, not from the landmarks the code finds.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data

from tests.preprocess_media import astronaut_head
from wan.cli import run_cli
from wan.preprocess.cli import face_mask_extractor_main, lip_mask_extractor_main
from wan.preprocess.masks import (
    FACE_OVAL,
    LOWER_LIP,
    UPPER_LIP,
    FaceMeshDetector,
    landmark_mask,
    select_clips,
)

# (rows, columns) in skimage.data.astronaut()
MOUTH = (slice(136, 157), slice(200, 248))  # lip corners to lip corners, upper to lower lip edge
TEETH = (slice(141, 150), slice(215, 235))  # the middle of her open smile
FACE = (slice(60, 200), slice(172, 282))  # chin, cheeks and forehead below the hair
EYES_TO_MOUTH = (slice(90, 156), slice(200, 255))


@pytest.fixture(scope="module")
def mediapipe():
    """The mediapipe module; tests that detect faces are skipped when it cannot be imported."""
    return pytest.importorskip(
        "mediapipe", reason="MediaPipe is not installed (pip install mediapipe==0.10.14); the masks need it"
    )


@pytest.fixture(scope="module")
def detector(mediapipe) -> FaceMeshDetector:
    with FaceMeshDetector() as found:
        yield found


@pytest.fixture(scope="module")
def astronaut_faces(detector) -> list[np.ndarray]:
    return detector(data.astronaut())


def _inside(mask: np.ndarray, box: tuple[slice, slice]) -> float:
    """Share of the mask's pixels that lie in `box`."""
    return float(mask[box].sum() / mask.sum())


def test_landmark_indices_follow_mediapipe_topology(mediapipe) -> None:
    oval_edges = {frozenset(edge) for edge in mediapipe.solutions.face_mesh.FACEMESH_FACE_OVAL}
    assert {frozenset(pair) for pair in pairwise(FACE_OVAL + FACE_OVAL[:1])} == oval_edges  # closed
    lip_edges = {frozenset(edge) for edge in mediapipe.solutions.face_mesh.FACEMESH_LIPS}
    for outline in (UPPER_LIP, LOWER_LIP):
        assert all(frozenset(pair) in lip_edges for pair in pairwise(outline))


def test_lip_mask_lies_on_the_mouth_and_covers_it(astronaut_faces) -> None:
    assert len(astronaut_faces) == 1 and astronaut_faces[0].shape == (468, 2)
    mask = landmark_mask(astronaut_faces, "lip", 512, 512)
    assert mask.dtype == np.uint8 and mask.shape == (512, 512) and set(np.unique(mask)) == {0, 255}
    lips = mask > 0
    assert _inside(lips, MOUTH) == 1.0  # nothing outside the mouth
    assert lips[TEETH].mean() > 0.95  # the open mouth is filled, not only the lip outline
    outline = astronaut_faces[0][list(UPPER_LIP + LOWER_LIP)]  # (x, y) of the outer lip landmarks
    (left, top), (right, bottom) = np.floor(outline.min(axis=0)), np.ceil(outline.max(axis=0))
    assert MOUTH[1].start <= left < right <= MOUTH[1].stop and MOUTH[0].start <= top < bottom <= MOUTH[0].stop
    assert lips[int(top) : int(bottom), int(left) : int(right)].mean() > 0.6  # most of it (measured 0.66)


def test_face_mask_covers_the_face_and_not_the_background(astronaut_faces) -> None:
    face = landmark_mask(astronaut_faces, "face", 512, 512) > 0
    assert _inside(face, FACE) > 0.99
    assert face[EYES_TO_MOUTH].mean() > 0.99
    for corner in (face[:60, :60], face[:60, -60:], face[-60:, :60], face[-60:, -60:]):
        assert not corner.any()
    lips = landmark_mask(astronaut_faces, "lip", 512, 512) > 0
    assert (face | lips).sum() == face.sum()  # the lips are part of the face


def test_every_face_in_the_frame_gets_a_mask(detector) -> None:
    head = astronaut_head()
    two = np.concatenate([head, head[:, ::-1]], axis=1)  # 300 x 500: two people side by side
    faces = detector(two)
    assert len(faces) == 2
    for kind in ("lip", "face"):
        labels, count = ndimage.label(landmark_mask(faces, kind, *two.shape[:2]) > 0)
        assert count == 2
        centres = sorted(ndimage.center_of_mass(labels > 0, labels, [1, 2]), key=lambda c: c[1])
        assert centres[0][1] < 250 < centres[1][1]  # one in each half


def test_frame_without_a_face_gets_an_empty_mask(detector) -> None:
    coffee = data.coffee()
    assert detector(coffee) == []
    assert not landmark_mask([], "lip", *coffee.shape[:2]).any()


def _clip(root: Path, name: str, frames: list[np.ndarray]) -> Path:
    (root / name / "images").mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(root / name / "images" / f"frame_{i}.png")
    return root / name


def test_folder_mode_start_end_existing_masks_and_summary(mediapipe, tmp_path, capsys) -> None:
    face = np.asarray(Image.fromarray(astronaut_head()).resize((125, 150)))
    blank = np.full_like(face, 90)
    for name, frames in (("00001", [face, face]), ("00002", [blank, face]), ("00003", [face])):
        _clip(tmp_path, name, frames)
    (tmp_path / "00001" / "lip_masks").mkdir()
    earlier = np.full((150, 125), 7, np.uint8)
    Image.fromarray(earlier).save(tmp_path / "00001" / "lip_masks" / "frame_0.png")

    argv = ["--folder_root", str(tmp_path), "--start", "1", "--end", "3"]  # clips 00001 and 00002
    assert run_cli(lip_mask_extractor_main, argv) == 0
    summary = capsys.readouterr().out
    assert (
        "lip masks: 3 written, 1 already there; 1 frame(s) without a face" in summary
        and "00002 (1)" in summary
    )
    assert np.array_equal(np.asarray(Image.open(tmp_path / "00001" / "lip_masks" / "frame_0.png")), earlier)
    written = np.asarray(Image.open(tmp_path / "00001" / "lip_masks" / "frame_1.png"))
    assert written.shape == (150, 125) and written.max() == 255
    assert not np.asarray(Image.open(tmp_path / "00002" / "lip_masks" / "frame_0.png")).any()
    assert not (tmp_path / "00003" / "lip_masks").exists()

    assert run_cli(face_mask_extractor_main, ["--folder_root", str(tmp_path)]) == 0
    assert "face masks: 5 written, 0 already there" in capsys.readouterr().out
    assert sorted(p.parent.parent.name for p in tmp_path.glob("*/face_masks/*.png")) == ["00001"] * 2 + [
        "00002"
    ] * 2 + ["00003"]


def test_clips_are_chosen_by_number_or_by_sorted_position(tmp_path) -> None:
    for name in ("00010", "00002", "00005"):
        (tmp_path / "numbered" / name).mkdir(parents=True)
    assert [p.name for p in select_clips(tmp_path / "numbered", 2, 10)] == ["00002", "00005"]
    for name in ("carol", "alice", "bob"):
        (tmp_path / "named" / name).mkdir(parents=True)
    assert [p.name for p in select_clips(tmp_path / "named", 1)] == ["bob", "carol"]


def test_missing_folder_is_a_one_line_error(tmp_path, capsys) -> None:
    assert run_cli(lip_mask_extractor_main, ["--folder_root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: folder not found") and err.count("\n") == 1
