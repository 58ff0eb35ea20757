"""Data preparation, offline on the CPU: audio extraction, vocal separation (MDX-Net via onnxruntime),
lip and face masks (MediaPipe Face Mesh) and the training-set builder (`talking_face_data` layout).

MediaPipe and onnxruntime are imported only when masks or separation are used.
"""

from .audio import extract_audio, extract_audio_folder, load_stereo, write_wav
from .dataset_builder import (
    RESOLUTIONS,
    BuildOptions,
    BuildReport,
    build_dataset,
    classify_aspect,
    fit_frame,
    frame_size,
    write_path_lists,
)
from .masks import (
    FACE_OVAL,
    LOWER_LIP,
    UPPER_LIP,
    FaceMeshDetector,
    extract_masks,
    landmark_mask,
    polygon_mask,
)
from .separation import KNOWN_MDX_MODELS, MdxParams, MdxSeparator, separate_file

__all__ = [
    "FACE_OVAL",
    "KNOWN_MDX_MODELS",
    "LOWER_LIP",
    "RESOLUTIONS",
    "UPPER_LIP",
    "BuildOptions",
    "BuildReport",
    "FaceMeshDetector",
    "MdxParams",
    "MdxSeparator",
    "build_dataset",
    "classify_aspect",
    "extract_audio",
    "extract_audio_folder",
    "extract_masks",
    "fit_frame",
    "frame_size",
    "landmark_mask",
    "load_stereo",
    "polygon_mask",
    "separate_file",
    "write_path_lists",
    "write_wav",
]
