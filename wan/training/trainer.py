"""StableAvatar's training task: flow matching of the DiT (with its audio adapter) on talking-face clips.

`FlowMatchingTask` plugs into the generic `loop.TrainingLoop` (accelerate, resume, EMA, checkpoints,
validation, signals); `Trainer(config)` builds both from one `TrainConfig` (the differences between the
published set-ups are presets, see presets.py). Every random choice of a step comes from the loop's step
generator, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file
from torch.utils.data import ConcatDataset, DataLoader

from ..checks import model_folder
from ..errors import UserFacingError
from ..loading.lora import is_audio_parameter, lora_config, save_lora
from ..loading.released import SCHEDULER_CONFIG
from ..loading.state_dict import library_load_errors
from ..loading.transformer import load_transformer_weights
from ..pipeline.pipeline import StableAvatarPipeline
from .dataset import TalkingFaceDataset, collate
from .encode import EncodedBatch, encode_batch
from .loop import (
    CHECKPOINT_PREFIX,
    LoopConfig,
    OptimizerSpec,
    StepContext,
    TrainingLoop,
    TrainingTask,
    step_generator,
)
from .objective import ObjectiveConfig, flow_matching_loss
from .sampler import ResolutionBatchSampler

__all__ = ["CHECKPOINT_PREFIX", "DataSource", "FlowMatchingTask", "TrainConfig", "Trainer", "step_generator"]

WEIGHTS_NAME = "transformer3d-checkpoint-{step}.safetensors"


@dataclass
class DataSource:
    """A path-list file and the size its clips train at."""

    list_file: Path
    width: int
    height: int


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are the published 1.3B recipe."""

    output_dir: Path
    data: list[DataSource]
    pipeline_dir: Path | None = None  # a converted diffusers folder with every component
    transformer_path: Path | None = None  # weights to start from instead of the folder's transformer
    num_frames: int = 81
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_train_steps: int | None = None
    num_train_epochs: int = 1000
    learning_rate: float = 2e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 3e-2
    adam_epsilon: float = 1e-10
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 100
    max_grad_norm: float = 0.05
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 2000
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_steps: int = 500
    validation_image: Path | None = None
    validation_audio: Path | None = None
    validation_file: Path | None = (
        None  # JSON list / JSONL of {image, audio, prompt?, width?, height?, num_frames?}
    )
    validation_inference_steps: int = 25
    seed: int = 42
    lora_rank: int | None = None
    lora_alpha: float = 64.0
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    trainable_patterns: tuple[str, ...] = ("blocks.", "audio")
    use_ema: bool = False
    ema_decay: float = 0.9999
    optimizer: str = "adamw"
    compile_blocks: bool = False
    attention_backend: str | None = None
    report_to: str = "tensorboard"
    dataloader_num_workers: int = 0
    precomputed_dir: Path | None = None


class FlowMatchingTask(TrainingTask):
    """The DiT trained by flow matching on raw clips (encoded on the fly) or on cached features."""

    def __init__(
        self,
        config: TrainConfig,
        pipeline: StableAvatarPipeline | None = None,
        schedule_sigmas: torch.Tensor | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.micro_batch_size = config.batch_size
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            config.mixed_precision, torch.float32
        )
        self.schedule_sigmas = (
            schedule_sigmas
            if schedule_sigmas is not None
            else FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).sigmas.float()
        )

    # ---- set-up -------------------------------------------------------------------------------------
    def setup(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        if self.pipeline is None:
            self.pipeline = _load_pipeline(self.config.pipeline_dir)
        if self.config.transformer_path is not None:
            load_transformer_weights(self.pipeline.transformer, self.config.transformer_path)
        self._prepare_model()
        self._prepare_data()

    def _prepare_model(self) -> None:
        config, pipe = self.config, self.pipeline
        for name in ("vae", "text_encoder", "image_encoder", "audio_encoder"):
            getattr(pipe, name).requires_grad_(False).eval().to(self.accelerator.device)
        transformer = pipe.transformer.to(self.accelerator.device)
        transformer.requires_grad_(False)
        if config.lora_rank:
            transformer.add_adapter(lora_config(config.lora_rank, config.lora_alpha))
            for name, parameter in transformer.named_parameters():
                parameter.requires_grad_("lora_" in name or is_audio_parameter(name))
        else:
            for name, parameter in transformer.named_parameters():
                parameter.requires_grad_(any(pattern in name for pattern in config.trainable_patterns))
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if config.attention_backend:
            transformer.set_attention_backend(config.attention_backend)
        if config.compile_blocks:
            transformer.compile_repeated_blocks(fullgraph=False)
        transformer.train()
        self.trainable = [p for p in transformer.parameters() if p.requires_grad]
        self.modules = {"transformer": transformer}

    def _prepare_data(self) -> None:
        config = self.config
        if config.precomputed_dir is not None:
            from .precompute import PrecomputedDataset

            datasets = PrecomputedDataset.by_size(config.precomputed_dir)
        else:
            datasets = [
                TalkingFaceDataset(
                    source.list_file, source.width, source.height, config.num_frames, config.seed
                )
                for source in config.data
            ]
        self.datasets = datasets
        self.batch_sampler = ResolutionBatchSampler(
            [len(d) for d in datasets], config.batch_size, config.seed
        )
        self._dataloader = DataLoader(
            ConcatDataset(datasets),
            batch_sampler=self.batch_sampler,
            collate_fn=datasets[0].collate if config.precomputed_dir else collate,
            num_workers=config.dataloader_num_workers,
        )

    def optimizers(self) -> list[OptimizerSpec]:
        if hasattr(self, "_specs"):
            return self._specs
        config = self.config
        updates_per_epoch = math.ceil(
            len(self.batch_sampler) / self.accelerator.num_processes / config.gradient_accumulation_steps
        )
        max_train_steps = config.max_train_steps or config.num_train_epochs * updates_per_epoch
        optimizer = _build_optimizer(config, self.trainable)
        scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=max_train_steps,
        )
        self._specs = [OptimizerSpec("transformer", optimizer, scheduler, config.max_grad_norm)]
        return self._specs

    def dataloader(self) -> DataLoader:
        return self._dataloader

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def ema_parameters(self) -> list[torch.nn.Parameter]:
        return self.trainable

    # ---- one step -----------------------------------------------------------------------------------
    @property
    def transformer(self) -> torch.nn.Module:
        """The trained DiT as accelerate prepared it (DDP/DeepSpeed wrapper after the loop's set-up)."""
        return self.modules["transformer"]

    def prepare_batch(self, batch, context: StepContext) -> EncodedBatch:
        encoded = batch if isinstance(batch, EncodedBatch) else encode_batch(self.pipeline, batch)
        return encoded.to(self.accelerator.device)

    def losses(self, batch: EncodedBatch, context: StepContext):
        loss = flow_matching_loss(
            self.transformer,
            batch,
            self.schedule_sigmas,
            context.generator,
            self.config.objective,
            self.dtype,
        )
        return [("transformer", loss)]

    # ---- outputs ------------------------------------------------------------------------------------
    def save_weights(self, folder: Path, step: int) -> None:
        """A weights file inference loads directly: the full DiT, or the LoRA folder."""
        transformer = self.accelerator.unwrap_model(self.transformer)
        if self.config.lora_rank:
            save_lora(transformer, folder / "lora")
        else:
            state = {k: v.detach().contiguous().cpu() for k, v in transformer.state_dict().items()}
            save_file(state, str(folder / WEIGHTS_NAME.format(step=step)))

    def validation_items(self) -> list[dict]:
        """What to generate at each validation: the validation file's items, or the one reference/audio pair;
        size and frames default to the training data's (the first size bucket, or the cached features')."""
        config = self.config
        if config.validation_file is not None:
            items = read_validation_file(config.validation_file)
        elif config.validation_image is not None:
            items = [{"image": config.validation_image, "audio": config.validation_audio}]
        else:
            return []
        if config.data:
            width, height, frames = config.data[0].width, config.data[0].height, config.num_frames
        else:
            _, _, frames, height, width = self.datasets[0][0].face_masks.shape
        defaults = {
            "prompt": "The protagonist is talking",
            "width": width,
            "height": height,
            "num_frames": frames,
        }
        return [{**defaults, **item} for item in items]

    def validate(self, folder: Path, step: int) -> dict | None:
        """One video per validation item; returns their paths for the trackers."""
        videos = {}
        for index, item in enumerate(self.validation_items()):
            path = folder / f"step-{step}.mp4" if index == 0 else folder / f"step-{step}-{index}.mp4"
            self.pipeline(
                item["image"],
                item["audio"],
                prompt=item["prompt"],
                height=int(item["height"]),
                width=int(item["width"]),
                clip_length=int(item["num_frames"]),
                num_inference_steps=self.config.validation_inference_steps,
                seed=self.config.seed,
                output_path=path,
                progress=False,
            )
            videos[f"validation/{index}"] = path
        return videos


def read_validation_file(path: Path) -> list[dict]:
    """The items of a validation file: a JSON list or JSON lines, each with `image` and `audio` (relative to
    the file) and optionally `prompt`, `width`, `height`, `num_frames`."""
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"validation file {path} not found")
    text = path.read_text()
    try:
        items = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as error:
        raise UserFacingError(f"validation file {path} is not JSON or JSON lines: {error}") from None
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not item.get("image") or not item.get("audio"):
            raise UserFacingError(f"validation file {path}, item {number}: needs 'image' and 'audio'")
        for key in ("image", "audio"):
            item[key] = path.parent / item[key]
            if not item[key].is_file():
                raise UserFacingError(f"validation file {path}, item {number}: {item[key]} not found")
    return items


def loop_config(config: TrainConfig) -> LoopConfig:
    """The loop's part of a training config."""
    return LoopConfig(
        output_dir=config.output_dir,
        max_train_steps=config.max_train_steps,
        num_train_epochs=config.num_train_epochs,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        max_grad_norm=config.max_grad_norm,
        checkpointing_steps=config.checkpointing_steps,
        checkpoints_total_limit=config.checkpoints_total_limit,
        resume_from_checkpoint=config.resume_from_checkpoint,
        validation_steps=config.validation_steps if config.validation_image or config.validation_file else 0,
        seed=config.seed,
        use_ema=config.use_ema,
        ema_decay=config.ema_decay,
        report_to=config.report_to,
        tracker_config={"lr": config.learning_rate, "seed": config.seed},
    )


class Trainer(TrainingLoop):
    """StableAvatar training in one object: `Trainer(config, pipeline).train()` -> [(step, loss)].

    The loop (`self`) drives a `FlowMatchingTask` (`self.task`); `pipeline`, `transformer`, `trainable` and
    `schedule_sigmas` are the task's."""

    def __init__(
        self,
        config: TrainConfig,
        pipeline: StableAvatarPipeline | None = None,
        schedule_sigmas: torch.Tensor | None = None,
    ) -> None:
        super().__init__(FlowMatchingTask(config, pipeline, schedule_sigmas), loop_config(config))

    @property
    def pipeline(self) -> StableAvatarPipeline:
        return self.task.pipeline

    @property
    def transformer(self) -> torch.nn.Module:
        return self.task.transformer

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return self.task.trainable

    @property
    def schedule_sigmas(self) -> torch.Tensor:
        return self.task.schedule_sigmas


def _load_pipeline(folder: Path | None) -> StableAvatarPipeline:
    if folder is None:
        raise UserFacingError("no model folder given; pass a converted one (python -m wan.convert)")
    with library_load_errors(folder):
        return StableAvatarPipeline.from_pretrained(model_folder(folder))


def _build_optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    kwargs = {
        "lr": config.learning_rate,
        "betas": (config.adam_beta1, config.adam_beta2),
        "weight_decay": config.adam_weight_decay,
        "eps": config.adam_epsilon,
    }
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, **kwargs)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserFacingError(
                "--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes; CUDA only)"
            ) from None
        return bnb.optim.AdamW8bit(parameters, **kwargs)
    if config.optimizer == "cpu_offload_adamw":
        if not torch.cuda.is_available():
            raise UserFacingError(
                "--optimizer cpu_offload_adamw moves optimizer states from the GPU to CPU memory; it needs CUDA"
            )
        try:
            from torchao.optim import CPUOffloadOptimizer
        except ImportError:
            raise UserFacingError(
                "--optimizer cpu_offload_adamw needs torchao (pip install torchao)"
            ) from None
        return CPUOffloadOptimizer(parameters, torch.optim.AdamW, offload_gradients=True, **kwargs)
    raise UserFacingError(
        f"unknown optimizer {config.optimizer!r}; use adamw, adamw8bit or cpu_offload_adamw"
    )
