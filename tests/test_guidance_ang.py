"""Audio Native Guidance (`build_guidance("ang")`): its batch, its combination, where it equals the
published rule, and the sampler features (step cache) with it. docs/audio-native-guidance.md derives it."""

from __future__ import annotations

import pytest
import torch

from wan.pipeline.guidance import (
    AudioNativeGuidance,
    GuidanceBatch,
    GuidanceInputs,
    PublishedGuidance,
    build_guidance,
    transformer_forward,
)
from wan.pipeline.sampler import SamplingConditions, SlidingWindowSampler
from wan.pipeline.solvers import build_scheduler, enable_step_cache
from wan.pipeline.tiny import build_tiny_pipeline

H = W = 4


@pytest.fixture(scope="module")
def transformer():
    return build_tiny_pipeline(seed=0).transformer


def _inputs(frames: int = 3) -> GuidanceInputs:
    g = torch.Generator().manual_seed(0)
    return GuidanceInputs(
        prompt_embeds=torch.randn(1, 5, 32, generator=g),
        negative_prompt_embeds=torch.randn(1, 7, 32, generator=g),
        image_embeds=torch.randn(1, 5, 32, generator=g),
        audio_embeds=torch.randn(1, 2 * (4 * (frames - 1) + 1), 768, generator=g) + 0.5,
    )


def test_ang_batch_is_pair_dropped_audio_dropped_full() -> None:
    inputs = _inputs()
    batch = build_guidance("ang").build_batch(inputs)
    assert isinstance(build_guidance("ang"), AudioNativeGuidance)
    assert batch.size == 3 and batch.audio_sources == (None, 1, 2)
    text = batch.encoder_hidden_states
    assert torch.equal(text[0, :7], inputs.negative_prompt_embeds[0])
    assert torch.equal(text[1, :5], inputs.prompt_embeds[0]) and not text[1, 5:].any()
    assert torch.equal(text[2], text[1])
    assert torch.equal(batch.encoder_hidden_states_image, inputs.image_embeds.expand(3, -1, -1))
    assert not batch.audio_embeds[:2].any()
    assert torch.equal(batch.audio_embeds[2], inputs.audio_embeds[0])


def test_ang_combination() -> None:
    pair, no_audio, full = torch.tensor(1.0), torch.tensor(3.0), torch.tensor(10.0)
    predictions = torch.stack([pair, no_audio, full]).view(3, 1, 1, 1, 1)
    guided = build_guidance("ang", text_scale=2.0, audio_scale=4.0).combine(predictions)
    assert float(guided) == 1.0 + 2.0 * (3.0 - 1.0) + 4.0 * (10.0 - 3.0)


def test_the_batch_members_are_the_three_conditionings(transformer) -> None:
    """Sample 0 of the batch equals a lone forward with the negative text and no audio context; sample 1 a
    lone forward with the prompt and zeroed features run through the adapter (the training-time audio
    dropout); sample 2 a lone forward with the prompt and the audio."""
    inputs = _inputs()
    g = torch.Generator().manual_seed(1)
    forward = transformer_forward(
        transformer,
        torch.randn(1, 16, 3, H, W, generator=g),
        torch.randn(1, 20, 3, H, W, generator=g),
        torch.tensor(700.0),
        num_video_frames=9,
    )
    with torch.no_grad():
        batched = forward(build_guidance("ang").build_batch(inputs))
        silence = torch.zeros_like(inputs.audio_embeds)
        alone = [
            forward(GuidanceBatch(inputs.negative_prompt_embeds, inputs.image_embeds, silence, (None,))),
            forward(GuidanceBatch(inputs.prompt_embeds, inputs.image_embeds, silence)),
            forward(GuidanceBatch(inputs.prompt_embeds, inputs.image_embeds, inputs.audio_embeds)),
        ]
    for i in range(3):
        assert torch.allclose(batched[i], alone[i][0], rtol=1e-5, atol=1e-6), i
    # the adapter's null embedding is not the zero context: the two dropped members differ
    with torch.no_grad():
        zero_context = forward(GuidanceBatch(inputs.prompt_embeds, inputs.image_embeds, silence, (None,)))
    assert not torch.allclose(zero_context, alone[1], rtol=1e-3, atol=1e-4)


def _fixed_embedding_forward(transformer, embedding: torch.Tensor, frames: int = 3):
    """A `ModelForward` whose refined audio is held fixed: an external `embedding` when the sample has audio
    features, the zero context when they are zeroed or absent (what the published rule assumes). The
    transformer's `compute_audio_context` is replaced for the call."""
    g = torch.Generator().manual_seed(2)
    latents, condition = (
        torch.randn(1, 16, frames, H, W, generator=g),
        torch.randn(1, 20, frames, H, W, generator=g),
    )

    def forward(batch: GuidanceBatch) -> torch.Tensor:
        sources = batch.audio_sources or tuple(range(batch.size))
        has_audio = [s is not None and bool(batch.audio_embeds[s].any()) for s in sources]
        context = torch.stack([embedding if audio else torch.zeros_like(embedding) for audio in has_audio])
        transformer.compute_audio_context = lambda *args, **kwargs: context
        try:
            return transformer(
                hidden_states=torch.cat([latents, condition], 1).expand(batch.size, -1, -1, -1, -1),
                timestep=torch.full((batch.size,), 500.0),
                encoder_hidden_states=batch.encoder_hidden_states,
                encoder_hidden_states_image=batch.encoder_hidden_states_image,
                audio_embeds=batch.audio_embeds,
            ).sample
        finally:
            del transformer.compute_audio_context

    return forward


def test_with_the_embedding_held_fixed_ang_is_the_published_rule(transformer) -> None:
    """Equal scales: identical. Unequal: the published rule with the order of text and audio exchanged."""
    inputs = _inputs()
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    embedding = torch.randn(3, 9, dim, generator=torch.Generator().manual_seed(3))  # [F, n, dim]
    forward = _fixed_embedding_forward(transformer, embedding)
    with torch.no_grad():
        for scale in (1.5, 4.0):
            ang = AudioNativeGuidance(scale, scale).predict(forward, inputs)
            published = PublishedGuidance(scale, scale).predict(forward, inputs)
            assert torch.allclose(ang, published, rtol=1e-5, atol=1e-6)
        ang = AudioNativeGuidance(text_scale=2.0, audio_scale=5.0).predict(forward, inputs)
        silence = torch.zeros_like(inputs.audio_embeds)
        uncond = forward(GuidanceBatch(inputs.negative_prompt_embeds, inputs.image_embeds, silence))
        text_only = forward(GuidanceBatch(inputs.prompt_embeds, inputs.image_embeds, silence))
        full = forward(GuidanceBatch(inputs.prompt_embeds, inputs.image_embeds, inputs.audio_embeds))
        text_first = uncond + 2.0 * (text_only - uncond) + 5.0 * (full - text_only)
    # lone forwards against the batch's (float32 kernels differ slightly with the batch size): relative error
    assert float((ang - text_first).norm() / text_first.norm()) < 1e-5
    assert not torch.allclose(ang, PublishedGuidance(2.0, 5.0).predict(forward, inputs), rtol=1e-3, atol=1e-4)


def _conditions() -> SamplingConditions:
    g = torch.Generator().manual_seed(4)
    return SamplingConditions(
        prompt_embeds=torch.randn(1, 5, 32, generator=g),
        negative_prompt_embeds=torch.randn(1, 7, 32, generator=g),
        image_embeds=torch.randn(1, 5, 32, generator=g),
        condition=torch.randn(1, 20, 6, H, W, generator=g),
    )


def _audio(window) -> torch.Tensor:
    return torch.randn(1, 8 * window.length, 768, generator=torch.Generator().manual_seed(window.start))


def test_sampler_with_ang_and_the_step_cache(transformer) -> None:
    """ANG samples a multi-window video; the step cache at threshold 0 gives the same video, and ANG
    differs from the published rule (the null embedding matters)."""
    noise = torch.randn(1, 16, 10, H, W, generator=torch.Generator().manual_seed(5))

    def run(guidance: str, threshold: float | None = None) -> torch.Tensor:
        model = build_tiny_pipeline(seed=0).transformer
        if threshold is not None:
            enable_step_cache(model, threshold)
        sampler = SlidingWindowSampler(
            model, build_scheduler("euler"), window_length=6, overlap=2, guidance=build_guidance(guidance)
        )
        return sampler(noise, _conditions(), _audio, num_inference_steps=3, progress=False)

    ang = run("ang")
    assert torch.isfinite(ang).all()
    assert torch.allclose(run("ang", threshold=0.0), ang, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(run("published"), ang, rtol=1e-3, atol=1e-4)
