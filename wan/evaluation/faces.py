"""Face track and crop as the public SyncNet evaluation makes them, with MediaPipe's detector.

Per frame, faces are detected (MediaPipe's short-range detector, bundled with mediapipe 0.10.14, offline).
Detections are chained into tracks while consecutive boxes overlap (IoU > 0.5) and no more than
`max_missed` frames pass without one; gaps are filled by linear interpolation. The track's box half-size
(half its longer side) and centre are median-filtered over 13 frames, and each crop spans from `s` above the
centre to `s (1 + 2 c)` below it and `s (1 + c)` to each side (c = 0.4: the mouth sits in the crop's lower
half), taken from the frame padded with grey 110, and resized to 224x224.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import medfilt

from ..errors import UserFacingError
from .syncnet import CROP_SIZE

CROP_SCALE = 0.4
PAD_VALUE = 110
SMOOTHING = 13  # frames of the median filter on box size and centre
IOU_THRESHOLD = 0.5


@dataclass
class FaceTrack:
    """One face over consecutive frames: `frames` `[N]` indices and `boxes` `[N, 4]` (x0, y0, x1, y1) pixels."""

    frames: np.ndarray
    boxes: np.ndarray


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class MediaPipeFaceDetector:
    """Face boxes per frame with MediaPipe's face detector (runs offline on the CPU)."""

    def __init__(self, min_confidence: float = 0.5) -> None:
        import mediapipe as mp

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=min_confidence
        )

    def __call__(self, frame: np.ndarray) -> list[np.ndarray]:
        """Boxes (x0, y0, x1, y1) in pixels, most confident first, in one `[H, W, 3]` RGB uint8 frame."""
        height, width = frame.shape[:2]
        result = self._detector.process(np.ascontiguousarray(frame))
        boxes = []
        for detection in sorted(result.detections or [], key=lambda d: -d.score[0]):
            box = detection.location_data.relative_bounding_box
            x0, y0 = box.xmin * width, box.ymin * height
            boxes.append(np.array([x0, y0, x0 + box.width * width, y0 + box.height * height]))
        return boxes


def track_faces(
    detections: list[list[np.ndarray]], max_missed: int = 25, min_length: int = 1
) -> list[FaceTrack]:
    """Chain per-frame boxes into tracks (IoU > 0.5 with the track's last box, at most `max_missed` frames
    later), longest first; gaps are linearly interpolated. Tracks of `min_length` frames or fewer are dropped
    (the public evaluation drops those of 100 or fewer)."""
    pending = [[(index, box) for box in boxes] for index, boxes in enumerate(detections)]
    tracks = []
    while True:
        track: list[tuple[int, np.ndarray]] = []
        for frame_faces in pending:
            for face in list(frame_faces):
                if not track:
                    track.append(face)
                    frame_faces.remove(face)
                elif face[0] - track[-1][0] <= max_missed and iou(face[1], track[-1][1]) > IOU_THRESHOLD:
                    track.append(face)
                    frame_faces.remove(face)
                    break
        if not track:
            break
        frames = np.array([index for index, _ in track])
        if len(frames) >= min_length:
            boxes = np.stack([box for _, box in track])
            every = np.arange(frames[0], frames[-1] + 1)
            filled = np.stack([np.interp(every, frames, boxes[:, i]) for i in range(4)], axis=1)
            tracks.append(FaceTrack(every, filled))
    return sorted(tracks, key=lambda t: -len(t.frames))


def crop_track(frames: np.ndarray, track: FaceTrack, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """`[N, 224, 224, 3]` crops of `frames` `[T, H, W, 3]` along `track` (smoothed box, see module doc)."""
    import cv2

    boxes = track.boxes
    size = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    centre_y, centre_x = (boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2
    kernel = SMOOTHING if len(boxes) >= SMOOTHING else len(boxes) - (1 - len(boxes) % 2)
    size, centre_x, centre_y = (medfilt(v, kernel_size=kernel) for v in (size, centre_x, centre_y))
    crops = []
    for i, frame_index in enumerate(track.frames):
        s = size[i]
        pad = int(s * (1 + 2 * crop_scale))
        padded = np.pad(frames[frame_index], ((pad, pad), (pad, pad), (0, 0)), constant_values=PAD_VALUE)
        y, x = centre_y[i] + pad, centre_x[i] + pad
        face = padded[
            int(y - s) : int(y + s * (1 + 2 * crop_scale)),
            int(x - s * (1 + crop_scale)) : int(x + s * (1 + crop_scale)),
        ]
        crops.append(cv2.resize(face, (CROP_SIZE, CROP_SIZE)))
    return np.stack(crops)


def face_crops(
    frames: np.ndarray,
    name: str = "video",
    detector: MediaPipeFaceDetector | None = None,
    max_missed: int = 25,
    min_coverage: float = 0.5,
) -> tuple[np.ndarray, FaceTrack]:
    """The main face's crops `[N, 224, 224, 3]` and its track, for a `[T, H, W, 3]` RGB video.

    The longest track is taken; it must cover `min_coverage` of the video, else the video is refused.
    """
    detector = detector or MediaPipeFaceDetector()
    detections = [detector(frame) for frame in frames]
    tracks = track_faces(detections, max_missed)
    if not tracks:
        raise UserFacingError(f"no face found in {name}; the metrics need a visible face")
    track = tracks[0]
    if len(track.frames) < min_coverage * len(frames):
        raise UserFacingError(
            f"the face in {name} is tracked in only {len(track.frames)} of {len(frames)} frames; "
            "the metrics need one face through most of the video"
        )
    return crop_track(frames, track), track
