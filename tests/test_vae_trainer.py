"""The small-VAE trainer: an interrupted run resumes exactly; the result carries its latent statistics."""

from __future__ import annotations

import json

import pytest
import torch

from wan.training.synthetic import write_dataset
from wan.training.vae_trainer import SMALL_VAE_CONFIG, ClipFrames, VaeTrainConfig, train_vae


class _Stop(Exception):
    pass


def test_interrupted_vae_training_resumes_exactly(tmp_path) -> None:
    list_file = write_dataset(tmp_path / "data", num_clips=2, seconds=0.8, size=(32, 32), seed=7)

    def config(folder):
        return VaeTrainConfig(list_file, folder, size=16, samples=((2, 5), (1, 9)), max_train_steps=4, warmup_steps=1,
                              checkpoint_every=2, statistics_samples=2, log_every=1,
                              vae_config={**SMALL_VAE_CONFIG, "base_dim": 4})  # fmt: skip

    straight, history = train_vae(config(tmp_path / "a"))
    assert [entry["step"] for entry in history] == [1, 2, 3, 4]

    frames = ClipFrames(list_file, 16)
    sample, calls = frames.sample, []

    def failing_sample(*args):
        calls.append(1)
        if len(calls) == 4:  # during step 4, after the checkpoint of step 2
            raise _Stop
        return sample(*args)

    frames.sample = failing_sample
    with pytest.raises(_Stop):
        train_vae(config(tmp_path / "b"), frames)
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed, resumed_history = train_vae(config(tmp_path / "b"))
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    assert [entry["loss"] for entry in resumed_history] == pytest.approx(
        [entry["loss"] for entry in history], rel=1e-6
    )
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=1e-6, atol=1e-7)

    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert len(saved["latents_mean"]) == len(saved["latents_std"]) == 16
    assert saved["latents_mean"] != [0.0] * 16 and min(saved["latents_std"]) > 0


def test_decoder_only_run_keeps_the_encoder_and_its_statistics(tmp_path) -> None:
    list_file = write_dataset(tmp_path / "data", num_clips=2, seconds=0.8, size=(32, 32), seed=8)
    common = {"size": 16, "samples": ((1, 9),), "max_train_steps": 3, "warmup_steps": 1, "statistics_samples": 2,
              "vae_config": {**SMALL_VAE_CONFIG, "base_dim": 4}}  # fmt: skip
    first, _ = train_vae(VaeTrainConfig(list_file, tmp_path / "first", **common))
    second, _ = train_vae(VaeTrainConfig(list_file, tmp_path / "second", init_from=tmp_path / "first",
                                         decoder_only=True, seed=1, **common))  # fmt: skip
    before, after = first.state_dict(), second.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed), changed
    assert any(name.startswith("decoder.") for name in changed)
    for key in ("latents_mean", "latents_std"):
        assert second.config[key] == first.config[key]
    with pytest.raises(Exception, match="init_from"):
        train_vae(VaeTrainConfig(list_file, tmp_path / "third", decoder_only=True, **common))
