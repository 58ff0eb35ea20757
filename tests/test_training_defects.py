"""Training defects of issue 17 (and issue 22's training items), each reproduced in-process on the tiny model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training_helpers import DETERMINISTIC_OBJECTIVE, FRAMES, SIZE, tiny_config, write_tiny_model
from wan.cli import run_cli
from wan.errors import UserFacingError
from wan.loading.lora import LORA_TARGETS, load_lora
from wan.media import read_video_info
from wan.pipeline import StableAvatarPipeline
from wan.pipeline.tiny import build_tiny_pipeline
from wan.training.cli import main_for_preset
from wan.training.dataset import TalkingFaceDataset, collate, prompt_for
from wan.training.encode import encode_batch
from wan.training.loop import step_generator
from wan.training.objective import flow_matching_loss
from wan.training.precompute import precompute
from wan.training.synthetic import write_dataset
from wan.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), num_clips=2, seconds=1.6, size=(SIZE, SIZE), seed=5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def cache(two_clips, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    precompute(
        build_tiny_pipeline(seed=0), TalkingFaceDataset(two_clips, SIZE, SIZE, FRAMES, seed=0), folder, 1
    )
    return folder


def test_one_process_resume_at_an_epoch_boundary_is_exact(model_dir, tmp_path) -> None:
    """Defect 4: four batches per epoch, resumed at the first step of epoch 1 (accelerate used to reset the
    sampler to epoch 0 there, replaying epoch 0's order)."""
    clips = write_dataset(tmp_path / "data", num_clips=4, seconds=1.0, size=(SIZE, SIZE), seed=9)
    straight = Trainer(tiny_config(tmp_path / "a", clips, pipeline_dir=model_dir, max_train_steps=6)).train()
    Trainer(
        tiny_config(tmp_path / "b", clips, pipeline_dir=model_dir, max_train_steps=4, checkpointing_steps=4)
    ).train()
    resumed = Trainer(
        tiny_config(
            tmp_path / "b", clips, pipeline_dir=model_dir, max_train_steps=6, resume_from_checkpoint="latest"
        )
    ).train()
    assert resumed == straight[4:]


def test_lora_from_a_transformer_checkpoint_starts(cache, model_dir, tmp_path) -> None:
    """Defect 5: --transformer_path with LoRA loaded the weights again after the adapters were attached."""
    weights = tmp_path / "start.safetensors"
    from safetensors.torch import save_file

    transformer = StableAvatarPipeline.from_pretrained(model_dir).transformer
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(weights))
    code = main_for_preset(
        "1B_rec_vec_lora",
        [
            "--pretrained_model_name_or_path",
            str(model_dir),
            "--transformer_path",
            str(weights),
            "--precomputed_dir",
            str(cache),
            "--video_sample_n_frames",
            str(FRAMES),
            "--output_dir",
            str(tmp_path / "run"),
            "--max_train_steps",
            "1",
            "--rank",
            "4",
            "--mixed_precision",
            "no",
            "--report_to",
            "none",
            "--dataloader_num_workers",
            "0",
        ],
    )
    assert code == 0
    assert (tmp_path / "run" / "checkpoint-1" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_lora_plays_at_its_trained_strength_and_spares_the_audio_adapter(
    two_clips, model_dir, tmp_path
) -> None:
    """Defects 6 and 7: alpha/rank = 0.5 must survive save -> load; the audio adapter trains without LoRA."""
    trainer = Trainer(
        tiny_config(
            tmp_path / "run",
            two_clips,
            pipeline_dir=model_dir,
            max_train_steps=2,
            checkpointing_steps=2,
            lora_rank=4,
            lora_alpha=2,
            learning_rate=5e-2,
        )
    )
    trainer.train()
    transformer = trainer.accelerator.unwrap_model(trainer.transformer).eval()
    assert not [
        n for n, _ in transformer.named_parameters() if n.startswith("audio_adapter.") and "lora_" in n
    ]
    folder = tmp_path / "run" / "checkpoint-2" / "lora"
    encoded = encode_batch(trainer.pipeline, collate([TalkingFaceDataset(two_clips, SIZE, SIZE, FRAMES)[0]]))

    def loss(model) -> float:
        with torch.no_grad():
            return flow_matching_loss(
                model,
                encoded,
                trainer.schedule_sigmas,
                step_generator(1, 0, 0, 0),
                DETERMINISTIC_OBJECTIVE,
                torch.float32,
            ).item()

    ours = loss(transformer)
    ours_loaded = StableAvatarPipeline.from_pretrained(model_dir).transformer.eval()
    load_lora(ours_loaded, folder)  # what inference.py --lora_path and the app call
    base = StableAvatarPipeline.from_pretrained(model_dir).transformer.eval()
    assert loss(ours_loaded) == pytest.approx(ours, rel=1e-5) and loss(base) != pytest.approx(ours, rel=1e-3)
    diffusers_style = StableAvatarPipeline.from_pretrained(model_dir).transformer.eval()
    diffusers_style.load_lora_adapter(str(folder), weight_name="pytorch_lora_weights.safetensors")
    lora = diffusers_style.peft_config["default_0"]
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (4, 2, LORA_TARGETS)


def test_validation_runs_on_cached_features_at_the_training_size(cache, model_dir, tmp_path) -> None:
    """Defect 8: validation with --precomputed_dir alone used to raise IndexError (no raw data source)."""
    config = tiny_config(
        tmp_path / "run",
        None,
        pipeline_dir=model_dir,
        precomputed_dir=cache,
        max_train_steps=1,
        validation_steps=1,
        validation_inference_steps=1,
        validation_image=REPO / "examples/case-1/reference.png",
        validation_audio=REPO / "examples/case-1/audio.wav",
    )
    Trainer(config).train()
    video = read_video_info(tmp_path / "run" / "validation" / "step-1.mp4")
    assert (video["width"], video["height"]) == (SIZE, SIZE) and video["has_audio"]


def test_one_cache_holds_several_sizes_and_batches_one_size_at_a_time(two_clips, model_dir, tmp_path) -> None:
    """Defect 9: two sizes cached into one folder overwrote each other, and mixed batches failed to stack."""
    pipe = build_tiny_pipeline(seed=0)
    cache = tmp_path / "cache"
    precompute(pipe, TalkingFaceDataset(two_clips, 32, 32, FRAMES, seed=0), cache, 1)
    precompute(pipe, TalkingFaceDataset(two_clips, 48, 32, FRAMES, seed=0), cache, 1)
    assert len(list(cache.glob("*.safetensors"))) == 4
    history = Trainer(
        tiny_config(
            tmp_path / "run",
            None,
            pipeline_dir=model_dir,
            precomputed_dir=cache,
            batch_size=2,
            max_train_steps=2,
        )
    ).train()
    assert len(history) == 2 and all(np.isfinite(loss) for _, loss in history)


def test_precompute_refuses_sizes_that_are_not_multiples_of_16(two_clips, model_dir, tmp_path) -> None:
    from wan.training.precompute import main as precompute_main

    code = run_cli(
        precompute_main,
        ["--model_dir", str(model_dir), "--data", f"{two_clips}:40x32", "--output", str(tmp_path / "c")],
    )
    assert code == 2 and not (tmp_path / "c").exists()
    with pytest.raises(UserFacingError, match="multiples of 16"):
        precompute(
            build_tiny_pipeline(seed=0), TalkingFaceDataset(two_clips, 40, 32, FRAMES), tmp_path / "d", 1
        )


def test_prompts_come_from_the_clip_caption_or_its_own_category_folder(tmp_path) -> None:
    """Defect 10 and per-clip captions: the nearest category folder decides, not a substring of the path."""
    clip = tmp_path / "singing_school" / "2024" / "speech" / "00001"
    clip.mkdir(parents=True)
    assert prompt_for(clip) == "The protagonist is talking"
    (clip / "prompt.txt").write_text("A man explains a recipe\n")
    assert prompt_for(clip) == "A man explains a recipe"


def test_a_metadata_csv_or_jsonl_names_clips_and_their_prompts(two_clips, tmp_path) -> None:
    folders = [Path(line) for line in two_clips.read_text().split()]
    table = tmp_path / "clips.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "prompt"])
        writer.writerow([folders[0], "first caption"])
        writer.writerow([folders[1], ""])
    lines = tmp_path / "clips.jsonl"
    lines.write_text(
        "".join(json.dumps({"path": str(f), "prompt": f"caption {i}"}) + "\n" for i, f in enumerate(folders))
    )
    from_csv = TalkingFaceDataset(table, SIZE, SIZE, FRAMES)
    assert [from_csv[i]["prompt"] for i in range(2)] == ["first caption", "The protagonist is talking"]
    assert TalkingFaceDataset(lines, SIZE, SIZE, FRAMES)[1]["prompt"] == "caption 1"


def _script(*flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(flags), cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_bad_frame_counts_are_a_one_line_error(two_clips, tmp_path) -> None:
    """Issue 22: --video_sample_n_frames 0 gave a traceback."""
    result = _script(
        sys.executable,
        "train_1B_square.py",
        "--pretrained_model_name_or_path",
        str(tmp_path),
        "--train_data_square_dir",
        str(two_clips),
        "--output_dir",
        str(tmp_path / "o"),
        "--video_sample_n_frames",
        "0",
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--video_sample_n_frames 0" in result.stderr


def test_a_launcher_without_gpus_says_so_once(tmp_path) -> None:
    """Issue 22: without GPUs train_*.sh started the config's 8 processes and printed the error 8 times."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import os

    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "o")}
    env.pop("PROCESSES_PER_MACHINE", None)
    result = _script("bash", "train_1B_square.sh", env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "PROCESSES_PER_MACHINE" in result.stderr
