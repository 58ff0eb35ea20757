"""The command line behind `inference.py`: flags (the published names), loading, generating, summary."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import checks
from .errors import UserFacingError
from .generation_settings import SAMPLE_RATE, recommended_settings
from .loading.lora import load_lora
from .loading.released import ReleasedLayout, load_released_pipeline
from .loading.state_dict import check_weights_file, library_load_errors
from .loading.transformer import load_transformer_weights
from .media import FragmentedVideoWriter, load_audio, load_image
from .models.fsdp import shard_transformer
from .pipeline.conditioning import DEFAULT_NEGATIVE_PROMPT
from .pipeline.memory import MEMORY_MODES, QUANTIZATIONS
from .pipeline.pipeline import StableAvatarPipeline
from .pipeline.runtime import RuntimeOptions, configure_pipeline
from .pipeline.solvers import SOLVERS
from .pipeline.streaming import file_chunks, pcm_chunks
from .pipeline.windows import WEIGHTING_SCHEMES
from .pipeline.windows_outer import PREFIX_MODES, SAMPLING_ORDERS

DEMO_MODEL_DIR = Path("checkpoints/demo")
FOLDER_DEFAULT = "(default: the model folder's generation_settings.json, else"
# inference.py flag -> StableAvatarPipeline keyword (generation_settings.json key)
SETTING_OF_FLAG = {
    "width": "width",
    "height": "height",
    "sample_steps": "num_inference_steps",
    "sample_text_guide_scale": "text_guidance_scale",
    "sample_audio_guide_scale": "audio_guidance_scale",
    "clip_sample_n_frames": "clip_length",
    "overlap_window_length": "overlap",
}
NO_EFFECT = "accepted so the published inference.sh runs unchanged; it has no effect (none in the published code either)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference.py",
        description="Generate a talking/singing video of the person in a reference image, driven by an audio "
        "track of any length. The output mp4 carries the audio.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group(
        "model (one of: --model_dir, the published checkpoint flags, --random_tiny_model)"
    )
    model.add_argument(
        "--model_dir",
        type=Path,
        help=f"a converted diffusers folder (python -m wan.convert); default: {DEMO_MODEL_DIR} if present",
    )
    model.add_argument(
        "--pretrained_model_name_or_path",
        type=Path,
        help="the downloaded Wan2.1-Fun-V1.1-1.3B-InP folder (converted in memory at start-up)",
    )
    model.add_argument(
        "--transformer_path",
        type=Path,
        help="StableAvatar weights, e.g. StableAvatar-1.3B/transformer3d-square.pt, or a training checkpoint's "
        "transformer3d-checkpoint-N.safetensors (also with --model_dir)",
    )
    model.add_argument("--pretrained_wav2vec_path", type=Path, help="the wav2vec2-base-960h folder")
    model.add_argument("--lora_path", type=Path, help="a LoRA folder written by training (checkpoint-N/lora)")
    model.add_argument(
        "--random_tiny_model",
        action="store_true",
        help="a tiny model with RANDOM weights (no download needed): shows the program works, "
        "produces noise, not a face",
    )
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--validation_reference_path", type=Path, required=True, help="reference image of the person"
    )
    inputs.add_argument(
        "--validation_driven_audio_path",
        type=Path,
        required=True,
        help="driving audio: wav/mp3/flac/m4a or a video file's audio track; any length; with --stream, '-' "
        "reads raw 16 kHz mono 16-bit PCM from stdin",
    )
    inputs.add_argument(
        "--validation_prompts",
        nargs="+",
        default=["The protagonist is speaking."],
        help="text prompt (words are joined); describe first frame, behaviour, background",
    )
    inputs.add_argument("--negative_prompt", default=DEFAULT_NEGATIVE_PROMPT, help="what to steer away from")
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", type=Path, default=Path("outputs"), help="folder for the video")
    output.add_argument(
        "--output_name", default="video_with_audio.mp4", help="file name of the mp4 in --output_dir"
    )
    output.add_argument(
        "--save_frames", action="store_true", help="also save every frame as PNG in OUTPUT_DIR/frames"
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--width", type=int, help=f"multiple of 16; trained: 512x512, 480x832, 832x480 {FOLDER_DEFAULT}512)"
    )
    sampling.add_argument("--height", type=int, help=f"multiple of 16 {FOLDER_DEFAULT}512)")
    sampling.add_argument(
        "--sample_steps", type=int, help=f"denoising steps (30-50 recommended) {FOLDER_DEFAULT}50)"
    )
    sampling.add_argument(
        "--sample_text_guide_scale", type=float, help=f"text guidance (3-6) {FOLDER_DEFAULT}3.0)"
    )
    sampling.add_argument(
        "--sample_audio_guide_scale",
        type=float,
        help=f"audio guidance (3-6); raise it for tighter lip sync {FOLDER_DEFAULT}5.0)",
    )
    sampling.add_argument(
        "--clip_sample_n_frames", type=int, help=f"frames per window, 4k+1 {FOLDER_DEFAULT}81)"
    )
    sampling.add_argument(
        "--overlap_window_length",
        type=int,
        help=f"latent frames shared by neighbouring windows (5-15: more is smoother and slower) {FOLDER_DEFAULT}5)",
    )
    sampling.add_argument(
        "--overlapping_weight_scheme",
        choices=WEIGHTING_SCHEMES,
        default="uniform",
        help="how overlapping windows are blended",
    )
    sampling.add_argument(
        "--sample_solver",
        choices=list(SOLVERS),
        default="euler",
        help="; ".join(f"{k}: {v}" for k, v in SOLVERS.items()),
    )
    sampling.add_argument(
        "--sample_shift",
        type=float,
        default=None,
        help="flow-matching schedule shift (default: the model folder's own, 5.0 for the released "
        "model, 3.0 for the demo model)",
    )
    sampling.add_argument(
        "--guidance_interval",
        type=float,
        nargs=2,
        default=[0.0, 1.0],
        metavar=("START", "END"),
        help="guide only on this fraction of the steps (one forward instead of three elsewhere)",
    )
    sampling.add_argument(
        "--guidance",
        choices=["published", "ang"],
        default="published",
        help="guidance rule: 'published' (StableAvatar's released text/audio guidance) or 'ang' (the paper's "
        "Audio Native Guidance, docs/audio-native-guidance.md); both 3 forwards per guided step",
    )
    sampling.add_argument("--seed", type=int, default=None, help="random seed (printed when not given)")
    sampling.add_argument(
        "--fps", type=int, default=25, help="frame rate; the released models were trained at 25"
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--device", default="auto", help="'auto' (CUDA when available), 'cuda', 'cuda:1' or 'cpu'"
    )
    runtime.add_argument(
        "--dtype",
        default=None,
        help="compute dtype: bfloat16 (default on a GPU and on a CPU with bfloat16 units, AVX512-BF16 or AMX) "
        "or float32 (default on other CPUs)",
    )
    runtime.add_argument(
        "--attention_backend", help="diffusers attention backend: native (default), flash, sage, ..."
    )
    runtime.add_argument("--compile", action="store_true", help="torch.compile the repeated DiT blocks (GPU)")
    runtime.add_argument(
        "--enable_teacache",
        action="store_true",
        help="skip DiT blocks on steps where the first block's output barely changes (state kept per window)",
    )
    runtime.add_argument(
        "--teacache_threshold",
        type=float,
        default=0.10,
        help="relative change below which a step reuses the window's cached residual",
    )
    runtime.add_argument(
        "--quantize",
        choices=list(QUANTIZATIONS),
        help="; ".join(f"{k}: {v}" for k, v in QUANTIZATIONS.items()),
    )
    runtime.add_argument(
        "--GPU_memory_mode",
        choices=list(MEMORY_MODES),
        default="model_full_load",
        help="; ".join(f"{k}: {v}" for k, v in MEMORY_MODES.items()),
    )
    streaming = parser.add_argument_group("streaming (video while the audio arrives)")
    streaming.add_argument(
        "--stream",
        action="store_true",
        help="write a fragmented mp4 that plays while it grows, 4 frames at a time as each window is done "
        "(windows-outer order); "
        "with --validation_driven_audio_path - the audio is raw 16 kHz mono 16-bit PCM on stdin",
    )
    streaming.add_argument(
        "--sampling_order",
        choices=list(SAMPLING_ORDERS),
        default="steps",
        help="; ".join(f"{k}: {v}" for k, v in SAMPLING_ORDERS.items()) + " (--stream always uses windows)",
    )
    streaming.add_argument(
        "--window_prefix",
        choices=PREFIX_MODES,
        default="renoise",
        help="windows order: how a window continues from the previous one's last frames (re-noised known "
        "latents, the image-to-video condition channels, or both)",
    )
    published = parser.add_argument_group("published flags kept for compatibility")
    published.add_argument("--config_path", help=f"the published model yaml; {NO_EFFECT}")
    published.add_argument("--motion_frame", type=int, help=NO_EFFECT)
    runtime.add_argument(
        "--sequence_parallel",
        action="store_true",
        help="share each transformer forward between the processes of torchrun --nproc_per_node N "
        "(one GPU each; gloo on CPU), split by latent frames, all-gathering keys/values (see also "
        "--ulysses_degree, --ring_degree); rank 0 writes the video",
    )
    runtime.add_argument(
        "--fsdp_dit",
        action="store_true",
        help="shard the transformer's weights across the torchrun processes (each keeps 1/N); "
        "combine with --sequence_parallel to split the work as well",
    )
    published.add_argument(
        "--ulysses_degree",
        type=int,
        default=1,
        help="Ulysses sequence parallelism across the torchrun processes (all-to-all over attention heads): "
        "equal to --nproc_per_node, which must divide the heads (12 for 1.3B, 40 for 14B)",
    )
    published.add_argument(
        "--ring_degree",
        type=int,
        default=1,
        help="ring sequence parallelism across the torchrun processes (keys/values passed around the ring): "
        "equal to --nproc_per_node",
    )
    return parser


def sequence_parallel_mode(args: argparse.Namespace) -> str | None:
    """'ulysses', 'ring' or 'all-gather' from the flags, or None without sequence parallelism."""
    for name in ("ulysses_degree", "ring_degree"):
        if getattr(args, name) < 1:
            raise UserFacingError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.ulysses_degree > 1 and args.ring_degree > 1:
        raise UserFacingError(
            "--ulysses_degree and --ring_degree cannot both be above 1 (hybrid Ulysses x ring is not "
            "implemented); set one of them to the number of processes"
        )
    if args.ulysses_degree > 1:
        return "ulysses"
    if args.ring_degree > 1:
        return "ring"
    return "all-gather" if args.sequence_parallel else None


def check_parallel_degrees(args: argparse.Namespace) -> None:
    """A Ulysses or ring degree must equal the number of torchrun processes."""
    world = torch.distributed.get_world_size()
    for name in ("ulysses_degree", "ring_degree"):
        degree = getattr(args, name)
        if degree > 1 and degree != world:
            raise UserFacingError(
                f"--{name} {degree} must equal the number of processes ({world}): "
                f"torchrun --nproc_per_node {degree} inference.py ..."
            )


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """The runtime flags as `RuntimeOptions` (applied by `configure_pipeline`, as the app and benchmarks do)."""
    return RuntimeOptions(
        device=args.device,
        dtype=args.dtype,
        memory_mode=args.GPU_memory_mode,
        solver=args.sample_solver,
        shift=args.sample_shift,
        step_cache_threshold=args.teacache_threshold if args.enable_teacache else None,
        attention_backend=args.attention_backend,
        quantize=args.quantize,
        compile=args.compile,
    )


def init_distributed(device: torch.device) -> tuple[torch.device, bool]:
    """Join the torchrun process group; returns this process's device and whether it writes the output."""
    import os

    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise UserFacingError(
            "--sequence_parallel, --ulysses_degree, --ring_degree and --fsdp_dit need torchrun: "
            "torchrun --nproc_per_node N inference.py ..."
        )
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank() == 0


def load_pipeline(args: argparse.Namespace, dtype: torch.dtype) -> StableAvatarPipeline:
    pipeline = _load_base_pipeline(args, dtype)
    if args.transformer_path is not None and args.pretrained_model_name_or_path is None:
        load_transformer_weights(pipeline.transformer, args.transformer_path)
    if args.lora_path is not None:
        load_lora(pipeline.transformer, args.lora_path)
    return pipeline


def _load_base_pipeline(args: argparse.Namespace, dtype: torch.dtype) -> StableAvatarPipeline:
    if args.random_tiny_model:
        from .pipeline.tiny import build_tiny_pipeline

        print(
            "NOTE: --random_tiny_model: a tiny model with RANDOM weights. The video shows noise, not a face;"
        )
        print("      it proves the program runs. See checkpoints/README.md for the real model.")
        return build_tiny_pipeline()
    if args.pretrained_model_name_or_path is not None:
        checkpoints = args.pretrained_model_name_or_path.parent
        layout = ReleasedLayout(
            base_dir=args.pretrained_model_name_or_path,
            transformer_path=args.transformer_path,
            wav2vec_dir=args.pretrained_wav2vec_path or checkpoints / "wav2vec2-base-960h",
        )
        return load_released_pipeline(layout, dtype)
    folder = checked_model_folder(args)
    with library_load_errors(folder):
        return StableAvatarPipeline.from_pretrained(folder, dtype=dtype)


def checked_model_folder(args: argparse.Namespace) -> Path | None:
    """`model_folder(args)`, checked to be a complete converted folder (None for the tiny random model and
    the downloaded layout)."""
    model_dir = model_folder(args)
    if model_dir is not None:
        return checks.model_folder(model_dir)
    if args.random_tiny_model or args.pretrained_model_name_or_path is not None:
        return None
    raise UserFacingError(
        "no model given: pass --model_dir (a converted folder), --pretrained_model_name_or_path with "
        "--transformer_path (the downloaded files), or --random_tiny_model to try the program"
    )


def model_folder(args: argparse.Namespace) -> Path | None:
    """The diffusers folder the model comes from: --model_dir, else checkpoints/demo when it exists (None
    for the tiny random model and the downloaded layout)."""
    if args.random_tiny_model or args.pretrained_model_name_or_path is not None:
        return None
    return args.model_dir or (DEMO_MODEL_DIR if DEMO_MODEL_DIR.is_dir() else None)


def fill_model_defaults(args: argparse.Namespace) -> None:
    """Sampling flags left out take the model folder's recommended settings (the published ones otherwise)."""
    settings = recommended_settings(model_folder(args))
    for flag, name in SETTING_OF_FLAG.items():
        if getattr(args, flag) is None:
            setattr(args, flag, settings[name])


def check_before_loading(args: argparse.Namespace) -> Path:
    """Everything about the flags that can be checked without the model: the model folder, the sampling
    settings (filled from the folder's recommendations) and the output location. Returns the mp4's path."""
    checked_model_folder(args)
    if args.transformer_path is not None:
        check_weights_file(args.transformer_path)
    fill_model_defaults(args)
    if args.stream and args.save_frames:
        raise UserFacingError("--save_frames is not available with --stream; drop one of them")
    checks.writable_folder(args.output_dir, "--output_dir")
    output_path = args.output_dir / checks.file_name(args.output_name, "--output_name")
    checks.writable_file(output_path, "the output file")
    StableAvatarPipeline.check_inputs(
        args.height,
        args.width,
        args.clip_sample_n_frames,
        args.overlap_window_length,
        args.fps,
        output_path=output_path,
        sampling_order="windows" if args.stream else args.sampling_order,
        prefix=args.window_prefix,
        num_inference_steps=args.sample_steps,
        text_guidance_scale=args.sample_text_guide_scale,
        audio_guidance_scale=args.sample_audio_guide_scale,
        seed=args.seed,
    )
    return output_path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parallel_mode = sequence_parallel_mode(args)
    from_stdin = str(args.validation_driven_audio_path) == "-"
    if from_stdin and not args.stream:
        raise UserFacingError("audio from stdin ('-') needs --stream; or pass an audio file")
    if args.stream and (parallel_mode or args.fsdp_dit):
        raise UserFacingError("--stream runs in one process; drop --sequence_parallel/--fsdp_dit/degrees")
    for path in (
        args.validation_reference_path,
        *([] if from_stdin else [args.validation_driven_audio_path]),
    ):
        checks.existing_file(path, "input file")
    output_path = check_before_loading(args)
    # Read (and so check) the inputs before the model: a bad file costs seconds, not a model load.
    reference = load_image(args.validation_reference_path)
    audio = None if from_stdin else load_audio(args.validation_driven_audio_path, SAMPLE_RATE)
    options = runtime_options(args)
    device = options.torch_device()
    is_main = True
    if parallel_mode or args.fsdp_dit:
        device, is_main = init_distributed(device)
        check_parallel_degrees(args)
    pipeline = load_pipeline(args, options.compute_dtype(device))
    configure_pipeline(pipeline, options, device)
    if parallel_mode:
        try:
            pipeline.transformer.enable_sequence_parallel(mode=parallel_mode)
        except ValueError as error:
            raise UserFacingError(str(error)) from None
    if args.fsdp_dit:
        shard_transformer(pipeline.transformer, device.type)

    started = time.monotonic()
    if args.stream:
        return stream_to_file(pipeline, args, output_path, reference, audio)
    result = pipeline(
        image=reference,
        audio=audio,
        **_sampling_arguments(args),
        output_path=output_path if is_main else None,
        output_type="mp4" if is_main else "latent",
        frames_dir=args.output_dir / "frames" if args.save_frames and is_main else None,
        progress=is_main,
        sampling_order=args.sampling_order,
    )
    if not is_main:
        return 0
    print(
        f"wrote {output_path}: {result.num_frames} frames ({result.num_frames / args.fps:.2f} s) at "
        f"{args.width}x{args.height}, {result.num_windows} windows x {args.sample_steps} steps, "
        f"seed {result.seed}, {time.monotonic() - started:.1f} s"
    )
    return 0


def _sampling_arguments(args: argparse.Namespace) -> dict:
    """The pipeline arguments that whole-file and streamed generation take alike from the command line."""
    return dict(
        prompt=" ".join(args.validation_prompts),
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.sample_steps,
        text_guidance_scale=args.sample_text_guide_scale,
        audio_guidance_scale=args.sample_audio_guide_scale,
        guidance_interval=tuple(args.guidance_interval),
        guidance=args.guidance,
        clip_length=args.clip_sample_n_frames,
        overlap=args.overlap_window_length,
        seed=args.seed,
        fps=args.fps,
        weighting=args.overlapping_weight_scheme,
        prefix=args.window_prefix,
    )


def stream_to_file(
    pipeline: StableAvatarPipeline,
    args: argparse.Namespace,
    output_path: Path,
    reference: Image.Image,
    waveform: np.ndarray | None,
) -> int:
    """`--stream`: a fragmented mp4 at `output_path`, valid and playable as it grows (4 frames at a time); the
    audio is `waveform` (16 kHz mono) or, when None, raw PCM from stdin."""
    audio = pcm_chunks(sys.stdin.buffer) if waveform is None else file_chunks(waveform)
    started = time.monotonic()
    frames = 0
    with FragmentedVideoWriter(output_path, fps=args.fps, audio_sample_rate=SAMPLE_RATE) as writer:
        for piece in pipeline.stream(
            image=reference,
            audio=audio,
            **_sampling_arguments(args),
        ):
            # every latent frame goes out as soon as it is decoded; a keyframe per window, so a viewer can join
            writer.write(
                piece.frames, value_range=(-1.0, 1.0), audio=piece.audio, keyframe=piece.window_piece == 0
            )
            frames += len(piece.frames)
            if piece.first_frame == 0:
                print(f"first frame {piece.latency:.2f} s after the first audio sample", flush=True)
            if piece.ends_window:
                print(
                    f"window {piece.window + 1}: {output_path} now holds {frames / args.fps:.2f} s "
                    f"({piece.latency:.1f} s after the first audio sample)",
                    flush=True,
                )
    print(
        f"wrote {output_path}: {frames} frames ({frames / args.fps:.2f} s) at {args.width}x{args.height}, "
        f"streamed in {time.monotonic() - started:.1f} s"
    )
    return 0
