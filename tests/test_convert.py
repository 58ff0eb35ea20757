"""`python -m wan.convert` on a miniature of the downloaded layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.released_layout import write_released_layout
from wan.cli import run_cli
from wan.convert import main as convert_main
from wan.loading.released import VAE_FILE, load_released_pipeline
from wan.loading.transformer import load_stableavatar_transformer
from wan.pipeline import StableAvatarPipeline


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return write_released_layout(tmp_path_factory.mktemp("checkpoints"))


def _latents(pipe: StableAvatarPipeline) -> torch.Tensor:
    image = np.full((40, 56, 3), 128, np.uint8)
    audio = np.random.default_rng(0).standard_normal(9 * 640).astype(np.float32) * 0.1
    result = pipe(
        image,
        audio,
        "a person",
        height=32,
        width=48,
        num_inference_steps=2,
        clip_length=21,
        overlap=2,
        seed=1,
        output_type="latent",
        progress=False,
    )
    return result.latents


def test_convert_writes_a_folder_that_generates_like_the_released_files(released, tmp_path) -> None:
    root = released.base_dir.parent
    output = tmp_path / "converted"
    code = run_cli(
        convert_main, ["--checkpoints_dir", str(root), "--output", str(output), "--dtype", "float32"]
    )
    assert code == 0
    assert (output / "model_index.json").is_file()
    assert not list(tmp_path.glob(".converted*"))  # no staging folder left
    converted = StableAvatarPipeline.from_pretrained(output)
    direct = load_released_pipeline(released, progress=False)
    assert torch.equal(
        converted.transformer.blocks[0].attn2.to_k_audio.weight,
        direct.transformer.blocks[0].attn2.to_k_audio.weight,
    )
    reference, ours = _latents(direct), _latents(converted)
    assert (ours - reference).norm() / reference.norm() < 1e-5


def test_bfloat16_loading_keeps_the_fp32_sensitive_modules(released) -> None:
    model = load_stableavatar_transformer(released.base_dir, released.transformer_path, torch.bfloat16)
    assert model.proj_out.weight.dtype == torch.bfloat16
    assert model.blocks[0].attn2.to_k_audio.weight.dtype == torch.bfloat16
    assert model.scale_shift_table.dtype == model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32


def test_missing_files_are_named_and_nothing_is_written(released, tmp_path, capsys) -> None:
    root = tmp_path / "incomplete"
    root.mkdir()
    (root / "Wan2.1-Fun-V1.1-1.3B-InP").mkdir()
    code = run_cli(convert_main, ["--checkpoints_dir", str(root), "--output", str(tmp_path / "out")])
    message = capsys.readouterr().err
    assert code == 2
    assert message.startswith("error: missing checkpoint files:") and message.count("\n") == 1
    assert VAE_FILE in message and "transformer3d-square.pt" in message and "wav2vec2-base-960h" in message
    assert not (tmp_path / "out").exists()
