"""The pipeline's call on diffusers' conventions (pipeline_wan_i2v.py): check_inputs, callback_on_step_end with
the window's latents, interrupt, output types, prompt embeddings, model hooks freed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan.errors import UserFacingError
from wan.pipeline.encoders import encode_prompt
from wan.pipeline.pipeline import StableAvatarPipeline
from wan.pipeline.tiny import build_tiny_pipeline
from wan.pipeline.windows import latent_frames_for_video

SIZE, CLIP, FRAMES = 32, 21, 30  # 30 frames at 25 fps: 9 latent frames, two 6-frame windows
SETTINGS = dict(
    height=SIZE, width=SIZE, num_inference_steps=2, clip_length=CLIP, overlap=2, seed=3, progress=False
)


@pytest.fixture(scope="module")
def pipe() -> StableAvatarPipeline:
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return (np.random.default_rng(1).standard_normal(FRAMES * 640) * 0.1).astype(np.float32)


def test_check_inputs_is_public_and_names_the_fix() -> None:
    StableAvatarPipeline.check_inputs(512, 512, 81, 5, 25, "np")
    with pytest.raises(UserFacingError, match="output_type must be one of mp4, np, pt, latent"):
        StableAvatarPipeline.check_inputs(512, 512, 81, 5, 25, "gif")
    with pytest.raises(UserFacingError, match=r"prompt_embeds must be \[1, L, text_dim\]"):
        StableAvatarPipeline.check_inputs(512, 512, 81, 5, 25, "np", prompt_embeds=torch.zeros(2, 3, 4))


def test_output_types_np_and_pt_hold_the_decoded_frames(pipe, image, audio) -> None:
    latent = pipe(image, audio, output_type="latent", **SETTINGS)
    as_np = pipe(image, audio, output_type="np", **SETTINGS)
    as_pt = pipe(image, audio, output_type="pt", **SETTINGS)
    assert as_np.video_path is None and as_np.latents is None
    assert as_np.frames.shape == (FRAMES, SIZE, SIZE, 3) and as_np.frames.dtype == np.float32
    assert as_pt.frames.shape == (FRAMES, 3, SIZE, SIZE)
    assert as_np.frames.min() >= 0.0 and as_np.frames.max() <= 1.0
    assert np.array_equal(as_pt.frames.permute(0, 2, 3, 1).numpy(), as_np.frames)
    decoded = pipe.vae.decode(
        latent.latents * torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
        + torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    ).sample.clamp(-1, 1)
    expected = ((decoded[0, :, :FRAMES] + 1) / 2).permute(1, 2, 3, 0).numpy()
    assert np.allclose(as_np.frames, expected, atol=1e-4)


def test_callback_on_step_end_sees_and_replaces_each_windows_latents(pipe, image, audio) -> None:
    seen = []

    def on_step_end(p, step, timestep, callback_kwargs):
        latents = callback_kwargs["latents"]
        seen.append((step, p.current_window, p.num_windows, p.num_timesteps, tuple(latents.shape)))
        return {"latents": torch.zeros_like(latents)}

    result = pipe(image, audio, output_type="latent", callback_on_step_end=on_step_end, **SETTINGS)
    window = (1, 16, 6, SIZE // 8, SIZE // 8)
    assert seen == [(s, w, 2, 2, window) for s in range(2) for w in range(2)]
    assert not result.latents.any()  # every window's latents were replaced by zeros


def test_interrupt_stops_at_the_next_window_step_and_writes_nothing(pipe, image, audio, tmp_path) -> None:
    calls = []

    def on_step_end(p, step, timestep, callback_kwargs):
        calls.append(step)
        p._interrupt = True
        return callback_kwargs

    path = tmp_path / "out.mp4"
    result = pipe(image, audio, output_path=path, callback_on_step_end=on_step_end, **SETTINGS)
    assert calls == [0] and result.interrupted and result.video_path is None
    assert list(tmp_path.iterdir()) == []
    again = pipe(image, audio, output_type="latent", **SETTINGS)  # the next call starts afresh
    assert not again.interrupted


def test_prompt_embeds_replace_the_prompt(pipe, image, audio) -> None:
    from_text = pipe(image, audio, prompt="a person talking", output_type="latent", **SETTINGS)
    embeds = encode_prompt(pipe.tokenizer, pipe.text_encoder, "a person talking", "cpu")
    from_embeds = pipe(image, audio, prompt="ignored", prompt_embeds=embeds, output_type="latent", **SETTINGS)
    assert torch.equal(from_text.latents, from_embeds.latents)


def test_model_hooks_are_freed_after_every_call(pipe, image, audio, monkeypatch) -> None:
    freed = []
    monkeypatch.setattr(pipe, "maybe_free_model_hooks", lambda: freed.append(1))
    pipe(image, audio, output_type="latent", **SETTINGS)
    assert freed == [1]


def test_vae_factors_come_from_the_vae_config(pipe, image, audio) -> None:
    """The latent grid follows `vae.config` (as diffusers' Wan pipelines read it), and a VAE whose temporal
    compression the audio alignment was not built for is refused before anything is encoded."""
    assert (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial) == (
        pipe.vae.config.scale_factor_temporal,
        pipe.vae.config.scale_factor_spatial,
    )
    latents = pipe(image, audio, output_type="latent", **SETTINGS).latents
    side = SIZE // pipe.vae.config.scale_factor_spatial
    assert latents.shape[-3:] == (latent_frames_for_video(FRAMES), side, side)
    other = build_tiny_pipeline(seed=0)
    other.vae.register_to_config(scale_factor_temporal=2)
    with pytest.raises(UserFacingError, match="Wan2.1 VAE"):
        other(image, audio, output_type="latent", **SETTINGS)
