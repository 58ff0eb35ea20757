"""Training on a synthetic talking-face clip with the tiny model: learning, resuming, LoRA, checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.training_helpers import (
    DETERMINISTIC_OBJECTIVE,
    FRAMES,
    SIZE,
    parameters,
    tiny_config,
    write_tiny_model,
)
from wan.cli import run_cli
from wan.errors import UserFacingError
from wan.generate import main as generate_main
from wan.loading.lora import load_lora
from wan.media import read_video_info
from wan.pipeline import StableAvatarPipeline
from wan.pipeline.tiny import build_tiny_pipeline
from wan.training.dataset import TalkingFaceDataset, collate
from wan.training.encode import encode_batch
from wan.training.loop import step_generator
from wan.training.objective import flow_matching_loss
from wan.training.precompute import PrecomputedDataset, precompute
from wan.training.synthetic import write_dataset
from wan.training.trainer import Trainer


@pytest.fixture(scope="module")
def clip_list(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), num_clips=1, seconds=1.6, size=(SIZE, SIZE), seed=5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def _probe_loss(trainer: Trainer, encoded) -> float:
    """Loss on fixed draws (8 noise levels and noises), independent of the training randomness."""
    transformer = trainer.accelerator.unwrap_model(trainer.transformer)
    with torch.no_grad():
        losses = [
            flow_matching_loss(
                transformer,
                encoded,
                trainer.schedule_sigmas,
                step_generator(99, i, 0, 0),
                DETERMINISTIC_OBJECTIVE,
                torch.float32,
            ).item()
            for i in range(8)
        ]
    return float(np.mean(losses))


def test_overfitting_one_clip_drives_the_loss_down(clip_list, tmp_path) -> None:
    pipe = build_tiny_pipeline(seed=0)
    dataset = TalkingFaceDataset(clip_list, SIZE, SIZE, FRAMES, seed=0)
    assert precompute(pipe, dataset, tmp_path / "cache", samples_per_clip=1) == 1
    encoded = PrecomputedDataset(tmp_path / "cache")[0]
    # Every parameter trains: the published selection freezes the patch embedding and head, which a
    # randomly initialised model needs to learn too.
    config = tiny_config(
        tmp_path / "run",
        None,
        precomputed_dir=tmp_path / "cache",
        max_train_steps=100,
        learning_rate=3e-3,
        objective=DETERMINISTIC_OBJECTIVE,
        trainable_patterns=("",),
    )
    trainer = Trainer(config, pipe)
    before = _probe_loss(trainer, encoded)
    trainer.train()
    after = _probe_loss(trainer, encoded)
    assert after < 0.5 * before, (before, after)


def test_resumed_run_continues_exactly(clip_list, model_dir, tmp_path) -> None:
    uninterrupted = Trainer(
        tiny_config(tmp_path / "a", clip_list, pipeline_dir=model_dir, max_train_steps=4)
    ).train()
    first = Trainer(
        tiny_config(
            tmp_path / "b", clip_list, pipeline_dir=model_dir, max_train_steps=2, checkpointing_steps=2
        )
    )
    first.train()
    assert (tmp_path / "b" / "checkpoint-2" / "transformer3d-checkpoint-2.safetensors").is_file()
    assert not list((tmp_path / "b").glob(".checkpoint-*"))  # no half-written checkpoint left
    resumed = Trainer(
        tiny_config(
            tmp_path / "b",
            clip_list,
            pipeline_dir=model_dir,
            max_train_steps=4,
            resume_from_checkpoint="latest",
        )
    ).train()
    assert [step for step, _ in resumed] == [3, 4]
    assert np.allclose(
        [loss for _, loss in resumed], [loss for _, loss in uninterrupted[2:]], rtol=1e-5, atol=0
    )
    assert uninterrupted[2][1] != uninterrupted[3][1]


def test_checkpoint_loads_in_the_inference_pipeline(clip_list, model_dir, tmp_path) -> None:
    trainer = Trainer(
        tiny_config(
            tmp_path / "run",
            clip_list,
            pipeline_dir=model_dir,
            max_train_steps=2,
            checkpointing_steps=2,
            checkpoints_total_limit=1,
        )
    )
    trainer.train()
    weights = tmp_path / "run" / "checkpoint-2" / "transformer3d-checkpoint-2.safetensors"
    example = "examples/case-1"
    code = run_cli(
        generate_main,
        [
            "--model_dir",
            str(model_dir),
            "--transformer_path",
            str(weights),
            "--validation_reference_path",
            f"{example}/reference.png",
            "--validation_driven_audio_path",
            f"{example}/audio.wav",
            "--width",
            "32",
            "--height",
            "32",
            "--sample_steps",
            "1",
            "--clip_sample_n_frames",
            "21",
            "--overlap_window_length",
            "2",
            "--output_dir",
            str(tmp_path / "video"),
        ],
    )
    assert code == 0
    assert read_video_info(tmp_path / "video" / "video_with_audio.mp4")["frames"] == 173


def test_lora_trains_only_lora_and_audio_and_loads_for_inference(clip_list, model_dir, tmp_path) -> None:
    trainer = Trainer(
        tiny_config(
            tmp_path / "run",
            clip_list,
            pipeline_dir=model_dir,
            max_train_steps=3,
            checkpointing_steps=3,
            lora_rank=4,
            lora_alpha=4,
        )
    )
    transformer = trainer.accelerator.unwrap_model(trainer.transformer)
    before = parameters(transformer)
    trainer.train()
    changed = {
        name for name, p in transformer.named_parameters() if not torch.equal(p.detach(), before[name])
    }
    assert any("lora_B" in name for name in changed) and any(
        name.startswith("audio_adapter.") for name in changed
    )
    assert all("lora_" in name or name.startswith("audio_adapter.") or "_audio." in name for name in changed)

    fresh = StableAvatarPipeline.from_pretrained(model_dir).transformer.eval()
    load_lora(fresh, tmp_path / "run" / "checkpoint-3" / "lora")
    batch = collate([TalkingFaceDataset(clip_list, SIZE, SIZE, FRAMES)[0]])
    encoded = encode_batch(trainer.pipeline, batch)
    transformer.eval()
    with torch.no_grad():
        ours = flow_matching_loss(
            transformer,
            encoded,
            trainer.schedule_sigmas,
            step_generator(1, 0, 0, 0),
            DETERMINISTIC_OBJECTIVE,
            torch.float32,
        )
        loaded = flow_matching_loss(
            fresh,
            encoded,
            trainer.schedule_sigmas,
            step_generator(1, 0, 0, 0),
            DETERMINISTIC_OBJECTIVE,
            torch.float32,
        )
    assert abs(ours.item() - loaded.item()) <= 1e-5 * abs(ours.item())


def test_ema_weights_go_into_the_checkpoint_and_validation_writes_a_video(
    clip_list, model_dir, tmp_path
) -> None:
    config = tiny_config(
        tmp_path / "run",
        clip_list,
        pipeline_dir=model_dir,
        max_train_steps=2,
        checkpointing_steps=2,
        use_ema=True,
        ema_decay=0.5,
        validation_steps=2,
        validation_inference_steps=1,
        validation_image=Path("examples/case-1/reference.png"),
        validation_audio=Path("examples/case-1/audio.wav"),
    )
    trainer = Trainer(config)
    trainer.train()
    saved = load_file(str(tmp_path / "run" / "checkpoint-2" / "transformer3d-checkpoint-2.safetensors"))
    live = trainer.accelerator.unwrap_model(trainer.transformer).state_dict()
    name = "blocks.0.attn1.to_q.weight"
    trained_names = [
        n
        for n, p in trainer.accelerator.unwrap_model(trainer.transformer).named_parameters()
        if p.requires_grad
    ]
    ema = trainer.ema.shadow_params[trained_names.index(name)]
    assert torch.allclose(saved[name], ema) and not torch.allclose(saved[name], live[name])
    video = read_video_info(tmp_path / "run" / "validation" / "step-2.mp4")
    assert video["frames"] == 173 and video["has_audio"]


@pytest.mark.parametrize("optimizer", ["adamw8bit", "cpu_offload_adamw"])
def test_gpu_only_optimizers_explain_what_they_need(clip_list, model_dir, tmp_path, optimizer) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: these optimizers can run")
    needs = {"adamw8bit": "bitsandbytes", "cpu_offload_adamw": "CUDA"}[optimizer]
    if optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    with pytest.raises(UserFacingError, match=needs):
        Trainer(
            tiny_config(
                tmp_path / "run", clip_list, pipeline_dir=model_dir, max_train_steps=1, optimizer=optimizer
            )
        )


def test_cached_features_are_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    from dataclasses import fields

    import wan.training.encode as encode

    batch = encode.EncodedBatch(
        **{f.name: torch.full((1, 2), float(i)) for i, f in enumerate(fields(encode.EncodedBatch))}
    )
    batch.save(tmp_path / "a.safetensors")
    assert torch.equal(encode.EncodedBatch.load(tmp_path / "a.safetensors").audio, batch.audio)

    def interrupted(tensors, path):  # a run killed halfway through writing
        Path(path).write_bytes(b"trunc")
        raise KeyboardInterrupt

    monkeypatch.setattr(encode, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.save(tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()  # so a resumed precompute writes it again
