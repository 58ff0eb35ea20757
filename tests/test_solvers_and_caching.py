"""Multistep solvers keep one history per window, guidance intervals and step caching save calls."""

from __future__ import annotations

import pytest
import torch

from wan.errors import UserFacingError
from wan.pipeline.guidance import PublishedGuidance
from wan.pipeline.sampler import SamplingConditions, SlidingWindowSampler
from wan.pipeline.solvers import build_scheduler, enable_step_cache
from wan.pipeline.tiny import build_tiny_pipeline
from wan.pipeline.windows import Window

H = W = 4


@pytest.fixture(scope="module")
def transformer():
    return build_tiny_pipeline(seed=0).transformer


def _conditions(seed: int = 0) -> SamplingConditions:
    g = torch.Generator().manual_seed(seed)
    return SamplingConditions(
        prompt_embeds=torch.randn(1, 5, 32, generator=g),
        negative_prompt_embeds=torch.randn(1, 7, 32, generator=g),
        image_embeds=torch.randn(1, 5, 32, generator=g),
        condition=torch.randn(1, 20, 6, H, W, generator=g),
    )


def _audio_for(offset: int):
    """wav2vec2-like features that depend on the window's absolute position (offset in latent frames)."""

    def audio(window: Window) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + window.start + offset)
        return torch.randn(1, 2 * 4 * window.length, 768, generator=g)

    return audio


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_windows_never_share_solver_state(transformer, solver) -> None:
    """With no overlap, windows are independent problems: the second window of a two-window video must
    come out exactly as when it is sampled alone."""
    noise = torch.randn(1, 16, 12, H, W, generator=torch.Generator().manual_seed(2))
    conditions = _conditions()
    sampler = SlidingWindowSampler(transformer, build_scheduler(solver), window_length=6, overlap=0)
    both = sampler(noise, conditions, _audio_for(0), num_inference_steps=4, progress=False)
    alone = SlidingWindowSampler(transformer, build_scheduler(solver), window_length=6, overlap=0)
    second = alone(noise[:, :, 6:], conditions, _audio_for(6), num_inference_steps=4, progress=False)
    assert torch.allclose(both[:, :, 6:], second, rtol=1e-5, atol=1e-6)


def test_guidance_interval_runs_one_forward_outside_it(transformer) -> None:
    batches = []
    hook = transformer.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        sampler = SlidingWindowSampler(
            transformer,
            build_scheduler("euler"),
            window_length=6,
            overlap=2,
            guidance=PublishedGuidance(interval=(0.0, 0.5)),
        )
        sampler(
            torch.randn(1, 16, 6, H, W), _conditions(), _audio_for(0), num_inference_steps=4, progress=False
        )
    finally:
        hook.remove()
    assert batches == [3, 3, 1, 1]


def test_step_cache_is_exact_at_zero_and_per_window_when_skipping(transformer) -> None:
    noise = torch.randn(1, 16, 14, H, W, generator=torch.Generator().manual_seed(3))
    args = (noise, _conditions(), _audio_for(0))

    def run(threshold: float | None) -> tuple[torch.Tensor, int]:
        model = build_tiny_pipeline(seed=0).transformer
        if threshold is not None:
            enable_step_cache(model, threshold)
        tail_calls = []
        model.blocks[1].attn1.register_forward_hook(lambda *a: tail_calls.append(1))
        sampler = SlidingWindowSampler(model, build_scheduler("euler"), window_length=6, overlap=2)
        return sampler(*args, num_inference_steps=5, progress=False), len(tail_calls)

    plain, plain_calls = run(None)
    exact, exact_calls = run(0.0)
    skipping, skipping_calls = run(1e9)
    windows = 3
    assert plain_calls == exact_calls == 5 * windows
    assert torch.allclose(plain, exact, rtol=1e-5, atol=1e-6)
    assert skipping_calls == windows  # each window computes its own first step in full, then reuses it
    assert torch.isfinite(skipping).all()


def test_unknown_solver_is_a_clear_error() -> None:
    with pytest.raises(UserFacingError, match="unipc"):
        build_scheduler("heun")


def test_text_and_image_keys_values_are_computed_once_per_batch_layout(transformer) -> None:
    """Cached text/image keys and values give the uncached result, and the text/image projections run once
    for the guidance batch and once for the single batch over a whole 3-window, 4-step video."""
    noise = torch.randn(1, 16, 14, H, W, generator=torch.Generator().manual_seed(5))
    args = (noise, _conditions(), _audio_for(0))
    guidance = PublishedGuidance(
        interval=(0.0, 0.5)
    )  # steps 0-1 guided (batch 3), steps 2-3 single (batch 1)
    results, projection_batches = {}, {}
    for cached in (False, True):
        calls: list[int] = []
        hooks = [
            block.attn2.to_k.register_forward_hook(
                lambda m, inputs, o, calls=calls: calls.append(inputs[0].shape[0])
            )
            for block in transformer.blocks
        ]
        try:
            sampler = SlidingWindowSampler(
                transformer,
                build_scheduler("unipc"),
                window_length=6,
                overlap=2,
                guidance=guidance,
                cache_text_image=cached,
            )
            assert len(sampler.plan(14)) == 3
            results[cached] = sampler(*args, num_inference_steps=4, progress=False)
        finally:
            for hook in hooks:
                hook.remove()
        projection_batches[cached] = calls
    blocks = len(transformer.blocks)
    assert projection_batches[False] == [3] * blocks * 6 + [1] * blocks * 6  # every window, every step
    assert projection_batches[True] == [3] * blocks + [1] * blocks  # first guided call, first single call
    torch.testing.assert_close(results[True], results[False], rtol=1e-5, atol=1e-6)


def test_a_cross_attention_cache_refuses_another_batch_layout(transformer) -> None:
    from wan.models import CrossAttentionCache

    cache = CrossAttentionCache()
    inputs = {
        "hidden_states": torch.randn(3, 36, 2, H, W),
        "timestep": torch.full((3,), 500.0),
        "encoder_hidden_states": torch.randn(3, 5, 32),
        "encoder_hidden_states_image": torch.randn(3, 5, 32),
        "audio_embeds": torch.randn(3, 8, 768),
        "context_cache": cache,
    }
    with torch.no_grad():
        first = transformer(**inputs).sample
        again = transformer(**inputs).sample
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        single = {k: v[-1:] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with pytest.raises(ValueError, match="one cache per batch layout"):
            transformer(**single)
