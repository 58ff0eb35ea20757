"""The small-VAE trainer: an interrupted run resumes exactly; the result carries its latent statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from wan.training.synthetic import write_dataset
from wan.training.vae_trainer import SMALL_VAE_CONFIG, ClipFrames, VaeTrainConfig, decode_unclamped, train_vae


class _Stop(Exception):
    pass


def test_interrupted_vae_training_resumes_exactly(tmp_path) -> None:
    list_file = write_dataset(tmp_path / "data", num_clips=2, seconds=0.8, size=(32, 32), seed=7)

    def config(folder):
        return VaeTrainConfig(
            list_file,
            folder,
            size=16,
            samples=((2, 5), (1, 9)),
            max_train_steps=4,
            warmup_steps=1,
            checkpoint_every=2,
            statistics_samples=2,
            log_every=1,
            vae_config={**SMALL_VAE_CONFIG, "base_dim": 4},
        )

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
    assert (tmp_path / "b" / "checkpoint-2").is_dir()
    resumed, resumed_history = train_vae(config(tmp_path / "b"))
    assert not list((tmp_path / "b").glob("checkpoint-*"))  # a finished run leaves only the VAE
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
    common = {
        "size": 16,
        "samples": ((1, 9),),
        "max_train_steps": 3,
        "warmup_steps": 1,
        "statistics_samples": 2,
        "vae_config": {**SMALL_VAE_CONFIG, "base_dim": 4},
    }
    first, _ = train_vae(VaeTrainConfig(list_file, tmp_path / "first", **common))
    second, _ = train_vae(
        VaeTrainConfig(
            list_file, tmp_path / "second", init_from=tmp_path / "first", decoder_only=True, seed=1, **common
        )
    )
    before, after = first.state_dict(), second.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed), changed
    assert any(name.startswith("decoder.") for name in changed)
    for key in ("latents_mean", "latents_std"):
        assert second.config[key] == first.config[key]
    with pytest.raises(Exception, match="init_from"):
        train_vae(VaeTrainConfig(list_file, tmp_path / "third", decoder_only=True, **common))


class _FakeAutoencoder:
    """`encode(video).latent_dist.mode()` / `decode(z).sample` with a chosen reconstruction."""

    def __init__(self, reconstruct) -> None:
        self.reconstruct = reconstruct

    def encode(self, video):
        latent = type("Posterior", (), {"mode": lambda _self: video})()
        return type("Encoded", (), {"latent_dist": latent})()

    def decode(self, z):
        return type("Decoded", (), {"sample": self.reconstruct(z)})()


def test_reconstruct_frames_keeps_whole_latent_frames_in_the_unit_range() -> None:
    from wan.training.vae_trainer import reconstruct_frames

    frames = np.random.default_rng(0).integers(0, 256, (35, 8, 8, 3), dtype=np.uint8)
    kept = reconstruct_frames(_FakeAutoencoder(lambda video: video), frames)
    assert kept.shape == (33, 8, 8, 3)  # 35 frames hold 1 + 4 * 8 whole latent frames
    np.testing.assert_allclose(kept, frames[:33] / 255.0, atol=1e-6)
    assert reconstruct_frames(_FakeAutoencoder(lambda video: 3 * video), frames).max() == 1.0  # clamped


def test_reconstruct_frames_runs_a_vae_loaded_in_bfloat16() -> None:
    """A pipeline loaded with dtype=bfloat16 has a bfloat16 VAE: the frames go in its dtype, come out float."""
    from wan.training.vae_trainer import reconstruct_frames

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**{**SMALL_VAE_CONFIG, "base_dim": 4}).eval()
    frames = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    full = reconstruct_frames(vae, frames)
    half = reconstruct_frames(vae.to(torch.bfloat16), frames)
    assert half.dtype == full.dtype == np.float32 and half.shape == full.shape == (5, 16, 16, 3)
    np.testing.assert_allclose(half, full, atol=0.05)


def test_mouth_reconstruction_correlation_tells_a_kept_mouth_from_a_lost_one(tmp_path) -> None:
    from wan.training.vae_trainer import mouth_reconstruction_correlation

    list_file = write_dataset(tmp_path / "data", num_clips=2, seconds=1.4, size=(64, 64), seed=3)
    frames = ClipFrames(list_file, 64)
    kept = mouth_reconstruction_correlation(_FakeAutoencoder(lambda video: video), frames)
    assert kept == pytest.approx([1.0, 1.0], abs=1e-6)
    # the first frame everywhere plus a little noise: a mouth that does not move with the drawn one
    frozen = mouth_reconstruction_correlation(
        _FakeAutoencoder(lambda video: video[:, :, :1].expand_as(video) + 0.01 * torch.randn_like(video)),
        frames,
    )
    assert max(abs(value) for value in frozen) < 0.5


def test_autoencoder_mode_decodes_the_posterior_mean(tmp_path) -> None:
    from wan.training.vae_trainer import vae_loss

    list_file = write_dataset(tmp_path / "data", num_clips=1, seconds=0.4, size=(16, 16), seed=9)
    video, lips = ClipFrames(list_file, 16).sample(np.random.default_rng(0), 1, 5)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**{**SMALL_VAE_CONFIG, "base_dim": 4})
    with torch.no_grad():  # a wide posterior, so sampling it visibly changes the reconstruction
        vae.quant_conv.bias[vae.config.z_dim :] = 2.0

    def losses(**options):
        config = VaeTrainConfig(list_file, tmp_path / "unused", kl_weight=0.0, **options)
        return [
            vae_loss(vae, video, lips, config, torch.Generator().manual_seed(seed))[0].item()
            for seed in (1, 2)
        ]

    sampled, mean_only = losses(), losses(sample_posterior=False)
    assert sampled[0] != pytest.approx(sampled[1], rel=1e-4)
    assert mean_only[0] == mean_only[1]
    z = vae.encode(video).latent_dist.mean
    expected = (decode_unclamped(vae, z) - video).abs() * (1.0 + 8.0 * lips)
    assert mean_only[0] == pytest.approx(expected.mean().item(), rel=1e-5)


def test_foreign_first_frame_comes_from_another_clip_and_the_rest_stays(tmp_path) -> None:
    list_file = write_dataset(tmp_path / "data", num_clips=3, seconds=0.8, size=(16, 16), seed=4)
    frames = ClipFrames(list_file, 16)

    def sources(video: torch.Tensor, index: int) -> set[tuple[int, int]]:
        """(clip, frame) pairs whose pixels equal frame `index` of the span."""
        pixels = ((video[0, :, index].permute(1, 2, 0) + 1.0) * 127.5).round().byte().numpy()
        return {
            (c, f)
            for c, (clip, _) in enumerate(frames.clips)
            for f in range(len(clip))
            if np.array_equal(clip[f], pixels)
        }

    rng, foreign = np.random.default_rng(5), 0
    for _ in range(12):
        video, lips = frames.sample(rng, 1, 5, foreign_first=1.0)
        second = sources(video, 1)
        for index in range(2, 5):  # frames 1-4 stay one consecutive span of one clip
            assert {(c, f + index - 1) for c, f in second} & sources(video, index)
        foreign += not any((c, f - 1) in sources(video, 0) for c, f in second)
        assert lips.shape == (1, 1, 5, 16, 16)
    assert foreign >= 10  # another clip's frame (or, by chance, an unrelated frame of the same clip)

    # foreign_first=0 draws only the clip and the start, as the sampler always did (earlier runs reproduce)
    video, _ = frames.sample(np.random.default_rng(7), 1, 5)
    replay = np.random.default_rng(7)
    pixels, _ = frames.clips[int(replay.integers(len(frames.clips)))]
    start = int(replay.integers(0, len(pixels) - 5 + 1))
    expected = torch.from_numpy(pixels[start : start + 5]).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    assert torch.equal(video[0], expected)
