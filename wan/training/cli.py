"""The command line of every train_*.py script: the published flag names, defaults from a preset."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import run_cli
from ..errors import UserFacingError
from .loop import die_with_parent
from .objective import ObjectiveConfig
from .presets import PRESETS, Preset
from .trainer import DataSource, TrainConfig, Trainer


def build_parser(preset: Preset, prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=f"Train {preset.description}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--pretrained_model_name_or_path",
        type=Path,
        required=True,
        help="converted model folder to start from (python -m wan.convert; --base_only for the Wan base)",
    )
    model.add_argument(
        "--transformer_path", type=Path, help="transformer weights to start from instead (.pt/.safetensors)"
    )
    model.add_argument(
        "--pretrained_wav2vec_path",
        type=Path,
        help="accepted for compatibility; the converted folder holds wav2vec2",
    )
    data = p.add_argument_group("data (talking_face_data path lists; see prepare_dataset.py)")
    for flag, (width, height) in preset.data_flags.items():
        data.add_argument(
            flag, type=Path, help="path list (txt, or metadata csv/jsonl) of clips for one size"
        )
        data.add_argument(
            size_flag(flag), type=parse_size, default=(width, height), metavar="WxH", help="its training size"
        )
    data.add_argument(
        "--train_data",
        action="append",
        default=[],
        metavar="LIST:WxH",
        help="another size bucket: a path list and the size its clips train at (repeatable)",
    )
    data.add_argument(
        "--precomputed_dir", type=Path, help="train on cached features (python -m wan.training.precompute)"
    )
    data.add_argument("--video_sample_n_frames", type=int, default=81, help="frames per sample, 4k+1")
    data.add_argument("--dataloader_num_workers", type=int, default=4)
    run = p.add_argument_group("run")
    run.add_argument("--output_dir", type=Path, required=True, help="checkpoints, logs and validation videos")
    run.add_argument("--train_batch_size", type=int, default=1)
    run.add_argument("--gradient_accumulation_steps", type=int, default=1)
    run.add_argument("--num_train_epochs", type=int, default=1000)
    run.add_argument(
        "--max_train_steps", type=int, help="stop after this many optimizer steps (overrides epochs)"
    )
    run.add_argument(
        "--checkpointing_steps", type=int, default=2000, help="save accelerate state + weights every N steps"
    )
    run.add_argument("--checkpoints_total_limit", type=int, help="keep only the newest N checkpoints")
    run.add_argument(
        "--resume_from_checkpoint", help="'latest', or checkpoint-N (in --output_dir) or a checkpoint folder"
    )
    run.add_argument("--seed", type=int, default=42)
    run.add_argument(
        "--report_to",
        choices=["tensorboard", "wandb", "none"],
        default="tensorboard",
        help="wandb is imported only when chosen; WANDB_MODE=offline logs without an account",
    )
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--learning_rate", type=float, default=preset.learning_rate)
    optim.add_argument("--lr_scheduler", default="constant_with_warmup", help="any diffusers scheduler name")
    optim.add_argument("--lr_warmup_steps", type=int, default=100)
    optim.add_argument("--adam_weight_decay", type=float, default=3e-2)
    optim.add_argument("--adam_epsilon", type=float, default=1e-10)
    optim.add_argument("--max_grad_norm", type=float, default=0.05, help="gradient clipping (0 disables)")
    optim.add_argument(
        "--optimizer",
        choices=["adamw", "adamw8bit", "cpu_offload_adamw"],
        default="adamw",
        help="adamw8bit: bitsandbytes 8-bit states (GPU); cpu_offload_adamw: torchao, states in CPU memory",
    )
    optim.add_argument(
        "--use_ema", action="store_true", help="keep an exponential moving average of the trained weights"
    )
    optim.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="bf16")
    optim.add_argument(
        "--gradient_checkpointing", action="store_true", help="recompute activations (less memory)"
    )
    optim.add_argument("--compile", action="store_true", help="torch.compile the repeated DiT blocks")
    optim.add_argument(
        "--attention_backend", help="diffusers attention backend, e.g. flash, _native_cudnn, sage"
    )
    lora = p.add_argument_group("LoRA (omit --rank for a full finetune)")
    lora.add_argument(
        "--rank", type=int, default=preset.lora_rank, help="LoRA rank on the DiT's linear layers"
    )
    lora.add_argument("--network_alpha", type=float, default=preset.lora_alpha, help="LoRA alpha")
    objective = p.add_argument_group("objective (defaults: the published recipe)")
    objective.add_argument(
        "--mask_probabilities",
        type=float,
        nargs=3,
        default=[0.4, 0.1, 0.5],
        metavar=("WHOLE", "FACE", "LIP"),
        help="chances of weighting the loss by 1+face+lip, face, lip",
    )
    objective.add_argument(
        "--motion_sub_loss_ratio", type=float, default=0.25, help="weight of the motion term (0: off)"
    )
    objective.add_argument(
        "--motion_axis",
        choices=["channels", "frames"],
        default="channels",
        help="'channels' is what the published code computes; 'frames' differences consecutive frames",
    )
    objective.add_argument(
        "--audio_dropout", type=float, default=0.1, help="chance of zeroed audio features in a step"
    )
    objective.add_argument(
        "--clip_level_audio", type=float, default=0.3, help="chance of clip-level audio attention"
    )
    validation = p.add_argument_group("validation")
    validation.add_argument(
        "--validation_reference_path", type=Path, help="reference image for validation videos"
    )
    validation.add_argument("--validation_driven_audio_path", type=Path, help="audio for validation videos")
    validation.add_argument(
        "--validation_file",
        type=Path,
        help="JSON list (or JSONL) of validation items: image, audio, and optionally prompt, width, height, "
        "num_frames (default: the training size and frames)",
    )
    validation.add_argument("--validation_steps", type=int, default=500)
    validation.add_argument("--validation_inference_steps", type=int, default=25)
    return p


def parse_size(text: str) -> tuple[int, int]:
    """'832x480' -> (832, 480); sizes must be multiples of 16 (8x VAE, 2x2 patches)."""
    try:
        width, height = (int(value) for value in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 512x512") from None
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise argparse.ArgumentTypeError(
            f"size {text} must be positive multiples of 16 (e.g. 512x512, 832x480)"
        )
    return width, height


def size_flag(data_flag: str) -> str:
    """--train_data_square_dir -> --train_data_square_size."""
    return data_flag.removesuffix("_dir") + "_size"


def config_from_args(args: argparse.Namespace, preset: Preset) -> TrainConfig:
    data = [
        DataSource(getattr(args, flag.lstrip("-")), *getattr(args, size_flag(flag).lstrip("-")))
        for flag in preset.data_flags
        if getattr(args, flag.lstrip("-")) is not None
    ]
    for entry in args.train_data:
        list_file, _, size = entry.rpartition(":")
        if not list_file:
            raise UserFacingError(f"--train_data {entry}: write PATH_LIST:WIDTHxHEIGHT")
        try:
            data.append(DataSource(Path(list_file), *parse_size(size)))
        except argparse.ArgumentTypeError as error:
            raise UserFacingError(f"--train_data {entry}: {error}") from None
    if args.video_sample_n_frames < 5 or (args.video_sample_n_frames - 1) % 4:
        raise UserFacingError(
            f"--video_sample_n_frames {args.video_sample_n_frames}: use 4k+1 frames, at least 5 (e.g. 81)"
        )
    if not data and args.precomputed_dir is None:
        raise UserFacingError(
            f"no training data: pass {' and/or '.join(preset.data_flags)} (or --precomputed_dir)"
        )
    if (args.validation_reference_path is None) != (args.validation_driven_audio_path is None):
        raise UserFacingError(
            "validation needs both --validation_reference_path and --validation_driven_audio_path"
        )
    return TrainConfig(
        output_dir=args.output_dir,
        data=data,
        pipeline_dir=args.pretrained_model_name_or_path,
        num_frames=args.video_sample_n_frames,
        batch_size=args.train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_train_steps=args.max_train_steps,
        num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate,
        adam_weight_decay=args.adam_weight_decay,
        adam_epsilon=args.adam_epsilon,
        lr_scheduler=args.lr_scheduler,
        lr_warmup_steps=args.lr_warmup_steps,
        max_grad_norm=args.max_grad_norm,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
        resume_from_checkpoint=args.resume_from_checkpoint,
        validation_steps=args.validation_steps,
        validation_image=args.validation_reference_path,
        validation_audio=args.validation_driven_audio_path,
        validation_file=args.validation_file,
        validation_inference_steps=args.validation_inference_steps,
        transformer_path=args.transformer_path,
        seed=args.seed,
        lora_rank=args.rank,
        lora_alpha=args.network_alpha,
        use_ema=args.use_ema,
        optimizer=args.optimizer,
        compile_blocks=args.compile,
        attention_backend=args.attention_backend,
        report_to=args.report_to,
        dataloader_num_workers=args.dataloader_num_workers,
        precomputed_dir=args.precomputed_dir,
        objective=ObjectiveConfig(
            tuple(args.mask_probabilities),
            args.motion_sub_loss_ratio,
            args.motion_axis,
            args.audio_dropout,
            args.clip_level_audio,
        ),
    )


def main_for_preset(name: str, argv: list[str] | None = None) -> int:
    preset = PRESETS[name]

    def main(argv: list[str] | None) -> int:
        die_with_parent()  # a worker stops when its launcher dies, even by SIGKILL
        args = build_parser(preset, f"train_{name}.py").parse_args(argv)
        config = config_from_args(args, preset)
        trainer = Trainer(config)  # loads --transformer_path before any LoRA adapter is attached
        history = trainer.train()
        if history:
            trainer.accelerator.print(
                f"trained to step {history[-1][0]}, last loss {history[-1][1]:.4f}; checkpoints in {config.output_dir}"
            )
        return 0

    return run_cli(main, argv)
