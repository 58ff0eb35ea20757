"""Lip sync and identity of your own generated videos, measured the way papers report them.

    python -m benchmarks.evaluate --videos outputs/mine --references refs/ [--audio audio/] \
        --syncnet syncnet_v2.model [--arcface w600k_r50.onnx | --dinov2 dinov2-small/] [--output DIR]

Per video (matched to the reference image and audio of the same name, or to the only file given): Sync-C,
Sync-D and the audio-video offset (SyncNet, 25 fps video, 16 kHz audio; the video's own audio track when
--audio is not given), and the cosine similarity of face embeddings to the reference per second with its
linear trend. FID / FVD with --fid_model / --fvd_model (ONNX feature networks) against --real_videos.
Writes metrics.json, table.md and one plot per video to --output and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wan.errors import UserFacingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--videos", type=Path, required=True, help="folder of generated videos")
    parser.add_argument(
        "--references", type=Path, help="reference image(s): a folder (same names) or one file"
    )
    parser.add_argument("--audio", type=Path, help="driving audio: a folder (same names) or one file")
    parser.add_argument(
        "--syncnet",
        help="SyncNet weights (syncnet_v2.model from the public SyncNet evaluation); 'random' runs seeded random "
        "weights, which test the plumbing only: their Sync-C means nothing. Without it lip sync is skipped",
    )
    identity = parser.add_mutually_exclusive_group()
    identity.add_argument(
        "--arcface", type=Path, help="ArcFace ONNX model for identity (e.g. w600k_r50.onnx)"
    )
    identity.add_argument(
        "--dinov2",
        type=Path,
        help="local DINOv2 folder (transformers); default: DINOv2-small with random weights",
    )
    parser.add_argument("--no_identity", action="store_true", help="skip the identity measure")
    parser.add_argument(
        "--fid_model", type=Path, help="ONNX image feature network for FID (e.g. Inception-v3 pool)"
    )
    parser.add_argument("--fvd_model", type=Path, help="ONNX clip feature network for FVD (e.g. I3D)")
    parser.add_argument("--real_videos", type=Path, help="real videos for FID / FVD")
    parser.add_argument(
        "--min_face_coverage",
        type=float,
        default=0.5,
        help="share of the frames the face must be tracked in; the measures use the tracked span",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/evaluation"))
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from wan.evaluation import (
        ArcFaceEmbedder,
        Dinov2Embedder,
        Evaluator,
        SyncNet,
        evaluate_folder,
        load_syncnet,
    )
    from wan.evaluation.frechet import ClipFeatures, FrameFeatures

    torch.set_num_threads(args.threads)
    try:
        if args.syncnet == "random":
            torch.manual_seed(0)
            syncnet, syncnet_name = SyncNet().eval(), "random weights"
        elif args.syncnet:
            syncnet, syncnet_name = load_syncnet(args.syncnet), Path(args.syncnet).name
        else:
            syncnet, syncnet_name = None, ""
        embedder = None
        if not args.no_identity and args.references is not None:
            embedder = ArcFaceEmbedder(args.arcface) if args.arcface else Dinov2Embedder(args.dinov2)
        evaluator = Evaluator(
            syncnet=syncnet,
            syncnet_name=syncnet_name,
            embedder=embedder,
            fid=FrameFeatures(args.fid_model) if args.fid_model else None,
            fvd=ClipFeatures(args.fvd_model) if args.fvd_model else None,
            min_face_coverage=args.min_face_coverage,
        )
        report = evaluate_folder(
            evaluator, args.videos, args.references, args.audio, args.output, args.real_videos
        )
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report["table"])
    print(f"wrote {args.output / 'metrics.json'}, {args.output / 'table.md'} and one plot per video")
    return 0


if __name__ == "__main__":
    sys.exit(main())
