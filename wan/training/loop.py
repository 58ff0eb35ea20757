"""The training loop every task runs on: accelerate, resume, EMA, checkpoints, logging, validation, signals.

The loop knows nothing about models or losses; a *task* does. StableAvatar's flow matching
(`flow_matching.FlowMatchingTask`) and the demo VAE (`vae_trainer.VaeTask`) are tasks; a new training
method (distillation, a critic, ...) is a new task, never a copy of this loop.

How to write a task: subclass `TrainingTask` and fill in

    setup(accelerator)      load the models onto `accelerator.device`, freeze what does not train, and put every
                            module that trains (and so needs DDP/DeepSpeed wrapping) in `self.modules`
                            (name -> nn.Module). After `setup` the loop replaces each entry by its
                            accelerate-prepared wrapper: always call the models through `self.modules[name]`.
    optimizers()            one `OptimizerSpec` per optimizer: a name, the optimizer, an optional lr scheduler
                            (stepped once per optimizer update) and the gradient-clipping norm. A student and
                            a critic with their own optimizers are two specs.
    dataloader()            a torch DataLoader (the loop shards it over processes and skips the batches already
                            seen on resume), or None when the task draws its own batches (prepare_batch then
                            gets None). The loop calls `set_epoch(epoch)` before each pass.
    prepare_batch(batch, context)   dataset batch -> model inputs (encode, move to the device). Optional.
    losses(batch, context)  an iterable of (optimizer name, scalar loss). The loop backpropagates each loss,
                            clips and steps *that* optimizer before it asks for the next one, so a generator
                            that yields the critic's loss first and then computes the student's loss sees the
                            updated critic. Plain tasks return `[("main", loss)]`.
    save_weights(folder, step)      the inference-ready weights of a checkpoint (main process only; EMA
                            weights are swapped in while it runs).
    validate(folder, step)  optional: write validation outputs (main process), return tracker values/None.
    checkpoint_objects()    optional: extra stateful objects (with state_dict/load_state_dict) to save and
                            restore with each checkpoint, e.g. the task's own random generators.

`context` (`StepContext`) carries the optimizer step being computed, the micro-step within gradient
accumulation, the process index and `generator`: a torch.Generator seeded by (seed, step, micro-step,
process) only, so a resumed run draws exactly what an uninterrupted one would.

    loop = TrainingLoop(task, LoopConfig(output_dir=Path("runs/x"), max_train_steps=1000))
    history = loop.train()            # [(step, loss of the first optimizer), ...]

Checkpoints are `output_dir/checkpoint-N/` (accelerate state + the task's weights + `trainer_state.json`),
written under a temporary name and renamed when complete; `checkpoints_total_limit` keeps the newest N.
SIGINT/SIGTERM stop the run after the current step with a checkpoint; workers also stop when their
launcher dies (even by SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import pickle
import shutil
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..errors import UserFacingError
from ..loading.state_dict import check_safe_pickle, weights_error

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"


@dataclass
class LoopConfig:
    """What the loop itself needs; a task's own settings live in the task."""

    output_dir: Path
    max_train_steps: int | None = None
    num_train_epochs: int = 1000
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    max_grad_norm: float = 0.0  # DeepSpeed clips inside its engine: this value is written to its config
    checkpointing_steps: int = 2000
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # 'latest', checkpoint-N (in output_dir) or a path
    validation_steps: int = 0  # 0: never validate
    seed: int = 42
    use_ema: bool = False
    ema_decay: float = 0.9999
    report_to: str = "none"  # tensorboard, wandb or none
    project_name: str = "stableavatar"
    tracker_config: dict | None = None
    progress: bool = True


@dataclass
class OptimizerSpec:
    """One optimizer of a task, with its schedule and clipping norm (None: the loop's max_grad_norm)."""

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    max_grad_norm: float | None = None

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


@dataclass
class StepContext:
    """Where a loss is computed: optimizer step (0-based), micro-step, process, and the step's generator."""

    step: int
    micro_step: int
    process_index: int
    generator: torch.Generator
    accelerator: Accelerator


def step_generator(seed: int, step: int, micro_step: int, process: int) -> torch.Generator:
    """The generator of one micro-step: independent of everything but these four numbers."""
    state = np.random.SeedSequence([seed, step, micro_step, process]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class TrainingTask:
    """What a training method provides to `TrainingLoop` (see the module docstring)."""

    modules: dict[str, torch.nn.Module]
    micro_batch_size: int = 1  # per process, for DeepSpeed's batch arithmetic

    def setup(self, accelerator: Accelerator) -> None:
        raise NotImplementedError

    def optimizers(self) -> list[OptimizerSpec]:
        raise NotImplementedError

    def dataloader(self) -> torch.utils.data.DataLoader | None:
        return None

    def set_epoch(self, epoch: int) -> None:
        """Called before each pass over the data (the loop's epoch, restored on resume)."""

    def prepare_batch(self, batch, context: StepContext):
        return batch

    def losses(self, batch, context: StepContext) -> Iterable[tuple[str, torch.Tensor]]:
        raise NotImplementedError

    def ema_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters an EMA follows (default: those of the first optimizer)."""
        return self.optimizers()[0].parameters

    def save_weights(self, folder: Path, step: int) -> None:
        raise NotImplementedError

    def validate(self, folder: Path, step: int) -> dict | None:
        return None

    def checkpoint_objects(self) -> list:
        return []


def checkpoints_in(folder: Path) -> list[Path]:
    """The complete checkpoint-N folders of a run, oldest first."""
    found = [
        p for p in Path(folder).glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def resolve_checkpoint(choice: str, output_dir: Path) -> Path | None:
    """'latest' (None when the run has none yet), a checkpoint-N name in `output_dir`, or a path.

    A relative name is looked up in `output_dir` first (the run's own checkpoint-N), then as a path."""
    if choice == "latest":
        found = checkpoints_in(output_dir)
        return found[-1] if found else None
    path = Path(choice)
    for candidate in (Path(output_dir) / path, path):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise UserFacingError(
        f"checkpoint {choice} not found (looked in {output_dir} and .); use 'latest' or a checkpoint-N folder"
    )


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its launcher dies (torch's launcher starts workers in new
    sessions, so killing the launcher's process group would leave them running)."""
    if sys.platform.startswith("linux") and os.environ.get("LOCAL_RANK") is not None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:  # the launcher is already gone
                os.kill(os.getpid(), signal.SIGTERM)
        except OSError:
            pass


class TrainingLoop:
    """Runs a `TrainingTask` under accelerate. `history` holds (step, loss of the first optimizer) of the whole
    run, resumed parts included (it is saved in each checkpoint's trainer_state.json); `train()` returns the
    entries of the steps it ran."""

    def __init__(
        self, task: TrainingTask, config: LoopConfig, accelerator: Accelerator | None = None
    ) -> None:
        die_with_parent()
        self.task, self.config = task, config
        config.output_dir = Path(config.output_dir)
        config.output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator = accelerator or self._accelerator()
        set_seed(config.seed)
        self.history: list[tuple[int, float]] = []
        self.global_step = 0
        self.stop_requested = False
        task.setup(self.accelerator)
        self.specs = task.optimizers()
        self.ema = None
        if config.use_ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(task.ema_parameters(), decay=config.ema_decay)
        self._prepare()

    # ---- set-up -------------------------------------------------------------------------------------
    def _accelerator(self) -> Accelerator:
        config = self.config
        log_with = _tracker(config.report_to)
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"
        return Accelerator(
            # DeepSpeed brings its own CPU accelerator; forcing accelerate's CPU mode would silently drop it.
            cpu=not torch.cuda.is_available() and not deepspeed,
            # Without CUDA accelerate names no backend for DeepSpeed and then counts a single process (every
            # rank the main one); gloo makes it count the real world size.
            kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")]
            if deepspeed and not torch.cuda.is_available()
            else None,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=log_with,
            project_config=ProjectConfiguration(
                project_dir=str(config.output_dir), logging_dir=str(config.output_dir / "logs")
            ),
        )

    def _prepare(self) -> None:
        config, accelerator, task = self.config, self.accelerator, self.task
        dataloader = task.dataloader()
        if accelerator.state.deepspeed_plugin is not None:
            # Our batches come from a batch sampler, which DeepSpeed cannot read the batch size from; the
            # clipping norm is the run's (the config file's "auto" would otherwise become 1.0).
            world = accelerator.num_processes
            deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config
            deepspeed_config["train_micro_batch_size_per_gpu"] = task.micro_batch_size
            deepspeed_config["gradient_accumulation_steps"] = config.gradient_accumulation_steps
            deepspeed_config["train_batch_size"] = (
                task.micro_batch_size * config.gradient_accumulation_steps * world
            )
            deepspeed_config["gradient_clipping"] = config.max_grad_norm
        names = list(task.modules)
        objects = [task.modules[name] for name in names] + [spec.optimizer for spec in self.specs]
        if dataloader is not None:
            objects.append(dataloader)
        prepared = accelerator.prepare(*objects)
        prepared = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
        for index, name in enumerate(names):
            task.modules[name] = prepared[index]
        for index, spec in enumerate(self.specs):
            spec.optimizer = prepared[len(names) + index]
        self.dataloader = prepared[-1] if dataloader is not None else None
        for spec in self.specs:
            if spec.scheduler is not None:
                accelerator.register_for_checkpointing(spec.scheduler)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        for extra in task.checkpoint_objects():
            accelerator.register_for_checkpointing(extra)
        if self.dataloader is not None:
            self.updates_per_epoch = max(
                math.ceil(len(self.dataloader) / config.gradient_accumulation_steps), 1
            )
        else:
            self.updates_per_epoch = config.max_train_steps or 1
        self.max_train_steps = config.max_train_steps or config.num_train_epochs * self.updates_per_epoch
        if accelerator.is_main_process and accelerator.log_with and not accelerator.trackers:
            accelerator.init_trackers(
                config.project_name, config=config.tracker_config or {"seed": config.seed}
            )

    # ---- loop ---------------------------------------------------------------------------------------
    def train(self) -> list[tuple[int, float]]:
        config, accelerator = self.config, self.accelerator
        first_epoch, skip_batches = self._resume()
        resumed_entries = len(self.history)
        previous_handlers = self._catch_stop_signals()
        bar = tqdm(
            total=self.max_train_steps,
            initial=self.global_step,
            desc="training",
            unit="step",
            disable=not (config.progress and accelerator.is_local_main_process),
        )
        modules = list(self.task.modules.values())
        saved_step = self.global_step
        try:
            micro_step = 0
            for epoch in range(first_epoch, math.ceil(self.max_train_steps / self.updates_per_epoch) + 1):
                if self.global_step >= self.max_train_steps:
                    break
                self.task.set_epoch(epoch)
                for batch in self._batches(epoch, skip_batches):
                    skip_batches = 0
                    with accelerator.accumulate(*modules):
                        values = self._micro_step(batch, micro_step)
                    micro_step += 1
                    if not accelerator.sync_gradients:
                        continue
                    micro_step = 0
                    self.global_step += 1
                    self._after_update(values, bar)
                    stop = self._stop_everywhere()
                    if (
                        self.global_step % config.checkpointing_steps == 0
                        or self.global_step == self.max_train_steps
                        or stop
                    ):
                        self.save_checkpoint()
                        saved_step = self.global_step
                    if config.validation_steps and self.global_step % config.validation_steps == 0:
                        self.validate()
                    if self.global_step >= self.max_train_steps or stop:
                        break
                if self.stop_requested:
                    break
        finally:
            bar.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        if self.stop_requested:
            accelerator.print(f"stopped at step {saved_step}; resume with --resume_from_checkpoint latest")
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return self.history[resumed_entries:]

    def _batches(self, epoch: int, skip: int):
        if self.dataloader is None:
            return iter(lambda: None, 0)  # the task draws its own batches
        loader = self.dataloader
        if skip:
            loader = self.accelerator.skip_first_batches(loader, skip)
        # accelerate re-seeds the sampler and dataset with its own pass counter (0 after skip_first_batches)
        # on every iteration; the loop's epoch is what they must see.
        loader.set_epoch(epoch)
        return loader

    def _micro_step(self, batch, micro_step: int) -> dict[str, float]:
        accelerator, task = self.accelerator, self.task
        context = StepContext(
            self.global_step,
            micro_step,
            accelerator.process_index,
            step_generator(self.config.seed, self.global_step, micro_step, accelerator.process_index),
            accelerator,
        )
        specs = {spec.name: spec for spec in self.specs}
        values: dict[str, float] = {}
        with accelerator.autocast():
            batch = task.prepare_batch(batch, context)
        for name, loss in _autocast_iter(accelerator, task.losses(batch, context)):
            spec = specs[name]
            accelerator.backward(loss)
            norm = self.config.max_grad_norm if spec.max_grad_norm is None else spec.max_grad_norm
            if accelerator.sync_gradients and norm and norm > 0:
                grad_norm = accelerator.clip_grad_norm_(spec.parameters, norm)
                if grad_norm is not None:
                    values[f"grad_norm/{name}"] = float(grad_norm)
            spec.optimizer.step()
            if accelerator.sync_gradients and spec.scheduler is not None:
                spec.scheduler.step()
            spec.optimizer.zero_grad(set_to_none=True)
            values[f"loss/{name}"] = loss.detach()
        return values

    def _after_update(self, values: dict, bar: tqdm) -> None:
        accelerator = self.accelerator
        logged: dict[str, float] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                value = accelerator.reduce(value, reduction="mean").item()
            logged[key] = value
        for spec in self.specs:
            logged[f"lr/{spec.name}"] = spec.optimizer.param_groups[0]["lr"]
        first = f"loss/{self.specs[0].name}"
        if first in logged:
            self.history.append((self.global_step, logged[first]))
        if self.ema is not None:
            self.ema.step(self.task.ema_parameters())
        bar.update()
        if first in logged:
            bar.set_postfix(loss=f"{logged[first]:.4f}", lr=f"{logged[f'lr/{self.specs[0].name}']:.2e}")
        accelerator.log(logged, step=self.global_step)

    # ---- stopping -----------------------------------------------------------------------------------
    def _catch_stop_signals(self) -> dict:
        """SIGINT/SIGTERM: finish the step, checkpoint, stop. A second signal stops at once."""
        previous = {}

        def request_stop(signum, frame) -> None:
            if self.stop_requested:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            self.stop_requested = True

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                previous[signum] = signal.signal(signum, request_stop)
        return previous

    def _stop_everywhere(self) -> bool:
        """Whether any process was asked to stop (every process then stops at the same step)."""
        flag = float(self.stop_requested)
        if self.accelerator.num_processes > 1:
            tensor = torch.tensor([flag], device=self.accelerator.device)
            flag = self.accelerator.reduce(tensor, reduction="sum").item()
        self.stop_requested = flag > 0
        return self.stop_requested

    # ---- checkpoints --------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        return checkpoints_in(self.config.output_dir)

    def save_checkpoint(self) -> Path:
        """accelerate state (models, optimizers, schedulers, RNG, EMA, task objects) + the task's weights."""
        accelerator = self.accelerator
        final = self.config.output_dir / f"{CHECKPOINT_PREFIX}{self.global_step}"
        staging = self.config.output_dir / f".{final.name}.partial"
        if accelerator.is_main_process and staging.exists():
            shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            with self.ema_weights():
                self.task.save_weights(staging, self.global_step)
            state = {"global_step": self.global_step, "history": self.history}
            (staging / STATE_FILE).write_text(json.dumps(state))
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            limit = self.config.checkpoints_total_limit
            if limit is not None:
                for old in self.checkpoints()[:-limit]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def ema_weights(self):
        """Context manager: the EMA weights in the model while inside (no-op without EMA)."""
        return _EmaSwap(self.ema, self.task.ema_parameters() if self.ema is not None else [])

    def _resume(self) -> tuple[int, int]:
        """Load a checkpoint if asked; returns (epoch to start in, batches of it to skip)."""
        choice = self.config.resume_from_checkpoint
        if not choice:
            return 0, 0
        path = resolve_checkpoint(choice, self.config.output_dir)
        if path is None:
            self.accelerator.print(f"no checkpoint in {self.config.output_dir}; starting from scratch")
            return 0, 0
        # accelerate reads registered objects (custom_checkpoint_N.pkl) with weights_only=False: check them
        for pickled in sorted(path.glob("custom_checkpoint_*.pkl")):
            check_safe_pickle(pickled)
        try:
            self.accelerator.load_state(str(path))
        except pickle.UnpicklingError as error:  # its other files: weights_only=True refused one
            raise weights_error(path, error) from None
        state = json.loads((path / STATE_FILE).read_text())
        self.global_step = state["global_step"]
        self.history = [tuple(entry) for entry in state.get("history", [])]
        epoch, done = divmod(self.global_step, self.updates_per_epoch)
        if self.dataloader is None:
            return epoch, 0
        return epoch, done * self.config.gradient_accumulation_steps

    # ---- validation ---------------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.accelerator.is_main_process:
            return
        modules = list(self.task.modules.values())
        for module in modules:
            module.eval()
        try:
            with self.ema_weights():
                values = self.task.validate(self.config.output_dir / "validation", self.global_step)
        finally:
            for module in modules:
                module.train()
        if values:
            scalars = {k: v for k, v in values.items() if not isinstance(v, Path)}
            if scalars:
                self.accelerator.log(scalars, step=self.global_step)
            _log_videos(
                self.accelerator, {k: v for k, v in values.items() if isinstance(v, Path)}, self.global_step
            )


class _EmaSwap:
    def __init__(self, ema, parameters: list[torch.nn.Parameter]) -> None:
        self.ema, self.parameters = ema, parameters

    def __enter__(self) -> None:
        if self.ema is not None:
            self.ema.store(self.parameters)
            self.ema.copy_to(self.parameters)

    def __exit__(self, *exc) -> None:
        if self.ema is not None:
            self.ema.restore(self.parameters)


def _autocast_iter(accelerator: Accelerator, losses: Iterable):
    """Run each step of a (possibly lazy) loss iterable under accelerate's autocast."""
    iterator = iter(losses)
    while True:
        with accelerator.autocast():
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


def _log_videos(accelerator: Accelerator, videos: dict[str, Path], step: int) -> None:
    """Validation videos into the trackers: wandb gets the mp4, TensorBoard its middle frame."""
    for tracker in accelerator.trackers if videos else []:
        if tracker.name == "wandb":
            import wandb

            tracker.log({name: wandb.Video(str(path)) for name, path in videos.items()}, step=step)
        elif tracker.name == "tensorboard":
            for name, path in videos.items():
                frame = _middle_frame(path)
                if frame is not None:
                    tracker.writer.add_image(name, frame, step, dataformats="HWC")


def _middle_frame(path: Path) -> np.ndarray | None:
    import av

    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.FFmpegError, OSError):
        return None
    return frames[len(frames) // 2] if frames else None


def _tracker(report_to: str) -> str | None:
    """The accelerate tracker to log with, or None (tensorboard missing is not an error; wandb is)."""
    if report_to in (None, "none"):
        return None
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
        return "tensorboard"
    if report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserFacingError("--report_to wandb needs wandb (pip install wandb)") from None
        return "wandb"
    raise UserFacingError(f"unknown --report_to {report_to!r}; use tensorboard, wandb or none")
