"""Convert the downloaded StableAvatar checkpoints into one diffusers-layout folder.

    python -m wan.convert --checkpoints_dir checkpoints --output checkpoints/StableAvatar-1.3B-square

The result loads with `StableAvatarPipeline.from_pretrained(folder, dtype=...)` and with
`inference.py --model_dir folder`, without any conversion at start-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .checks import writable_folder
from .cli import atomic_directory, parse_dtype, run_cli
from .loading.released import ReleasedLayout, load_released_pipeline
from .loading.state_dict import check_weights_file

TRANSFORMER_VARIANTS = {"square": "transformer3d-square.pt", "rec-vec": "transformer3d-rec-vec.pt"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wan.convert",
        description="Convert the released StableAvatar checkpoints (original Wan naming) into a diffusers folder.",
    )
    parser.add_argument(
        "--checkpoints_dir",
        type=Path,
        default=Path("checkpoints"),
        help="folder holding Wan2.1-Fun-V1.1-1.3B-InP/, StableAvatar-1.3B/ and wav2vec2-base-960h/ "
        "(the published layout; default: checkpoints)",
    )
    parser.add_argument(
        "--variant",
        choices=sorted(TRANSFORMER_VARIANTS),
        default="square",
        help="which released transformer: 'square' (512x512) or 'rec-vec' (480x832 / 832x480)",
    )
    parser.add_argument(
        "--base_model_dir",
        type=Path,
        help="the Wan2.1 Fun-InP folder (default: CHECKPOINTS_DIR/Wan2.1-Fun-V1.1-1.3B-InP)",
    )
    parser.add_argument(
        "--transformer_path",
        type=Path,
        help="a StableAvatar transformer file (.pt or .safetensors); overrides --variant",
    )
    parser.add_argument(
        "--base_only",
        action="store_true",
        help="no StableAvatar weights: the base Wan model with freshly initialised audio modules "
        "(a starting point for training)",
    )
    parser.add_argument(
        "--wav2vec_dir", type=Path, help="the wav2vec2 folder (default: CHECKPOINTS_DIR/wav2vec2-base-960h)"
    )
    parser.add_argument("--output", type=Path, required=True, help="the diffusers folder to write")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        help="storage dtype of transformer and encoders: bfloat16 (default, half the size), "
        "float16 or float32; the VAE is kept in float32",
    )
    return parser


def layout_from_args(args: argparse.Namespace) -> ReleasedLayout:
    checkpoints = args.checkpoints_dir
    transformer = (
        args.transformer_path or checkpoints / "StableAvatar-1.3B" / TRANSFORMER_VARIANTS[args.variant]
    )
    return ReleasedLayout(
        base_dir=args.base_model_dir or checkpoints / "Wan2.1-Fun-V1.1-1.3B-InP",
        transformer_path=None if args.base_only else transformer,
        wav2vec_dir=args.wav2vec_dir or checkpoints / "wav2vec2-base-960h",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    layout = layout_from_args(args)
    # Checked before the slow loads: the files are all there, the transformer file is whole, the output
    # can be written.
    layout.check()
    if layout.transformer_path is not None:
        check_weights_file(layout.transformer_path)
    writable_folder(args.output, "--output")
    pipeline = load_released_pipeline(layout, parse_dtype(args.dtype))
    with atomic_directory(args.output) as staging:
        pipeline.save_pretrained(staging, safe_serialization=True)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
