"""The demo model: a small StableAvatar of the released architecture, trained from scratch on synthetic faces.

    python -m wan.training.demo --work_dir outputs/demo_training --output checkpoints/demo

It knows only the cartoon faces of `wan.training.synthetic`, so from any reference image (a real photo
included) it draws a cartoon face of that kind; what it shows is the whole program working, with lips that
follow the audio. One seed (`--seed`, default 1) fixes the data and every initialisation. Stages, each
skipped when its output already exists (so an interrupted run continues where it stopped):

  data        synthetic close-up clips (4 s, 128x128; clip i has seed seed * 100003 + i) in talking_face_data layout
  vae         AutoencoderKLWan (16 latent channels, 8x spatial, 4x temporal) trained as an autoencoder at 64x64,
              in six runs (`VAE_RUNS`), each continuing the last
  precompute  the frozen encoders' outputs for windows of 33 frames (wan.training.encode.EncodedBatch files)
  dit         the transformer (with the audio adapter) trained by wan.training.trainer on those features
  assemble    StableAvatarPipeline.save_pretrained(--output), float32 safetensors

Text, image and audio encoders stay random (seeded) at small size: random wav2vec2 features still carry the
loudness (a linear probe on them predicts log-loudness with correlation 0.9), which is what the mouth follows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
from tqdm.auto import tqdm

from ..cli import atomic_directory, run_cli
from ..generation_settings import save_recommended_settings
from ..models import STABLEAVATAR_1_3B, StableAvatarTransformer3DModel
from ..pipeline.conditioning import DEFAULT_NEGATIVE_PROMPT
from ..pipeline.pipeline import StableAvatarPipeline
from ..pipeline.tiny import build_small_encoders
from .dataset import TalkingFaceDataset, collate
from .encode import encode_batch
from .objective import ObjectiveConfig
from .synthetic import SENTENCES, write_dataset
from .trainer import TrainConfig, Trainer
from .vae_trainer import VaeTrainConfig, train_vae

# ---- the demo model and how it generates ----------------------------------------------------------------
DEMO_SIZE = 64  # output width and height
DEMO_CLIP_FRAMES = 33  # video frames per window (9 latent frames), as trained
DEMO_OVERLAP = 3  # latent frames shared by neighbouring windows
DEMO_STEPS = 5  # Euler steps: the cheapest point of benchmarks/speed_quality_curve.py no worse than 50
DEMO_TEXT_GUIDANCE = 1.0  # the prompt means nothing to the demo model (it trained on random prompts)
DEMO_AUDIO_GUIDANCE = 2.0
DEMO_SCHEDULER_SHIFT = 3.0  # a 8x8 latent grid loses its structure at lower noise than 64x64 does
DEMO_SEED = 1
# Faces drawn 1.6x the synthetic default (a close-up): the open mouth is about 10x12 pixels at 64x64, two
# latent cells wide, where at 1.0 it is 6x7 pixels inside one cell.
DEMO_FACE_SCALE = 1.6

# Width 128 (2 heads of 64), 6 blocks, the audio adapter at the DiT width; 36 input channels as released.
# Audio windows without padding: frame-local audio attention sees a latent frame's wav2vec2 tokens as an
# unordered set, so the released padding of 4 (17 tokens, 8.5 video frames around a latent frame's 4) blurs
# which frames are loud. The synthetic mouths follow the loudness of their own frame exactly; a mouth opening
# by its window's mean loudness reaches a lip sync of 0.59 with padding 4 and 0.73 with 0
# (`benchmarks.lipsync_eval.pooled_audio_ceiling`); the demo DiT measured 0.55 and 0.68 (docs/demo-model-next.md).
DEMO_TRANSFORMER: dict = {
    **STABLEAVATAR_1_3B,
    "num_attention_heads": 2,
    "attention_head_dim": 64,
    "text_dim": 64,
    "ffn_dim": 512,
    "num_layers": 6,
    "image_dim": 64,
    "added_kv_proj_dim": 128,
    "audio_proj_dims": (128,),
    "audio_adapter_heads": 2,
    "audio_window_padding": 0,
}

# The VAE trains in six runs, each continuing the last with a new schedule (docs/demo-model-next.md has
# the measurements behind each). All are plain autoencoders (posterior mean, no KL: posterior noise was as
# large as the change an opening mouth makes) with lips x10. A: single frames, 16 identities a step (how
# many identities a step shows is what limits learning). B: frames alternating with clips. C: clips only,
# up to the 33-frame windows. D, E, F: a clip's first frame is half the time another identity's, which stops
# the causal decoder from copying later frames out of its cache of the first and makes it decode their own
# latents, mouth included. `steps` is a fraction of --vae_steps; `seed_offset` is added to --seed;
# `max_clips` (else --vae_clips) is how many clips a run draws from.
_PLAIN = {"kl_weight": 0.0, "sample_posterior": False, "lip_weight": 10.0, "warmup_steps": 50}
_CLIPS = ((4, 5), (2, 9), (1, 17), (1, 33))
VAE_RUNS: tuple[dict, ...] = (
    {
        **_PLAIN,
        "steps": 0.5,
        "seed_offset": 0,
        "samples": ((16, 1),),
        "learning_rate": 1e-3,
        "final_learning_rate": 1e-4,
    },
    {
        **_PLAIN,
        "steps": 0.4,
        "seed_offset": 1,
        "samples": ((16, 1), (4, 5), (16, 1), (2, 9), (16, 1), (1, 33)),
        "learning_rate": 5e-4,
        "final_learning_rate": 2e-5,
    },
    {
        **_PLAIN,
        "steps": 0.4,
        "seed_offset": 2,
        "samples": _CLIPS,
        "learning_rate": 3e-4,
        "final_learning_rate": 2e-5,
    },
    {
        **_PLAIN,
        "steps": 0.2,
        "seed_offset": -1,
        "samples": _CLIPS[:3],
        "learning_rate": 3e-4,
        "final_learning_rate": 2e-5,
        "foreign_first": 0.5,
        "max_clips": 590,
    },
    {
        **_PLAIN,
        "steps": 0.6,
        "seed_offset": 3,
        "samples": _CLIPS,
        "learning_rate": 4e-4,
        "final_learning_rate": 2e-5,
        "foreign_first": 0.5,
        "max_clips": 590,
    },
    {
        **_PLAIN,
        "steps": 0.6,
        "seed_offset": 4,
        "samples": _CLIPS,
        "learning_rate": 2e-4,
        "final_learning_rate": 1e-5,
        "foreign_first": 0.5,
        "max_clips": 590,
    },
)

# Prompts drawn at random for the training samples, so the model learns that the text carries nothing
# (any prompt, and the Chinese default negative prompt of guidance, then give the same video).
TRAINING_PROMPTS = (
    "",
    "The protagonist is talking",
    "The protagonist is speaking.",
    "The protagonist is singing",
    "A person speaks to the camera.",
    "A cartoon face talks.",
    DEFAULT_NEGATIVE_PROMPT,
    *SENTENCES,
)


def demo_generation_settings() -> dict:
    """Keyword arguments of `StableAvatarPipeline.__call__` the demo model was made for."""
    return {
        "height": DEMO_SIZE,
        "width": DEMO_SIZE,
        "num_inference_steps": DEMO_STEPS,
        "text_guidance_scale": DEMO_TEXT_GUIDANCE,
        "audio_guidance_scale": DEMO_AUDIO_GUIDANCE,
        "clip_length": DEMO_CLIP_FRAMES,
        "overlap": DEMO_OVERLAP,
    }


def build_encoders(seed: int) -> dict:
    """Tokenizer, umT5, CLIP vision tower and wav2vec2 at small size with random (seeded) weights."""
    torch.manual_seed(seed)
    return build_small_encoders(
        DEMO_TRANSFORMER["text_dim"],
        DEMO_TRANSFORMER["image_dim"],
        text_kv=16,
        text_ffn=128,
        text_layers=2,
        image_size=56,
        image_ffn=128,
    )


def build_transformer(seed: int) -> StableAvatarTransformer3DModel:
    """The demo transformer, seeded; the audio projections start small instead of zero (no base model to keep)."""
    torch.manual_seed(seed)
    transformer = StableAvatarTransformer3DModel(**DEMO_TRANSFORMER)
    for block in transformer.blocks:
        torch.nn.init.normal_(block.attn2.to_k_audio.weight, std=0.02)
        torch.nn.init.normal_(block.attn2.to_v_audio.weight, std=0.02)
    return transformer


def build_pipeline(
    vae: AutoencoderKLWan, transformer: StableAvatarTransformer3DModel, seed: int
) -> StableAvatarPipeline:
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=DEMO_SCHEDULER_SHIFT)
    return StableAvatarPipeline(
        vae=vae.eval(), transformer=transformer, scheduler=scheduler, **build_encoders(seed)
    )


# ---- stages -------------------------------------------------------------------------------------------
def make_data(folder: Path, num_clips: int, seconds: float, seed: int) -> Path:
    list_file = folder / "video_square_path.txt"
    if not list_file.is_file():
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        write_dataset(
            staging,
            num_clips=num_clips,
            seconds=seconds,
            size=(128, 128),
            seed=seed,
            face_scale=DEMO_FACE_SCALE,
        )
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        # the list holds absolute paths of the staging folder: point it at the final one
        clips = sorted((folder / "speech").iterdir())
        list_file.write_text("".join(f"{clip.resolve()}\n" for clip in clips))
    return list_file


def precompute_windows(
    pipe: StableAvatarPipeline, list_file: Path, output: Path, samples_per_clip: int, seed: int
) -> int:
    """`samples_per_clip` windows of `DEMO_CLIP_FRAMES` frames per clip, each with a random training prompt.

    Each window's audio runs 3 frames past its last video frame: the sampler gives a window of L latent
    frames the audio of 4L video frames (`window_audio_span`) while the window decodes to 4(L-1)+1, so
    training on the same span keeps the audio-to-frame alignment identical at inference.
    """
    output.mkdir(parents=True, exist_ok=True)
    frames = DEMO_CLIP_FRAMES
    dataset = TalkingFaceDataset(list_file, DEMO_SIZE, DEMO_SIZE, frames + 3, seed=seed)
    rng = np.random.default_rng(seed)
    count = 0
    with tqdm(total=samples_per_clip * len(dataset), desc="caching features", unit="sample") as bar:
        for round_index in range(samples_per_clip):
            dataset.set_epoch(round_index)
            for index in range(len(dataset)):
                prompt = TRAINING_PROMPTS[int(rng.integers(len(TRAINING_PROMPTS)))]
                path = output / f"{index:06d}_{round_index:03d}.safetensors"
                if not path.is_file():
                    item = dataset[index]
                    item["pixel_values"] = item["pixel_values"][:frames]
                    item["face_masks"] = item["face_masks"][:, :frames]
                    item["lip_masks"] = item["lip_masks"][:, :frames]
                    item["prompt"] = prompt
                    encode_batch(pipe, collate([item])).save(path)
                count += 1
                bar.update()
    return count


def train_transformer(
    pipe: StableAvatarPipeline, cache: Path, run_dir: Path, steps: int, seed: int
) -> Trainer:
    config = TrainConfig(
        output_dir=run_dir,
        data=[],
        precomputed_dir=cache,
        num_frames=DEMO_CLIP_FRAMES,
        batch_size=8,
        max_train_steps=steps,
        learning_rate=5e-4,
        lr_scheduler="cosine",
        lr_warmup_steps=200,
        adam_weight_decay=0.01,
        max_grad_norm=1.0,
        checkpointing_steps=500,
        checkpoints_total_limit=1,
        resume_from_checkpoint="latest",
        seed=seed,
        trainable_patterns=("",),  # from scratch: every parameter trains
        objective=ObjectiveConfig(
            mask_probabilities=(0.6, 0.1, 0.3),
            motion_weight=0.25,
            motion_axis="frames",
            audio_dropout=0.1,
            clip_level_audio=0.1,
        ),
        use_ema=True,
        ema_decay=0.999,
        report_to="none",
    )
    # The demo scheduler's shift, for the noise levels training draws as well as for sampling.
    sigmas = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=DEMO_SCHEDULER_SHIFT
    ).sigmas.float()
    trainer = Trainer(config, pipe, schedule_sigmas=sigmas)
    trainer.train()
    trainer.ema.copy_to(trainer.trainable)
    return trainer


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    work, seed = args.work_dir, args.seed
    report_path = work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"seed": seed}
    stages = ("data", "vae", "precompute", "dit", "assemble")
    wanted = stages if args.stage == "all" else (args.stage,)

    def timed(name: str, function):
        started = time.monotonic()
        result = function()
        if name in wanted:
            report.setdefault("seconds", {})[name] = (
                report.get("seconds", {}).get(name, 0.0) + time.monotonic() - started
            )
            work.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(report, indent=1))
        return result

    list_file = work / "data" / "video_square_path.txt"
    if "data" in wanted:
        timed("data", lambda: make_data(work / "data", args.num_clips, args.clip_seconds, seed))
    vae_dir = work / "vae"
    if "vae" in wanted and not (vae_dir / "config.json").is_file():
        previous = None
        for index, run_settings in enumerate(VAE_RUNS):
            folder = vae_dir if index == len(VAE_RUNS) - 1 else work / f"vae_run{index + 1}"
            if not (folder / "config.json").is_file():
                options = {"max_clips": args.vae_clips, **run_settings}
                steps = int(args.vae_steps * options.pop("steps"))
                run_seed = seed + options.pop("seed_offset")
                config = VaeTrainConfig(
                    list_file,
                    folder,
                    size=DEMO_SIZE,
                    max_train_steps=steps,
                    seed=run_seed,
                    init_from=previous,
                    **options,
                )
                timed("vae", lambda config=config: train_vae(config))
            previous = folder
    if (vae_dir / "config.json").is_file():  # the runs' own clocks, so a resumed run counts every part once
        folders = [work / f"vae_run{index + 1}" for index in range(len(VAE_RUNS) - 1)] + [vae_dir]
        logs = [folder / "training_log.json" for folder in folders]
        report.setdefault("seconds", {})["vae"] = sum(
            json.loads(log.read_text())["seconds"] for log in logs if log.is_file()
        )
    if not any(stage in wanted for stage in ("precompute", "dit", "assemble")):
        return
    vae = AutoencoderKLWan.from_pretrained(vae_dir)
    pipe = build_pipeline(vae, build_transformer(seed), seed)
    cache = work / "cache"
    if "precompute" in wanted:
        timed("precompute", lambda: precompute_windows(pipe, list_file, cache, args.samples_per_clip, seed))
    weights = work / "transformer"
    if "dit" in wanted and not (weights / "config.json").is_file():
        trainer = timed("dit", lambda: train_transformer(pipe, cache, work / "dit_run", args.dit_steps, seed))
        report["dit_loss"] = trainer.history[-50:]
        report_path.write_text(json.dumps(report, indent=1))
        pipe.transformer.eval().requires_grad_(False)
        pipe.transformer.save_pretrained(weights)
    if "assemble" in wanted:
        pipe.transformer = StableAvatarTransformer3DModel.from_pretrained(weights).eval()
        pipe.register_modules(transformer=pipe.transformer)

        def assemble() -> None:
            with atomic_directory(args.output) as staging:
                pipe.save_pretrained(staging, safe_serialization=True)
                save_recommended_settings(staging, demo_generation_settings())
                (staging / "training_report.json").write_text(json.dumps(report, indent=1))
                (staging / "README.md").write_text(model_card(report, args))

        timed("assemble", assemble)
        print(f"wrote the demo model to {args.output}")


def model_card(report: dict, args: argparse.Namespace) -> str:
    """The demo folder's README: what it is, how it was made, how long that took."""
    seconds = report.get("seconds", {})
    times = ", ".join(f"{stage} {value / 60:.0f} min" for stage, value in seconds.items())
    total = sum(seconds.values()) / 3600
    return f"""# The demo model (a toy)

A small StableAvatar of the released architecture (Wan DiT with the audio adapter and frame-local audio
attention, a causal Wan VAE, umT5, CLIP vision and wav2vec2 encoders), trained from scratch on the CPU on
synthetic cartoon faces by this project's own code. It draws close-up cartoon faces of that kind at 64x64,
whatever the reference image; it exists so the program can be seen working without the 20 GB release. For real
results, download the released weights (the repository README, "Using the released model").

Trained with seed {args.seed} by

    bash scripts/train_demo_model.sh

(`python -m wan.training.demo --seed {args.seed} --num_clips {args.num_clips} --clip_seconds {args.clip_seconds:g} \
--vae_steps {args.vae_steps} --samples_per_clip {args.samples_per_clip} --dit_steps {args.dit_steps}`) on 2 CPU cores,
which took {total:.1f} hours ({times}). The text, image and audio encoders are random (seeded) and were not
trained. `training_report.json` holds the times and the last losses; `generation_settings.json` the size,
steps, guidance and windows it was made for (inference.py and the app start from them). How well its lips
follow the audio: `python -m benchmarks.lipsync_eval` (numbers in the repository README).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wan.training.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--work_dir",
        type=Path,
        default=Path("outputs/demo_training"),
        help="data, caches, runs (git-ignored)",
    )
    parser.add_argument("--output", type=Path, default=Path("checkpoints/demo"), help="the pipeline folder")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="data and initialisation seed")
    parser.add_argument(
        "--stage", choices=("all", "data", "vae", "precompute", "dit", "assemble"), default="all"
    )
    parser.add_argument("--num_clips", type=int, default=600, help="synthetic identities (one clip each)")
    parser.add_argument("--clip_seconds", type=float, default=4.0)
    parser.add_argument("--vae_steps", type=int, default=3000, help="steps of a full VAE run (see VAE_RUNS)")
    parser.add_argument("--vae_clips", type=int, default=300, help="clips the VAE trains on")
    parser.add_argument("--samples_per_clip", type=int, default=2, help="cached windows per clip")
    parser.add_argument("--dit_steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
