"""Shared set-up for the training tests: a synthetic clip and a saved tiny model folder."""

from __future__ import annotations

from pathlib import Path

import torch

from wan.pipeline.tiny import build_tiny_pipeline
from wan.training.objective import ObjectiveConfig
from wan.training.trainer import DataSource, TrainConfig

SIZE = 32
FRAMES = 21


def write_tiny_model(folder: Path) -> Path:
    build_tiny_pipeline(seed=0).save_pretrained(folder)
    return folder


def tiny_config(output: Path, list_file: Path | None, **overrides) -> TrainConfig:
    settings = dict(
        output_dir=output,
        data=[DataSource(list_file, SIZE, SIZE)] if list_file else [],
        num_frames=FRAMES,
        learning_rate=1e-3,
        lr_warmup_steps=0,
        max_grad_norm=1.0,
        report_to="none",
        seed=3,
        checkpointing_steps=1000,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


DETERMINISTIC_OBJECTIVE = ObjectiveConfig(
    mask_probabilities=(1.0, 0.0, 0.0), motion_weight=0.0, audio_dropout=0.0, clip_level_audio=0.0
)
