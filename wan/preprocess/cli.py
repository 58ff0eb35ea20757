"""Command lines of the data-preparation scripts (audio_extractor.py, vocal_seperator.py,
lip_mask_extractor.py, face_mask_extractor.py, prepare_dataset.py). Each `*_main(argv)` returns an exit
code; the scripts call them through `wan.cli.run_cli`, which turns a UserFacingError into one line."""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from ..errors import MissingFileError
from ..generation_settings import SAMPLE_RATE
from .audio import extract_audio, extract_audio_folder
from .dataset_builder import CATEGORIES, BuildOptions, build_dataset, path_list_name
from .masks import MASK_FOLDERS, extract_masks
from .separation import KNOWN_MDX_MODELS, STEMS, MdxSeparator, known_params, params_with, separate_file


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def audio_extractor_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        "audio_extractor.py",
        "Extract the audio track of a video as mono 16-bit wav. With a folder as --video_path, "
        "every video below it goes to --saved_audio_path/<same relative path>.wav.",
    )
    parser.add_argument("--video_path", type=Path, required=True, help="a video (or audio) file, or a folder")
    parser.add_argument("--saved_audio_path", type=Path, required=True, help="the wav file, or a folder")
    parser.add_argument("--sample_rate", type=int, default=SAMPLE_RATE, help="output sample rate in Hz")
    parser.add_argument("--overwrite", action="store_true", help="folder mode: replace existing wav files")
    args = parser.parse_args(argv)
    if args.video_path.is_dir():
        result = extract_audio_folder(
            args.video_path, args.saved_audio_path, args.sample_rate, args.overwrite
        )
        print(result.summary())
        return 1 if result.failed else 0
    extracted = extract_audio(args.video_path, args.saved_audio_path, args.sample_rate)
    print(f"wrote {extracted.path} ({extracted.duration:.2f} s, {extracted.sample_rate} Hz mono)")
    return 0


def vocal_separator_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        "vocal_seperator.py",
        "Separate the vocals from music and noise with a UVR MDX-Net ONNX model (e.g. "
        "Kim_Vocal_2.onnx), offline on the CPU. Writes stereo 44.1 kHz 16-bit wav.",
    )
    parser.add_argument("--audio_separator_model_file", type=Path, required=True, help="the .onnx model")
    parser.add_argument("--audio_file_path", type=Path, required=True, help="audio or video file to clean")
    parser.add_argument(
        "--saved_vocal_path", type=Path, help="where the vocals go (default: vocal.wav beside the input)"
    )
    parser.add_argument("--saved_instrumental_path", type=Path, help="also write everything but the vocals")
    model = parser.add_argument_group(
        "model settings (needed only for models other than " + ", ".join(KNOWN_MDX_MODELS) + ")"
    )
    model.add_argument("--n_fft", type=int, help="STFT size in samples")
    model.add_argument("--dim_f", type=int, help="frequency bins the model takes")
    model.add_argument("--dim_t", type=int, help="STFT frames the model takes (2**mdx_dim_t_set)")
    model.add_argument("--hop", type=int, help="STFT hop in samples (UVR: 1024)")
    model.add_argument("--compensate", type=float, help="gain applied to the model's output")
    model.add_argument("--primary_stem", choices=STEMS, help="what the model outputs")
    run = parser.add_argument_group("running")
    run.add_argument("--overlap", type=float, default=0.25, help="share of each chunk shared with the next")
    run.add_argument("--batch_size", type=int, default=1, help="chunks per model call")
    run.add_argument(
        "--denoise", action="store_true", help="UVR's denoise: model on +spec and -spec (2x time)"
    )
    run.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    args = parser.parse_args(argv)

    overrides = {
        name: getattr(args, name) for name in ("n_fft", "dim_f", "dim_t", "hop", "compensate", "primary_stem")
    }
    params = params_with(known_params(args.audio_separator_model_file), **overrides)
    separator = MdxSeparator(
        args.audio_separator_model_file, params, args.overlap, args.batch_size, args.denoise, args.threads
    )
    if not args.audio_file_path.is_file():
        raise MissingFileError(f"audio file not found: {args.audio_file_path}; check the path")
    vocal_path = args.saved_vocal_path or args.audio_file_path.parent / "vocal.wav"
    result = separate_file(separator, args.audio_file_path, vocal_path, args.saved_instrumental_path)
    written = ", ".join(str(p) for p in (result.vocal_path, result.instrumental_path) if p is not None)
    print(f"wrote {written} ({result.duration:.2f} s, {result.sample_rate} Hz stereo)")
    return 0


def mask_main(kind: str, argv: list[str] | None = None) -> int:
    """lip_mask_extractor.py (kind "lip") and face_mask_extractor.py (kind "face")."""
    parser = _parser(
        f"{kind}_mask_extractor.py",
        f"Write FOLDER_ROOT/<clip>/{MASK_FOLDERS[kind]}/<frame> for every frame in "
        "FOLDER_ROOT/<clip>/images with MediaPipe Face Mesh (offline, CPU). Existing masks are kept.",
    )
    parser.add_argument("--folder_root", type=Path, required=True, help="folder holding the clip folders")
    parser.add_argument(
        "--start", type=int, default=0, help="first clip index (the number in a numbered folder name)"
    )
    parser.add_argument("--end", type=int, default=None, help="clip index to stop before (default: all)")
    args = parser.parse_args(argv)
    report = extract_masks(args.folder_root, (kind,), args.start, args.end)
    print(report.summary())
    return 0


def prepare_dataset_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        "prepare_dataset.py",
        "Turn raw talking-head videos into the talking_face_data training layout: per clip "
        "sub_clip.mp4, audio.wav, images/, face_masks/, lip_masks/, plus video_{square,rec,vec}_path.txt.",
    )
    parser.add_argument("--video_path", type=Path, required=True, help="a video file or a folder of videos")
    parser.add_argument("--output_root", type=Path, default=Path("talking_face_data"), help="dataset folder")
    parser.add_argument("--fps", type=Fraction, default=Fraction(25), help="frame rate of the clips")
    parser.add_argument("--max_frames", type=int, default=250, help="longest clip, in frames")
    parser.add_argument("--min_frames", type=int, default=81, help="shortest clip kept (training takes 81)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="frame size relative to 512x512/832x480/480x832"
    )
    parser.add_argument(
        "--category", choices=CATEGORIES, default="speech", help="used when no folder of a video names one"
    )
    parser.add_argument("--min_face_fraction", type=float, default=0.8, help="share of frames with a face")
    parser.add_argument(
        "--audio_separator_model_file",
        type=Path,
        help="an MDX-Net model (e.g. Kim_Vocal_2.onnx): keep only the vocals in audio.wav",
    )
    args = parser.parse_args(argv)
    separator = MdxSeparator(args.audio_separator_model_file) if args.audio_separator_model_file else None
    options = BuildOptions(
        args.fps,
        args.max_frames,
        args.min_frames,
        args.scale,
        args.category,
        args.min_face_fraction,
        separator,
    )
    report = build_dataset(args.video_path, args.output_root, options)
    print(report.summary())
    lists = ", ".join(path_list_name(name) for name in ("square", "rec", "vec"))
    print(f"path lists: {lists} in {report.output_root}")
    return 0 if report.kept else 1


def lip_mask_extractor_main(argv: list[str] | None = None) -> int:
    return mask_main("lip", argv)


def face_mask_extractor_main(argv: list[str] | None = None) -> int:
    return mask_main("face", argv)
