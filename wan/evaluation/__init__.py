"""Lip-sync and identity metrics the way the field reports them (SyncNet's Sync-C / Sync-D, face-embedding
similarity over time, FID / FVD), for any folder of generated videos."""

from .faces import FaceTrack, MediaPipeFaceDetector, crop_track, face_crops, track_faces
from .frechet import ClipFeatures, FrameFeatures, frechet_distance
from .identity import ArcFaceEmbedder, Dinov2Embedder, cosine_similarity, measure_identity
from .mfcc import mfcc
from .report import Evaluator, evaluate_folder
from .sync import SyncResult, measure_sync, offset_distances, sync_scores
from .syncnet import SyncNet, load_syncnet
from .timeseries import linear_drop, per_second

__all__ = [
    "ArcFaceEmbedder",
    "ClipFeatures",
    "Dinov2Embedder",
    "Evaluator",
    "FaceTrack",
    "FrameFeatures",
    "MediaPipeFaceDetector",
    "SyncNet",
    "SyncResult",
    "cosine_similarity",
    "crop_track",
    "evaluate_folder",
    "face_crops",
    "frechet_distance",
    "linear_drop",
    "load_syncnet",
    "measure_identity",
    "measure_sync",
    "mfcc",
    "offset_distances",
    "per_second",
    "sync_scores",
    "track_faces",
]
