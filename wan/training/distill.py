"""Few-step students without guidance: distillation as a task on the training loop.

    python -m wan.training.distill --teacher checkpoints/demo --precomputed_dir outputs/cache \
        --output_dir outputs/distill --student_steps 1 2 4 --max_train_steps 600

Takes a StableAvatar folder (any size) with the guidance it samples with (its `generation_settings.json`,
or the flags) and trains a student that samples in N steps (1, 2 or 4) with one forward per step: the
teacher's text and audio guidance are baked in. Stages (each resumes):

  teacher   the teacher's guided Euler samples of the cached windows (`--precomputed_dir`, the features of
            `wan.training.precompute`): `--samples_per_window` noises each, written to
            OUTPUT_DIR/teacher_samples; sample k > 0 of a window takes the audio of another window, so the
            student sees each face with several speeches.
  train     the student (the teacher's copy, or a LoRA of it) on the training loop: `regression` (default)
            learns the straight path from each noise to the teacher's sample at the noise levels of its
            Euler grids; `dmd` adds distribution matching against a fake-score critic (see distill_core).
  export    OUTPUT_DIR/student: a model folder with the student transformer, the teacher's other components
            (linked, not copied) and a generation_settings.json with the student's steps and guidance 1;
            load it with `inference.py --model_dir OUTPUT_DIR/student` (or the checkpoint weights with
            `--transformer_path` / `--lora_path` over the teacher's folder).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..cli import atomic_directory, run_cli
from ..errors import UserFacingError
from ..generation_settings import recommended_settings, save_recommended_settings
from ..loading.lora import is_audio_parameter, lora_config, save_lora
from ..pipeline.conditioning import DEFAULT_NEGATIVE_PROMPT
from ..pipeline.encoders import encode_prompt
from ..pipeline.guidance import GUIDANCE_RULES, Guidance, build_guidance
from ..pipeline.pipeline import StableAvatarPipeline
from .distill_core import (
    GridDraw,
    distribution_matching_losses,
    student_grid,
    teacher_samples,
    trajectory_regression_loss,
)
from .encode import EncodedBatch
from .loop import LoopConfig, OptimizerSpec, StepContext, TrainingLoop, TrainingTask
from .precompute import PrecomputedDataset
from .sampler import ResolutionBatchSampler

METHODS = ("regression", "dmd")
SAMPLES_DIR = "teacher_samples"
STUDENT_DIR = "student"
WEIGHTS_NAME = "transformer3d-checkpoint-{step}.safetensors"
AUDIO_STRIDE = 37  # sample k > 0 of window i takes the audio of window (i - k * AUDIO_STRIDE) mod N


@dataclass
class DistillConfig:
    """A distillation run. Guidance and teacher steps default to the teacher folder's generation settings."""

    teacher_dir: Path
    precomputed_dir: Path
    output_dir: Path
    method: str = "regression"
    student_steps: tuple[int, ...] = (1, 2, 4)
    teacher_steps: int | None = None
    text_guidance: float | None = None
    audio_guidance: float | None = None
    guidance_rule: str = "published"
    samples_per_window: int = 4
    first_level_weight: float = 0.5  # chance a sample trains at noise level 1 (the one-step student's input)
    batch_size: int = 8
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 50
    max_train_steps: int = 600
    max_grad_norm: float = 1.0
    dmd_regression_weight: float = 1.0
    lora_rank: int | None = None
    lora_alpha: float = 64.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 200
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = "latest"
    validation_steps: int = 0
    validation_image: Path | None = None
    validation_audio: Path | None = None
    seed: int = 1
    report_to: str = "none"
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    tracker_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserFacingError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not self.student_steps or min(self.student_steps) < 1:
            raise UserFacingError(f"--student_steps must be positive step counts, got {self.student_steps}")

    def teacher_settings(self) -> dict:
        """The teacher's sampling settings: its folder's, overridden by the flags."""
        settings = recommended_settings(self.teacher_dir)
        for key, value in (
            ("num_inference_steps", self.teacher_steps),
            ("text_guidance_scale", self.text_guidance),
            ("audio_guidance_scale", self.audio_guidance),
        ):
            if value is not None:
                settings[key] = value
        return settings

    def guidance(self) -> Guidance:
        """The teacher's guidance rule at its scales (guidance on every step)."""
        settings = self.teacher_settings()
        return build_guidance(
            self.guidance_rule,
            text_scale=settings["text_guidance_scale"],
            audio_scale=settings["audio_guidance_scale"],
        )


def load_teacher(folder: Path) -> StableAvatarPipeline:
    if not (Path(folder) / "model_index.json").is_file():
        raise UserFacingError(f"{folder} is not a model folder (no model_index.json); pass a converted one")
    return StableAvatarPipeline.from_pretrained(folder, dtype=torch.float32)


def negative_embeddings(pipe: StableAvatarPipeline, prompt: str, device) -> torch.Tensor:
    return encode_prompt(pipe.tokenizer, pipe.text_encoder, prompt, device)


# ---- stage 0 (the demo only): windows of the synthetic data ----------------------------------------------
def demo_windows(pipe: StableAvatarPipeline, work_dir: Path, clips: int, seed: int) -> Path:
    """`clips` synthetic clips of the demo's training set (`wan.training.demo`, seed `seed`) and one cached
    window each, encoded by the teacher's own encoders; returns the cache folder (skipped when complete)."""
    from . import demo

    folder = work_dir / "cache"
    if len(list(folder.glob("*.safetensors"))) < clips:
        list_file = demo.make_data(work_dir / "data", clips, 4.0, seed)
        demo.precompute_windows(pipe, list_file, folder, 1, seed)
    return folder


# ---- stage 1: the teacher's samples ----------------------------------------------------------------------
def audio_sources(window: int, count: int, num_windows: int) -> list[int]:
    """The windows whose audio the `count` samples of `window` take: its own first, then others."""
    return [window] + [(window - k * AUDIO_STRIDE) % num_windows for k in range(1, count)]


def sample_noise(seed: int, window: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The noises `[count, *shape]` of one window: fixed by (seed, window) alone, so a resumed run matches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + window)
    return torch.randn((count, *shape), generator=generator)


@torch.no_grad()
def cache_teacher_samples(config: DistillConfig, pipe: StableAvatarPipeline, device="cpu") -> Path:
    """Write OUTPUT_DIR/teacher_samples/<window>.safetensors (noise, target, audio_source) for every cached
    window not done yet; returns the folder."""
    windows = PrecomputedDataset(config.precomputed_dir)
    folder = config.output_dir / SAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    settings = config.teacher_settings()
    guidance = config.guidance()
    teacher = pipe.transformer.to(device).eval()
    negative = negative_embeddings(pipe, config.negative_prompt, device)
    count = config.samples_per_window
    for index in tqdm(range(len(windows)), desc="teacher samples", unit="window"):
        path = folder / windows.files[index].name
        if path.is_file():
            continue
        encoded = windows[index]
        sources = audio_sources(index, count, len(windows))
        items = [
            EncodedBatch(**{**vars(encoded), "audio": (encoded if s == index else windows[s]).audio})
            for s in sources
        ]
        noise = sample_noise(config.seed, index, count, tuple(encoded.latent_mean.shape[1:]))
        target = teacher_samples(
            teacher,
            pipe.scheduler,
            EncodedBatch.stack(items).to(device),
            negative,
            noise.to(device),
            settings["num_inference_steps"],
            guidance,
        )
        staging = path.with_name(path.name + ".partial")
        save_file(
            {"noise": noise, "target": target.cpu(), "audio_source": torch.tensor(sources)}, str(staging)
        )
        staging.replace(path)
    return folder


class TeacherSampleDataset(Dataset):
    """(window features with the sample's audio, noise, teacher sample) for every teacher sample."""

    def __init__(self, windows_dir: Path, samples_dir: Path) -> None:
        self.windows = PrecomputedDataset(windows_dir)
        self.samples = []
        for index, window in enumerate(self.windows.files):
            path = Path(samples_dir) / window.name
            if not path.is_file():
                raise UserFacingError(f"no teacher samples for {window.name}; run the teacher stage first")
            stored = load_file(str(path))
            for k in range(stored["noise"].shape[0]):
                self.samples.append(
                    (index, int(stored["audio_source"][k]), stored["noise"][k], stored["target"][k])
                )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[EncodedBatch, torch.Tensor, torch.Tensor]:
        window, source, noise, target = self.samples[index]
        encoded = self.windows[window]
        if source != window:
            encoded.audio = self.windows[source].audio
        return encoded, noise[None], target[None]

    @staticmethod
    def collate(items: list) -> tuple[EncodedBatch, torch.Tensor, torch.Tensor]:
        return (
            EncodedBatch.stack([item[0] for item in items]),
            torch.cat([item[1] for item in items]),
            torch.cat([item[2] for item in items]),
        )


# ---- stage 2: the task -----------------------------------------------------------------------------------
class DistillationTask(TrainingTask):
    """A few-step student of a guided teacher (`regression` or `dmd`, see the module docstring)."""

    def __init__(self, config: DistillConfig, pipeline: StableAvatarPipeline | None = None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.micro_batch_size = config.batch_size
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            config.mixed_precision, torch.float32
        )

    def setup(self, accelerator: Accelerator) -> None:
        config = self.config
        self.accelerator = accelerator
        if self.pipeline is None:
            self.pipeline = load_teacher(config.teacher_dir)
        pipe, device = self.pipeline, accelerator.device
        for name in ("vae", "text_encoder", "image_encoder", "audio_encoder"):
            getattr(pipe, name).requires_grad_(False).eval()
        self.teacher = pipe.transformer.to(device).eval().requires_grad_(False)
        self.negative = negative_embeddings(pipe, config.negative_prompt, device)
        self.grid = GridDraw.weighted(
            student_grid(pipe.scheduler, config.student_steps), config.first_level_weight
        )
        self.schedule_sigmas = pipe.scheduler.__class__.from_config(pipe.scheduler.config).sigmas.float()
        student = copy.deepcopy(self.teacher)
        if config.lora_rank:
            student.add_adapter(lora_config(config.lora_rank, config.lora_alpha))
            for name, parameter in student.named_parameters():
                parameter.requires_grad_("lora_" in name or is_audio_parameter(name))
        else:
            student.requires_grad_(True)
        self.modules = {"student": student.train()}
        if config.method == "dmd":
            self.modules["critic"] = copy.deepcopy(self.teacher).requires_grad_(True).train()
        for module in self.modules.values():
            if config.gradient_checkpointing:
                module.enable_gradient_checkpointing()
        self.dataset = TeacherSampleDataset(config.precomputed_dir, config.output_dir / SAMPLES_DIR)
        self.batch_sampler = ResolutionBatchSampler([len(self.dataset)], config.batch_size, config.seed)

    def optimizers(self) -> list[OptimizerSpec]:
        if hasattr(self, "_specs"):
            return self._specs
        config = self.config
        self._specs = []
        for name in self.modules:  # the critic, when there is one, updates first (see losses)
            parameters = [p for p in self.modules[name].parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
            scheduler = get_scheduler(
                "constant_with_warmup", optimizer, num_warmup_steps=config.lr_warmup_steps
            )
            self._specs.append(OptimizerSpec(name, optimizer, scheduler, config.max_grad_norm))
        return self._specs

    def dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_sampler=self.batch_sampler, collate_fn=self.dataset.collate)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def ema_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.modules["student"].parameters() if p.requires_grad]

    def prepare_batch(self, batch, context: StepContext):
        encoded, noise, target = batch
        device = self.accelerator.device
        return encoded.to(device), noise.to(device), target.to(device)

    def losses(self, batch, context: StepContext):
        encoded, noise, target = batch
        student, generator = self.modules["student"], context.generator
        sigmas = self.grid.draw(noise.shape[0], generator).to(noise.device)
        regression = trajectory_regression_loss(student, encoded, noise, target, sigmas, self.dtype)
        if self.config.method == "regression":
            return [("student", regression)]
        critic_loss, student_loss = distribution_matching_losses(
            student,
            self.modules["critic"],
            self.teacher,
            encoded,
            noise,
            self.negative,
            self.config.guidance(),
            self.schedule_sigmas,
            generator,
            self.dtype,
        )
        return [
            ("critic", critic_loss),
            ("student", student_loss + self.config.dmd_regression_weight * regression),
        ]

    def student(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.modules["student"])

    def save_weights(self, folder: Path, step: int) -> None:
        """The student as inference loads it: `--transformer_path` file, or the `--lora_path` folder."""
        if self.config.lora_rank:
            save_lora(self.student(), folder / "lora")
        else:
            state = {k: v.detach().contiguous().cpu() for k, v in self.student().state_dict().items()}
            save_file(state, str(folder / WEIGHTS_NAME.format(step=step)))

    def validate(self, folder: Path, step: int) -> dict | None:
        if not self.config.validation_image:
            return None
        settings = student_settings(self.config)
        pipe = copy.copy(self.pipeline)
        pipe.transformer = self.student().eval()
        try:
            pipe(
                self.config.validation_image,
                self.config.validation_audio,
                prompt="The protagonist is talking",
                seed=self.config.seed,
                output_path=folder / f"step-{step}.mp4",
                progress=False,
                **settings,
            )
        finally:
            pipe.transformer.train()
        return None


# ---- stage 3: the student's folder ---------------------------------------------------------------------
def student_settings(config: DistillConfig, steps: int | None = None) -> dict:
    """The teacher's generation settings with the student's steps and no guidance (one forward a step)."""
    settings = config.teacher_settings()
    settings.update(
        num_inference_steps=steps or min(config.student_steps),
        text_guidance_scale=1.0,
        audio_guidance_scale=1.0,
    )
    return settings


def export_student(
    transformer: torch.nn.Module, teacher_dir: Path, output: Path, settings: dict, link: bool = True
) -> Path:
    """A model folder at `output`: the student `transformer` (LoRA fused), the teacher's other components
    (relative symbolic links with `link`, else copies) and `settings` as generation_settings.json."""
    teacher_dir = Path(teacher_dir)
    student = copy.deepcopy(transformer).eval()
    if getattr(student, "peft_config", None):
        student.fuse_lora()
        student.unload_lora()
    with atomic_directory(output) as staging:
        for entry in sorted(teacher_dir.iterdir()):
            # of the teacher's files only its component list: the rest (its training report) describes the teacher
            if entry.name == "transformer" or not entry.is_dir() and entry.name != "model_index.json":
                continue
            target = staging / entry.name
            if entry.is_dir() and link:
                os.symlink(os.path.relpath(entry.resolve(), Path(output).resolve()), target)
            elif entry.is_dir():
                shutil.copytree(entry, target)
            else:
                shutil.copy2(entry, target)
        student.save_pretrained(staging / "transformer", safe_serialization=True)
        save_recommended_settings(staging, settings)
        (staging / "README.md").write_text(
            f"# A {settings['num_inference_steps']}-step student of {teacher_dir.name}\n\n"
            "Distilled by `python -m wan.training.distill`: the transformer samples with one forward per step and "
            "no guidance (the teacher's is baked in). Solver: flow-matching Euler on this folder's scheduler "
            f"(`scheduler/`, shift {_shift(teacher_dir)}) with the steps of `generation_settings.json`; the other "
            f"components are the teacher's ({'linked' if link else 'copied'}).\n"
        )
    return Path(output)


def _shift(folder: Path) -> float | str:
    config = Path(folder) / "scheduler" / "scheduler_config.json"
    return json.loads(config.read_text()).get("shift", "?") if config.is_file() else "?"


# ---- the command ---------------------------------------------------------------------------------------
def run(
    config: DistillConfig, pipeline: StableAvatarPipeline | None = None, demo_clips: int = 0
) -> TrainingLoop:
    """Every stage (`demo_clips` > 0: first cache that many windows of the demo's synthetic data in
    `precomputed_dir`); returns the finished loop (its task holds the student)."""
    pipeline = pipeline or load_teacher(config.teacher_dir)
    if demo_clips:
        demo_windows(pipeline, config.precomputed_dir.parent, demo_clips, config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cache_teacher_samples(config, pipeline, device)
    loop = TrainingLoop(
        DistillationTask(config, pipeline),
        LoopConfig(
            output_dir=config.output_dir,
            max_train_steps=config.max_train_steps,
            mixed_precision=config.mixed_precision,
            max_grad_norm=config.max_grad_norm,
            checkpointing_steps=config.checkpointing_steps,
            checkpoints_total_limit=config.checkpoints_total_limit,
            resume_from_checkpoint=config.resume_from_checkpoint,
            validation_steps=config.validation_steps if config.validation_image else 0,
            seed=config.seed,
            report_to=config.report_to,
            tracker_config={"method": config.method, "lr": config.learning_rate, "seed": config.seed},
        ),
    )
    loop.train()
    if loop.accelerator.is_main_process:
        export_student(
            loop.task.student(), config.teacher_dir, config.output_dir / STUDENT_DIR, student_settings(config)
        )
        (config.output_dir / "distill_log.json").write_text(json.dumps({"history": loop.history}, indent=1))
    return loop


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wan.training.distill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--teacher", type=Path, required=True, help="the teacher's model folder")
    p.add_argument(
        "--precomputed_dir", type=Path, required=True, help="cached windows (wan.training.precompute)"
    )
    p.add_argument("--output_dir", type=Path, required=True, help="teacher samples, checkpoints, the student")
    p.add_argument(
        "--demo_clips",
        type=int,
        default=0,
        help="first write this many synthetic clips of the demo's training set (PRECOMPUTED_DIR/../data) and "
        "cache one window each in --precomputed_dir (the demo recipe; 0: the cache exists)",
    )
    p.add_argument("--method", choices=METHODS, default="regression")
    p.add_argument("--student_steps", type=int, nargs="+", default=[1, 2, 4], help="step counts to serve")
    p.add_argument("--teacher_steps", type=int, help="default: the teacher folder's generation settings")
    p.add_argument("--text_guidance", type=float, help="the teacher's (default: its folder's settings)")
    p.add_argument("--audio_guidance", type=float, help="the teacher's (default: its folder's settings)")
    p.add_argument(
        "--guidance", choices=sorted(GUIDANCE_RULES), default="published", help="the teacher's rule"
    )
    p.add_argument("--samples_per_window", type=int, default=4, help="teacher samples per cached window")
    p.add_argument("--first_level_weight", type=float, default=0.5, help="share of samples at noise level 1")
    p.add_argument("--train_batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--lr_warmup_steps", type=int, default=50)
    p.add_argument("--max_train_steps", type=int, default=600)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument(
        "--dmd_regression_weight", type=float, default=1.0, help="--method dmd: weight of regression"
    )
    p.add_argument(
        "--lora_rank", type=int, help="train a LoRA (plus the audio modules) instead of every weight"
    )
    p.add_argument("--lora_alpha", type=float, default=64.0)
    p.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--checkpointing_steps", type=int, default=200)
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", default="latest", help="'latest', checkpoint-N or a path")
    p.add_argument("--validation_steps", type=int, default=0)
    p.add_argument("--validation_reference_path", type=Path)
    p.add_argument("--validation_driven_audio_path", type=Path)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--report_to", choices=["tensorboard", "wandb", "none"], default="tensorboard")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = DistillConfig(
        teacher_dir=args.teacher,
        precomputed_dir=args.precomputed_dir,
        output_dir=args.output_dir,
        method=args.method,
        student_steps=tuple(args.student_steps),
        teacher_steps=args.teacher_steps,
        text_guidance=args.text_guidance,
        audio_guidance=args.audio_guidance,
        guidance_rule=args.guidance,
        samples_per_window=args.samples_per_window,
        first_level_weight=args.first_level_weight,
        batch_size=args.train_batch_size,
        learning_rate=args.learning_rate,
        lr_warmup_steps=args.lr_warmup_steps,
        max_train_steps=args.max_train_steps,
        max_grad_norm=args.max_grad_norm,
        dmd_regression_weight=args.dmd_regression_weight,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
        resume_from_checkpoint=args.resume_from_checkpoint,
        validation_steps=args.validation_steps,
        validation_image=args.validation_reference_path,
        validation_audio=args.validation_driven_audio_path,
        seed=args.seed,
        report_to=args.report_to,
    )
    run(config, demo_clips=args.demo_clips)
    print(f"wrote the student to {config.output_dir / STUDENT_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
