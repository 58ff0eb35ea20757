"""Train a small Wan causal video VAE (`diffusers.AutoencoderKLWan`) as an autoencoder on talking-face clips.

    python -m wan.training.vae_trainer --data work/data/video_square_path.txt --size 64 \
        --output work/vae --steps 3000

A random VAE cannot reconstruct faces, so a small model of the released architecture (8x spatial and 4x
temporal compression, 16 latent channels, so the DiT's 36 input channels stay 16 + 4 + 16) is trained here
before the transformer. Samples are 1 + 4k consecutive frames (the first frame alone, then chunks of four,
as the causal encoder reads them); the loss is L1 on the pixels, extra L1 weight on the lips (the detail
lip sync lives in) and a small KL term on the posterior. Decoding for the loss is not clamped, so no pixel
loses its gradient. At the end the per-channel mean and std of the posterior means over the data are stored
in the VAE's config (`latents_mean`, `latents_std`), which is how the pipeline normalises latents.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKLWan
from PIL import Image
from tqdm.auto import tqdm

from ..cli import run_cli
from ..errors import UserFacingError
from .dataset import _sorted_frames, read_path_list
from .loop import LoopConfig, OptimizerSpec, StepContext, TrainingLoop, TrainingTask
from .synthetic import mouth_opening

# The demo VAE: 2.05 M parameters (the released one has 127 M); channels 16, 32, 32, 64 from full
# resolution down to the latent grid.
SMALL_VAE_CONFIG: dict = {
    "base_dim": 16,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}


@dataclass
class VaeTrainConfig:
    """A VAE training run. Step i draws `samples[i % len(samples)]` = (batch size, frames), frames 1 + 4k:
    short clips for the first chunk, longer ones so the causal cache between chunks is learnt too."""

    list_file: Path
    output_dir: Path
    size: int = 64
    samples: tuple[tuple[int, int], ...] = ((4, 5), (2, 9))
    max_train_steps: int = 3000
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-4
    warmup_steps: int = 100
    lip_weight: float = 8.0
    kl_weight: float = 1e-5
    max_grad_norm: float = 1.0
    max_clips: int | None = None
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 250
    statistics_samples: int = 64
    vae_config: dict = field(default_factory=lambda: dict(SMALL_VAE_CONFIG))
    init_from: Path | None = None  # a saved VAE folder to continue from (a second stage with a new schedule)
    # Train only the decoder (with init_from): the latents, and so their statistics and everything already
    # encoded with them, stay exactly as they were.
    decoder_only: bool = False
    # False: decode the posterior mean (a plain autoencoder). Posterior noise (std 0.1 against a spread of 0.7
    # after the earlier demo runs) drowned the small latent changes an opening mouth makes.
    sample_posterior: bool = True
    # Chance that a clip's first frame comes from another clip. The causal decoder otherwise learns to copy
    # later frames from its cache of the first one and ignores their own latents, mouth included (swapping
    # or freezing the latents of later chunks left the decoded mouth unchanged).
    foreign_first: float = 0.0


class ClipFrames:
    """Every frame (and lip mask) of the clips in a path list, resized to `size` and kept in memory as uint8."""

    def __init__(
        self, list_file: str | Path, size: int, max_clips: int | None = None, first_clip: int = 0
    ) -> None:
        folders = read_path_list(list_file)[first_clip:][:max_clips]
        if not folders:
            raise UserFacingError(f"no clips listed in {list_file}")
        self.clips: list[tuple[np.ndarray, np.ndarray]] = []
        for folder in tqdm(folders, desc="loading frames", unit="clip"):
            frames = _sorted_frames(folder / "images")
            pixels = np.stack([_load(path, size, "RGB") for path in frames])
            lips = np.stack(
                [
                    _load(folder / "lip_masks" / path.name, size, "L")
                    if (folder / "lip_masks" / path.name).is_file()
                    else np.zeros((size, size), np.uint8)
                    for path in frames
                ]
            )
            self.clips.append((pixels, lips))

    def sample(
        self, rng: np.random.Generator, batch_size: int, num_frames: int, foreign_first: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, 3, T, H, W]` pixels in [-1, 1] and `[B, 1, T, H, W]` lip masks in [0, 1] of random spans.

        With probability `foreign_first` a span of more than one frame starts with a frame of another clip
        (another identity), so nothing after the first frame can be copied from it."""
        videos, masks = [], []
        for _ in range(batch_size):
            pixels, lips = self.clips[int(rng.integers(len(self.clips)))]
            start = int(rng.integers(0, len(pixels) - num_frames + 1))
            video, mask = pixels[start : start + num_frames], lips[start : start + num_frames]
            if num_frames > 1 and foreign_first > 0 and rng.random() < foreign_first:
                other_pixels, other_lips = self.clips[int(rng.integers(len(self.clips)))]
                frame = int(rng.integers(len(other_pixels)))
                video = np.concatenate([other_pixels[frame : frame + 1], video[1:]])
                mask = np.concatenate([other_lips[frame : frame + 1], mask[1:]])
            videos.append(video)
            masks.append(mask)
        video = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        lip = torch.from_numpy(np.stack(masks)).unsqueeze(1).float() / 255.0
        return video, lip


def _load(path: Path, size: int, mode: str) -> np.ndarray:
    image = Image.open(path).convert(mode)
    resample = Image.Resampling.BICUBIC if mode == "RGB" else Image.Resampling.BILINEAR
    return np.asarray(image.resize((size, size), resample))


def decode_unclamped(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode` without the final clamp (so out-of-range pixels still get gradients), with gradients."""
    vae.clear_cache()
    hidden = vae.post_quant_conv(z)
    pieces = []
    for index in range(z.shape[2]):
        vae._conv_idx = [0]
        pieces.append(
            vae.decoder(
                hidden[:, :, index : index + 1],
                feat_cache=vae._feat_map,
                feat_idx=vae._conv_idx,
                first_chunk=index == 0,
            )
        )
    vae.clear_cache()
    return torch.cat(pieces, dim=2)


def vae_loss(
    vae: AutoencoderKLWan,
    video: torch.Tensor,
    lips: torch.Tensor,
    config: VaeTrainConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction of a posterior sample: L1 + lip-weighted L1 + KL. Returns the loss and its parts."""
    posterior = vae.encode(video).latent_dist
    z = posterior.mean
    if config.sample_posterior:
        z = z + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(z.device)
    reconstruction = decode_unclamped(vae, z)
    error = (reconstruction - video).abs()
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
    loss = (error * (1.0 + config.lip_weight * lips)).mean() + config.kl_weight * kl
    with torch.no_grad():
        lip_l1 = (error * lips).sum() / (lips.sum() * video.shape[1]).clamp(min=1.0)
        mse = torch.nn.functional.mse_loss(reconstruction.clamp(-1, 1), video).item()
    psnr = -10 * math.log10(max(mse / 4.0, 1e-12))  # pixels span 2, so peak^2 = 4
    return loss, {"l1": error.mean().item(), "lip_l1": lip_l1.item(), "kl": kl.item(), "psnr": psnr}


def _learning_rate(config: VaeTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay from `learning_rate` to `final_learning_rate`."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.max_train_steps - config.warmup_steps, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.final_learning_rate + (config.learning_rate - config.final_learning_rate) * cosine


@torch.no_grad()
def latent_statistics(
    vae: AutoencoderKLWan, frames: ClipFrames, rng: np.random.Generator, samples: int, num_frames: int
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means of `samples` random spans."""
    means = []
    for _ in range(samples):
        video, _ = frames.sample(rng, 1, num_frames)
        means.append(vae.encode(video).latent_dist.mean.transpose(0, 1).flatten(1))
    stacked = torch.cat(means, dim=1)
    return stacked.mean(dim=1).tolist(), stacked.std(dim=1).clamp(min=1e-4).tolist()


@torch.no_grad()
def reconstruct_frames(vae: AutoencoderKLWan, frames: np.ndarray) -> np.ndarray:
    """`[T, H, W, 3]` uint8 frames encoded (posterior mean) and decoded again: `[T', H, W, 3]` floats in
    [0, 1], T' = 1 + 4 * ((T - 1) // 4) (the whole latent frames)."""
    count = 1 + (len(frames) - 1) // 4 * 4
    video = torch.from_numpy(frames[:count][None]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    video = video.to(getattr(vae, "dtype", torch.float32))  # a pipeline loaded in bfloat16 has a bfloat16 VAE
    reconstruction = vae.decode(vae.encode(video).latent_dist.mode()).sample.float().clamp(-1.0, 1.0)
    return ((reconstruction[0, :, :count].permute(1, 2, 3, 0) + 1.0) / 2.0).numpy()


@torch.no_grad()
def mouth_reconstruction_correlation(
    vae: AutoencoderKLWan, frames: ClipFrames, num_frames: int = 33
) -> list[float]:
    """Per clip: Pearson correlation, over its first `num_frames` frames, between the mouth's darkness in the
    frames and in the VAE's reconstruction of them. The mouth is the box around every lip-mask pixel of the
    span; darkness is 1 - mean luminance there (an open mouth is dark). Near 1 when the VAE keeps the mouth."""
    correlations = []
    for pixels, lips in frames.clips:
        ys, xs = np.nonzero(lips[:num_frames].max(axis=0))
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        decoded = mouth_opening(reconstruct_frames(vae, pixels[:num_frames]), box)
        drawn = mouth_opening(pixels[: len(decoded)], box)
        correlations.append(float(np.corrcoef(drawn, decoded)[0, 1]))
    return correlations


class _ExactSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Learning rate `function(step)` exactly (LambdaLR would multiply a ratio back by the base rate)."""

    def __init__(self, optimizer: torch.optim.Optimizer, function) -> None:
        self.function = function
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [self.function(self.last_epoch) for _ in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k != "function"}


class _RunState:
    """What a VAE run carries between steps beyond the model and optimizer (saved with each checkpoint)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict] = []
        self.seconds = 0.0
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.seconds + time.monotonic() - self.started

    def state_dict(self) -> dict:
        return {
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": self.generator.get_state(),
            "seconds": self.elapsed(),
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        self.generator.set_state(state["torch_rng"])
        self.history, self.seconds = json.loads(state["history"]), state["seconds"]
        self.started = time.monotonic()


class VaeTask(TrainingTask):
    """The autoencoder objective of `vae_loss` as a task of the generic training loop: it draws its own
    batches (`samples`, round robin) from `ClipFrames` with a generator that is saved with each checkpoint."""

    def __init__(self, config: VaeTrainConfig, frames: ClipFrames | None = None) -> None:
        if any((count - 1) % 4 for _, count in config.samples):
            raise UserFacingError(f"frames per sample must be 1 + 4k, got {config.samples}")
        if config.decoder_only and config.init_from is None:
            raise UserFacingError("decoder_only training continues a saved VAE: set init_from")
        self.config = config
        self.frames = frames
        self.state = _RunState(config.seed)

    def setup(self, accelerator: Accelerator) -> None:
        config = self.config
        self.device = accelerator.device
        torch.manual_seed(config.seed)
        self.frames = self.frames or ClipFrames(config.list_file, config.size, config.max_clips)
        if config.init_from is not None:
            vae = AutoencoderKLWan.from_pretrained(config.init_from).train().requires_grad_(True)
            if config.decoder_only:
                vae.encoder.requires_grad_(False)
                vae.quant_conv.requires_grad_(False)
        else:
            vae = AutoencoderKLWan(**config.vae_config).train()
            # Start nearly deterministic (posterior std e^-5): unit noise would drown the signal.
            with torch.no_grad():
                vae.quant_conv.weight[vae.config.z_dim :] = 0.0
                vae.quant_conv.bias[vae.config.z_dim :] = -10.0
        self.vae = vae.to(self.device)
        self.modules = {"vae": self.vae}
        trainable = [parameter for parameter in vae.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=1e-4)
        schedule = _ExactSchedule(optimizer, lambda step: _learning_rate(config, step))
        self.specs = [OptimizerSpec("vae", optimizer, schedule, config.max_grad_norm)]

    def optimizers(self) -> list[OptimizerSpec]:
        return self.specs

    def checkpoint_objects(self) -> list:
        return [self.state]

    def prepare_batch(self, batch, context: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, num_frames = self.config.samples[context.step % len(self.config.samples)]
        video, lips = self.frames.sample(self.state.rng, batch_size, num_frames, self.config.foreign_first)
        return video.to(self.device), lips.to(self.device)

    def losses(self, batch, context: StepContext):
        video, lips = batch
        loss, parts = vae_loss(self.modules["vae"], video, lips, self.config, self.state.generator)
        step = context.step
        if step % self.config.log_every == 0 or step == self.config.max_train_steps - 1:
            self.state.history.append({"step": step + 1, "loss": loss.item(), **parts})
        return [("vae", loss)]

    def save_weights(self, folder: Path, step: int) -> None:
        pass  # the accelerate state holds the model; the finished VAE is saved by `train_vae`


def train_vae(
    config: VaeTrainConfig, frames: ClipFrames | None = None
) -> tuple[AutoencoderKLWan, list[dict]]:
    """Train from a seeded random initialisation (or `init_from`) on the generic loop; an interrupted run
    continues from its last checkpoint. Saves the VAE (with latent statistics) to `output_dir`."""
    task = VaeTask(config, frames)
    loop = TrainingLoop(
        task,
        LoopConfig(
            output_dir=config.output_dir,
            max_train_steps=config.max_train_steps,
            max_grad_norm=config.max_grad_norm,
            checkpointing_steps=config.checkpoint_every,
            checkpoints_total_limit=1,
            resume_from_checkpoint="latest",
            seed=config.seed,
            project_name="vae",
        ),
    )
    loop.train()
    vae = loop.accelerator.unwrap_model(task.modules["vae"]).cpu()
    vae.eval().requires_grad_(False)
    if not config.decoder_only:
        mean, std = latent_statistics(
            vae, task.frames, np.random.default_rng(config.seed + 1), config.statistics_samples, 9
        )
        vae.register_to_config(latents_mean=mean, latents_std=std)
    vae.save_pretrained(config.output_dir)
    for checkpoint in loop.checkpoints():
        shutil.rmtree(checkpoint)
    summary = {
        "seconds": task.state.elapsed(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "history": task.state.history,
    }
    (config.output_dir / "training_log.json").write_text(json.dumps(summary, indent=1))
    return vae, task.state.history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wan.training.vae_trainer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="path list of clip folders (one per line)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the trained VAE")
    parser.add_argument("--size", type=int, default=64, help="square training size (multiple of 8)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_clips", type=int, default=None, help="use only the first N clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = VaeTrainConfig(
        args.data,
        args.output,
        size=args.size,
        max_train_steps=args.steps,
        learning_rate=args.learning_rate,
        max_clips=args.max_clips,
        seed=args.seed,
    )
    _, history = train_vae(config)
    print(f"wrote {args.output} (last PSNR {history[-1]['psnr']:.1f} dB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
