"""Distillation with the tiny model: the teacher's samples, determinism and exact resume, loading the student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training_helpers import FRAMES, SIZE, write_tiny_model
from wan.generate import build_parser, load_pipeline
from wan.pipeline import StableAvatarPipeline
from wan.pipeline.conditioning import DEFAULT_NEGATIVE_PROMPT
from wan.pipeline.encoders import encode_prompt
from wan.pipeline.guidance import PublishedGuidance
from wan.pipeline.sampler import SamplingConditions, SlidingWindowSampler
from wan.training.dataset import TalkingFaceDataset
from wan.training.distill import STUDENT_DIR, DistillConfig, export_student, run
from wan.training.distill_core import _text_length, student_grid, teacher_samples, window_condition
from wan.training.encode import EncodedBatch
from wan.training.precompute import PrecomputedDataset, precompute
from wan.training.synthetic import write_dataset

EXAMPLE = "examples/case-1"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, model_dir):
    data = write_dataset(tmp_path_factory.mktemp("data"), num_clips=2, seconds=1.2, size=(SIZE, SIZE), seed=5)
    folder = tmp_path_factory.mktemp("cache")
    pipe = StableAvatarPipeline.from_pretrained(model_dir)
    precompute(pipe, TalkingFaceDataset(data, SIZE, SIZE, FRAMES, seed=5), folder, samples_per_clip=1)
    return folder


def config(model_dir: Path, cache_dir: Path, output: Path, **overrides) -> DistillConfig:
    settings = dict(
        teacher_dir=model_dir,
        precomputed_dir=cache_dir,
        output_dir=output,
        teacher_steps=3,
        text_guidance=1.5,
        audio_guidance=2.0,
        samples_per_window=2,
        batch_size=2,
        learning_rate=1e-3,
        lr_warmup_steps=0,
        max_train_steps=2,
        checkpointing_steps=1,
        checkpoints_total_limit=None,
        seed=3,
        report_to="none",
    )
    settings.update(overrides)
    return DistillConfig(**settings)


def test_teacher_samples_equal_the_inference_sampler_on_a_lone_window(model_dir, cache_dir) -> None:
    pipe = StableAvatarPipeline.from_pretrained(model_dir)
    windows = PrecomputedDataset(cache_dir)
    encoded = EncodedBatch.stack([windows[0], windows[1]])
    negative = encode_prompt(pipe.tokenizer, pipe.text_encoder, DEFAULT_NEGATIVE_PROMPT, "cpu")
    noise = torch.randn((2, *encoded.latent_mean.shape[1:]), generator=torch.Generator().manual_seed(0))
    guidance = PublishedGuidance(text_scale=1.5, audio_scale=2.0)
    batched = teacher_samples(pipe.transformer, pipe.scheduler, encoded, negative, noise, 3, guidance)
    for index in range(2):
        window = windows[index]
        conditions = SamplingConditions(
            window.text[:, : _text_length(window.text)], negative, window.image, window_condition(window)
        )
        sampler = SlidingWindowSampler(
            pipe.transformer, pipe.scheduler, window_length=noise.shape[2], overlap=0, guidance=guidance
        )
        alone = sampler(
            noise[index : index + 1], conditions, lambda _, audio=window.audio: audio, 3, progress=False
        )
        torch.testing.assert_close(batched[index : index + 1], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batched[0], noise[0])  # the teacher did move the noise


def test_the_student_grid_is_the_union_of_its_euler_grids(model_dir) -> None:
    scheduler = StableAvatarPipeline.from_pretrained(model_dir).scheduler
    grid = student_grid(scheduler, (1, 2, 4))
    assert grid[0] == 1.0 and torch.all(grid[1:] < grid[:-1])
    scheduler.set_timesteps(4)
    for sigma in scheduler.sigmas[:-1]:
        assert torch.isclose(grid, sigma).any()


def _student_state(output: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(output / f"checkpoint-{step}" / f"transformer3d-checkpoint-{step}.safetensors"))


@pytest.mark.parametrize("method", ["regression", "dmd"])
def test_distillation_is_deterministic_and_resumes_exactly(model_dir, cache_dir, tmp_path, method) -> None:
    teacher = StableAvatarPipeline.from_pretrained(model_dir).transformer.state_dict()
    run(config(model_dir, cache_dir, tmp_path / "a", method=method))
    first = _student_state(tmp_path / "a", 2)
    assert any(not torch.equal(first[k], teacher[k]) for k in teacher)  # it trained
    # one step, stop, resume for the second: the same as two uninterrupted steps (so also deterministic)
    run(config(model_dir, cache_dir, tmp_path / "c", method=method, max_train_steps=1))
    run(config(model_dir, cache_dir, tmp_path / "c", method=method, max_train_steps=2))
    for key, value in _student_state(tmp_path / "c", 2).items():
        assert torch.equal(value, first[key]), key


def _generate(flags: list[str], pipe: StableAvatarPipeline | None = None) -> torch.Tensor:
    """Latents of one generation through inference.py's loading path (or of `pipe`)."""
    args = build_parser().parse_args(
        [
            *flags,
            "--validation_reference_path",
            f"{EXAMPLE}/reference.png",
            "--validation_driven_audio_path",
            f"{EXAMPLE}/audio.wav",
        ]
    )
    pipe = pipe or load_pipeline(args, torch.float32)
    return pipe(
        args.validation_reference_path,
        args.validation_driven_audio_path,
        height=SIZE,
        width=SIZE,
        num_inference_steps=1,
        text_guidance_scale=1.0,
        audio_guidance_scale=1.0,
        clip_length=FRAMES,
        overlap=2,
        seed=0,
        output_type="latent",
        progress=False,
    ).latents


def test_the_student_loads_through_every_documented_path(model_dir, cache_dir, tmp_path) -> None:
    full = tmp_path / "full"
    loop = run(config(model_dir, cache_dir, full, max_train_steps=1, student_steps=(1,)))
    settings = json.loads((full / STUDENT_DIR / "generation_settings.json").read_text())
    assert settings["num_inference_steps"] == 1
    assert settings["text_guidance_scale"] == settings["audio_guidance_scale"] == 1.0
    expected = _generate(["--model_dir", str(full / STUDENT_DIR)])
    weights = full / "checkpoint-1" / "transformer3d-checkpoint-1.safetensors"
    torch.testing.assert_close(
        _generate(["--model_dir", str(model_dir), "--transformer_path", str(weights)]), expected
    )
    teacher = _generate(["--model_dir", str(model_dir)])
    assert not torch.allclose(teacher, expected)  # the student differs from its teacher
    # the same generation in memory, from the trained module itself
    pipe = StableAvatarPipeline.from_pretrained(model_dir)
    pipe.transformer = loop.task.student().eval()
    torch.testing.assert_close(_generate(["--model_dir", str(model_dir)], pipe), expected)


def test_the_exported_student_holds_no_file_of_the_teachers_but_its_component_list(
    model_dir, tmp_path
) -> None:
    """The teacher's own records (its training report) describe the teacher: the student folder must not carry
    them as its own."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for entry in Path(model_dir).iterdir():
        (teacher / entry.name).symlink_to(entry.resolve())
    (teacher / "training_report.json").write_text('{"dit_steps": 3000}')
    pipe = StableAvatarPipeline.from_pretrained(model_dir)
    student = export_student(pipe.transformer, teacher, tmp_path / "student", {"num_inference_steps": 1})
    files = sorted(path.name for path in student.iterdir() if path.is_file())
    assert files == ["README.md", "generation_settings.json", "model_index.json"]


def test_a_lora_student_gives_the_same_video_fused_in_its_folder_and_through_lora_path(
    model_dir, cache_dir, tmp_path
) -> None:
    """The exported folder holds the LoRA fused at its trained strength (alpha / rank, here 2) plus the fully
    trained audio modules; `--lora_path` attaches the same adapter to the teacher."""
    output = tmp_path / "lora"
    loop = run(
        config(
            model_dir, cache_dir, output, max_train_steps=2, student_steps=(1,), lora_rank=4, lora_alpha=8.0
        )
    )
    fused = _generate(["--model_dir", str(output / STUDENT_DIR)])
    attached = _generate(
        ["--model_dir", str(model_dir), "--lora_path", str(output / "checkpoint-2" / "lora")]
    )
    torch.testing.assert_close(attached, fused)
    pipe = StableAvatarPipeline.from_pretrained(model_dir)
    pipe.transformer = loop.task.student().eval()
    torch.testing.assert_close(_generate(["--model_dir", str(model_dir)], pipe), fused)
    assert not torch.allclose(_generate(["--model_dir", str(model_dir)]), fused)  # it did train


def test_loading_the_teacher_prints_no_deprecation_warning(model_dir) -> None:
    import warnings

    from wan.training.distill import load_teacher

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_teacher(model_dir)
    assert not [w for w in caught if "torch_dtype" in str(w.message)]
