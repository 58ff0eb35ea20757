"""The guidance rules: batch building, combination, selection by name, and the sampler using them."""

from __future__ import annotations

import pytest
import torch

from wan.pipeline.guidance import (
    GUIDANCE_RULES,
    GuidanceBatch,
    GuidanceInputs,
    PublishedGuidance,
    build_guidance,
    register_guidance,
    transformer_forward,
)
from wan.pipeline.sampler import SamplingConditions, SlidingWindowSampler
from wan.pipeline.solvers import build_scheduler
from wan.pipeline.tiny import build_tiny_pipeline

TEXT_DIM, IMAGE_DIM = 8, 6


def _inputs() -> GuidanceInputs:
    generator = torch.Generator().manual_seed(0)
    return GuidanceInputs(
        prompt_embeds=torch.randn(1, 5, TEXT_DIM, generator=generator),
        negative_prompt_embeds=torch.randn(1, 3, TEXT_DIM, generator=generator),
        image_embeds=torch.randn(1, 257, IMAGE_DIM, generator=generator),
        audio_embeds=torch.randn(1, 10, 768, generator=generator) + 1.0,
    )


def test_published_batch_is_negative_negative_prompt_with_audio_none_audio_audio() -> None:
    inputs = _inputs()
    batch = PublishedGuidance().build_batch(inputs)
    assert batch.size == 3
    assert batch.audio_sources == (None, 2, 2)
    text = batch.encoder_hidden_states
    assert text.shape == (3, 5, TEXT_DIM)
    assert torch.equal(text[0, :3], inputs.negative_prompt_embeds[0]) and not text[0, 3:].any()
    assert torch.equal(text[1], text[0])
    assert torch.equal(text[2], inputs.prompt_embeds[0])
    assert torch.equal(batch.encoder_hidden_states_image, inputs.image_embeds.expand(3, -1, -1))
    assert not batch.audio_embeds[0].any()
    assert torch.equal(batch.audio_embeds[1:], inputs.audio_embeds.expand(2, -1, -1))


def test_published_combination_and_single_forward_outside_guidance() -> None:
    guidance = build_guidance("published", text_scale=2.0, audio_scale=4.0)
    uncond, audio, full = torch.tensor(1.0), torch.tensor(3.0), torch.tensor(10.0)
    seen: list[GuidanceBatch] = []

    def forward(batch: GuidanceBatch) -> torch.Tensor:
        seen.append(batch)
        values = [uncond, audio, full] if batch.size == 3 else [full]
        return torch.stack(values).view(-1, 1, 1, 1, 1).to(torch.float64)

    guided = guidance.predict(forward, _inputs())
    assert guided.dtype == torch.float32 and guided.shape == (1, 1, 1, 1, 1)
    assert guided.item() == pytest.approx(1.0 + 4.0 * (3.0 - 1.0) + 2.0 * (10.0 - 3.0))
    single = guidance.predict(forward, _inputs(), guided=False)
    assert single.item() == 10.0
    assert seen[1].size == 1 and seen[1].audio_sources is None
    assert torch.equal(seen[1].encoder_hidden_states, _inputs().prompt_embeds)
    # With both scales 1 the rule reduces to the full prediction: one forward even when asked to guide.
    assert (
        build_guidance("published", text_scale=1.0, audio_scale=1.0).predict(forward, _inputs()).item()
        == 10.0
    )
    assert [b.size for b in seen] == [3, 1, 1]


def test_guidance_interval_selects_the_steps() -> None:
    guidance = PublishedGuidance(interval=(0.2, 0.6))
    assert [guidance.active(i, 10) for i in range(10)] == [i in (2, 3, 4, 5) for i in range(10)]


def test_rules_are_selected_by_name() -> None:
    assert GUIDANCE_RULES["published"] is PublishedGuidance
    assert isinstance(build_guidance(), PublishedGuidance)
    with pytest.raises(ValueError, match="unknown guidance 'cfg-zero'; choose one of published"):
        build_guidance("cfg-zero")
    with pytest.raises(ValueError, match="already registered"):
        register_guidance("published")(PublishedGuidance)


def test_the_sampler_runs_a_registered_rule_through_the_transformer() -> None:
    """A rule registered elsewhere drives the sampler: its batch reaches the transformer, its combination
    is what the scheduler steps with (here: audio-only guidance, the audio-free sample first)."""
    name = "test-audio-only"

    @register_guidance(name)
    class AudioOnly(PublishedGuidance):
        def build_batch(self, inputs: GuidanceInputs) -> GuidanceBatch:
            audio = inputs.audio_embeds
            return GuidanceBatch(
                inputs.prompt_embeds.expand(2, -1, -1),
                inputs.image_embeds.expand(2, -1, -1),
                torch.cat([torch.zeros_like(audio), audio]),
                audio_sources=(None, 1),
            )

        def combine(self, predictions: torch.Tensor) -> torch.Tensor:
            silent, spoken = predictions.chunk(2)
            return silent + self.audio_scale * (spoken - silent)

    try:
        pipe = build_tiny_pipeline(seed=0)
        transformer = pipe.transformer
        height, width = 4, 6
        generator = torch.Generator().manual_seed(1)
        conditions = SamplingConditions(
            prompt_embeds=torch.randn(1, 4, transformer.config.text_dim, generator=generator),
            negative_prompt_embeds=torch.randn(1, 2, transformer.config.text_dim, generator=generator),
            image_embeds=torch.randn(1, 257, transformer.config.image_dim, generator=generator),
            condition=torch.randn(1, 20, 3, height, width, generator=generator),
        )
        audio = torch.randn(1, 2 * 9 + 8, 768, generator=generator)
        noise = torch.randn(1, 16, 3, height, width, generator=generator)
        batches: list[tuple[int, tuple | None]] = []
        hook = transformer.register_forward_pre_hook(
            lambda m, args, kwargs: batches.append(
                (kwargs["hidden_states"].shape[0], kwargs["audio_sources"])
            ),
            with_kwargs=True,
        )
        guidance = build_guidance(name, audio_scale=4.0)
        sampler = SlidingWindowSampler(
            transformer, build_scheduler("euler"), window_length=3, overlap=1, guidance=guidance
        )
        out = sampler(noise, conditions, lambda window: audio, num_inference_steps=1, progress=False)
        hook.remove()
        assert batches == [(2, (None, 1))]

        # The same step by hand: one Euler step from sigma 1 with the rule's combined prediction.
        scheduler = build_scheduler("euler")
        scheduler.set_timesteps(1)
        timestep = scheduler.timesteps[0]
        forward = transformer_forward(transformer, noise, conditions.condition, timestep, 9)
        inputs = GuidanceInputs(
            conditions.prompt_embeds, conditions.negative_prompt_embeds, conditions.image_embeds, audio
        )
        with torch.no_grad():
            prediction = guidance.predict(forward, inputs)
        expected = scheduler.step(prediction, timestep, noise, return_dict=False)[0]
        assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    finally:
        del GUIDANCE_RULES[name]
