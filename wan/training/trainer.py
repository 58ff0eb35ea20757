"""One trainer for every StableAvatar training set-up (the differences are presets, see presets.py).

Runs on accelerate (single process, DDP, FSDP or DeepSpeed, decided by `accelerate launch` and its
config); every random choice of a step comes from a generator seeded by (seed, step, process), so a
resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from ..errors import UserFacingError
from ..loading.lora import is_audio_parameter, lora_config, save_lora
from ..loading.released import SCHEDULER_CONFIG
from ..loading.transformer import load_transformer_weights
from ..pipeline.pipeline import StableAvatarPipeline
from .dataset import TalkingFaceDataset
from .encode import EncodedBatch, encode_batch
from .objective import ObjectiveConfig, StepChoices, masked_flow_loss, noisy_latents_and_target, sample_sigmas
from .sampler import ResolutionBatchSampler

CHECKPOINT_PREFIX = "checkpoint-"
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


def step_generator(seed: int, step: int, micro_step: int, process: int) -> torch.Generator:
    """The generator of one micro-step: independent of everything but these four numbers."""
    state = np.random.SeedSequence([seed, step, micro_step, process]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def collate(items: list[dict]) -> dict:
    longest = max(item["audio"].numel() for item in items)
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "face_masks": torch.stack([item["face_masks"] for item in items]),
        "lip_masks": torch.stack([item["lip_masks"] for item in items]),
        "audio": torch.stack(
            [torch.nn.functional.pad(item["audio"], (0, longest - item["audio"].numel())) for item in items]
        ),
        "prompt": [item["prompt"] for item in items],
        "folder": [item["folder"] for item in items],
    }


def flow_matching_loss(
    transformer,
    encoded: EncodedBatch,
    schedule_sigmas: torch.Tensor,
    generator: torch.Generator,
    objective: ObjectiveConfig,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The loss of one batch with this step's random draws."""
    latents, condition = encoded.sample(generator)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    sigmas = sample_sigmas(schedule_sigmas, latents.shape[0], generator).to(latents.device)
    noisy, target = noisy_latents_and_target(latents, noise, sigmas)
    choices = StepChoices.draw(objective, generator)
    audio = torch.zeros_like(encoded.audio) if choices.drop_audio else encoded.audio
    prediction = transformer(
        hidden_states=torch.cat([noisy, condition], dim=1).to(dtype),
        timestep=sigmas * 1000.0,
        encoder_hidden_states=encoded.text.to(dtype),
        encoder_hidden_states_image=encoded.image.to(dtype),
        audio_embeds=audio.to(dtype),
        num_video_frames=encoded.num_video_frames,
        audio_guidance_triple=False,
        clip_level_audio=choices.clip_level_audio,
    ).sample
    return masked_flow_loss(prediction, target, encoded.face_masks, encoded.lip_masks, choices, objective)


class Trainer:
    """Set up with `Trainer(config, pipeline)`, run with `train()`; `history` holds (step, loss)."""

    def __init__(self, config: TrainConfig, pipeline: StableAvatarPipeline | None = None) -> None:
        self.config = config
        config.output_dir.mkdir(parents=True, exist_ok=True)
        report_to = config.report_to if config.report_to != "none" and _tensorboard_available() else None
        self.accelerator = Accelerator(
            # DeepSpeed brings its own CPU accelerator; forcing accelerate's CPU mode would silently drop it.
            cpu=not torch.cuda.is_available()
            and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true",
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=report_to,
            project_config=ProjectConfiguration(
                project_dir=str(config.output_dir), logging_dir=str(config.output_dir / "logs")
            ),
        )
        set_seed(config.seed)
        self.pipeline = pipeline or self._load_pipeline()
        if config.transformer_path is not None:
            load_transformer_weights(self.pipeline.transformer, config.transformer_path)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            config.mixed_precision, torch.float32
        )
        self.schedule_sigmas = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).sigmas.float()
        self.history: list[tuple[int, float]] = []
        self.global_step = 0
        self._prepare_model()
        self._prepare_data()
        self._prepare_optimizer()

    # ---- set-up -------------------------------------------------------------------------------------
    def _load_pipeline(self) -> StableAvatarPipeline:
        if self.config.pipeline_dir is None or not (self.config.pipeline_dir / "model_index.json").is_file():
            raise UserFacingError(
                f"{self.config.pipeline_dir} is not a converted model folder; run python -m wan.convert first"
            )
        return StableAvatarPipeline.from_pretrained(self.config.pipeline_dir)

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
        self.ema = None
        if config.use_ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.trainable, decay=config.ema_decay)
            self.accelerator.register_for_checkpointing(self.ema)

    def _prepare_data(self) -> None:
        config = self.config
        if config.precomputed_dir is not None:
            from .precompute import PrecomputedDataset

            datasets = [PrecomputedDataset(config.precomputed_dir)]
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
        self.dataloader = DataLoader(
            ConcatDataset(datasets),
            batch_sampler=self.batch_sampler,
            collate_fn=datasets[0].collate if config.precomputed_dir else collate,
            num_workers=config.dataloader_num_workers,
        )

    def _prepare_optimizer(self) -> None:
        config, accelerator = self.config, self.accelerator
        updates_per_epoch = math.ceil(
            len(self.batch_sampler) / accelerator.num_processes / config.gradient_accumulation_steps
        )
        self.max_train_steps = config.max_train_steps or config.num_train_epochs * updates_per_epoch
        optimizer = _build_optimizer(config, self.trainable)
        if accelerator.state.deepspeed_plugin is not None:
            # Our batches come from a batch sampler, which DeepSpeed cannot read the batch size from.
            deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config
            deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
            deepspeed_config["train_batch_size"] = (
                config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
            )
        scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer,
            num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=self.max_train_steps * accelerator.num_processes,
        )
        self.transformer, self.optimizer, self.dataloader, self.lr_scheduler = accelerator.prepare(
            self.pipeline.transformer, optimizer, self.dataloader, scheduler
        )
        if accelerator.is_main_process and accelerator.trackers == [] and accelerator.log_with:
            accelerator.init_trackers(
                "stableavatar", config={"lr": config.learning_rate, "seed": config.seed}
            )

    # ---- loop ---------------------------------------------------------------------------------------
    def train(self) -> list[tuple[int, float]]:
        config, accelerator = self.config, self.accelerator
        first_epoch, skip_batches = self._resume()
        updates_per_epoch = max(math.ceil(len(self.dataloader) / config.gradient_accumulation_steps), 1)
        bar = tqdm(
            total=self.max_train_steps,
            initial=self.global_step,
            desc="training",
            unit="step",
            disable=not accelerator.is_local_main_process,
        )
        micro_step = 0
        for epoch in range(first_epoch, math.ceil(self.max_train_steps / updates_per_epoch) + 1):
            self.batch_sampler.set_epoch(epoch)
            for dataset in self.datasets:
                dataset.set_epoch(epoch)
            batches = (
                accelerator.skip_first_batches(self.dataloader, skip_batches)
                if skip_batches
                else self.dataloader
            )
            skip_batches = 0
            for batch in batches:
                with accelerator.accumulate(self.transformer):
                    loss = self._loss(batch, micro_step)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(self.trainable, config.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                micro_step += 1
                if not accelerator.sync_gradients:
                    continue
                micro_step = 0
                self.global_step += 1
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
                self.history.append((self.global_step, mean_loss))
                if self.ema is not None:
                    self.ema.step(self.trainable)
                bar.update()
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self.lr_scheduler.get_last_lr()[0]:.2e}")
                accelerator.log(
                    {"loss": mean_loss, "lr": self.lr_scheduler.get_last_lr()[0]}, step=self.global_step
                )
                if (
                    self.global_step % config.checkpointing_steps == 0
                    or self.global_step == self.max_train_steps
                ):
                    self.save_checkpoint()
                if config.validation_image and self.global_step % config.validation_steps == 0:
                    self.validate()
                if self.global_step >= self.max_train_steps:
                    break
            if self.global_step >= self.max_train_steps:
                break
        bar.close()
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return self.history

    def _loss(self, batch: dict, micro_step: int) -> torch.Tensor:
        encoded = batch if isinstance(batch, EncodedBatch) else encode_batch(self.pipeline, batch)
        encoded = encoded.to(self.accelerator.device)
        generator = step_generator(
            self.config.seed, self.global_step, micro_step, self.accelerator.process_index
        )
        with self.accelerator.autocast():
            return flow_matching_loss(
                self.transformer, encoded, self.schedule_sigmas, generator, self.config.objective, self.dtype
            )

    # ---- checkpoints --------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        found = [
            p
            for p in self.config.output_dir.glob(f"{CHECKPOINT_PREFIX}*")
            if p.name[len(CHECKPOINT_PREFIX) :].isdigit()
        ]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))

    def save_checkpoint(self) -> Path:
        """accelerate state (model, optimizer, scheduler, RNG, EMA) + a weights file inference loads directly.
        Written under a temporary name and renamed, so a crash never leaves a checkpoint that looks complete."""
        accelerator = self.accelerator
        final = self.config.output_dir / f"{CHECKPOINT_PREFIX}{self.global_step}"
        staging = self.config.output_dir / f".{final.name}.partial"
        if accelerator.is_main_process and staging.exists():
            shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            self._save_weights(staging)
            (staging / "trainer_state.json").write_text(json.dumps({"global_step": self.global_step}))
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            limit = self.config.checkpoints_total_limit
            if limit is not None:
                for old in self.checkpoints()[:-limit]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def _save_weights(self, folder: Path) -> None:
        transformer = self.accelerator.unwrap_model(self.transformer)
        if self.ema is not None:
            self.ema.store(self.trainable)
            self.ema.copy_to(self.trainable)
        try:
            if self.config.lora_rank:
                save_lora(transformer, folder / "lora")
            else:
                state = {k: v.detach().contiguous().cpu() for k, v in transformer.state_dict().items()}
                save_file(state, str(folder / WEIGHTS_NAME.format(step=self.global_step)))
        finally:
            if self.ema is not None:
                self.ema.restore(self.trainable)

    def _resume(self) -> tuple[int, int]:
        """Load a checkpoint if asked; returns (epoch to start in, batches of it to skip)."""
        choice = self.config.resume_from_checkpoint
        if not choice:
            return 0, 0
        if choice == "latest":
            found = self.checkpoints()
            if not found:
                self.accelerator.print(f"no checkpoint in {self.config.output_dir}; starting from scratch")
                return 0, 0
            path = found[-1]
        else:
            path = Path(choice)
            if not path.is_dir():
                raise UserFacingError(f"checkpoint {path} not found; use 'latest' or a checkpoint-N folder")
        self.accelerator.load_state(str(path))
        self.global_step = json.loads((path / "trainer_state.json").read_text())["global_step"]
        updates_per_epoch = max(math.ceil(len(self.dataloader) / self.config.gradient_accumulation_steps), 1)
        epoch, done = divmod(self.global_step, updates_per_epoch)
        return epoch, done * self.config.gradient_accumulation_steps

    # ---- validation ---------------------------------------------------------------------------------
    def validate(self) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        source = self.config.data[0]
        path = self.config.output_dir / "validation" / f"step-{self.global_step}.mp4"
        self.transformer.eval()
        try:
            self.pipeline(
                self.config.validation_image,
                self.config.validation_audio,
                prompt="The protagonist is talking",
                height=source.height,
                width=source.width,
                clip_length=self.config.num_frames,
                num_inference_steps=self.config.validation_inference_steps,
                seed=self.config.seed,
                output_path=path,
                progress=False,
            )
        finally:
            self.transformer.train()
        return path


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


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
