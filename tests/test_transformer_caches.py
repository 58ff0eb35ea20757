"""diffusers' caches on the transformer alone (what diffusers' cache test mixins check for its own Wan model):
first-block cache, MagCache and pyramid attention broadcast enable, hook, run, isolate contexts and disable."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig
from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK
from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK

from wan.models import TINY, StableAvatarTransformer3DModel

# name -> (config factory, the hooks it installs)
CACHES = {
    "first_block": (lambda: FirstBlockCacheConfig(threshold=1.0), (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK)),
    "mag": (
        # Neutral ratios and a huge threshold: the second step always reuses the first one's residual.
        lambda: MagCacheConfig(
            num_inference_steps=2, retention_ratio=0.0, threshold=100.0, mag_ratios=[1.0, 1.0]
        ),
        (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK),
    ),
    "pyramid_attention": (
        # Timestep 500 lies in the default skip range (100, 800): every other call reuses self-attention.
        lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500
        ),
        (_PYRAMID_ATTENTION_BROADCAST_HOOK,),
    ),
}


def _model() -> StableAvatarTransformer3DModel:
    torch.manual_seed(0)
    model = StableAvatarTransformer3DModel(**TINY)
    for block in model.blocks:  # the audio projections start at zero; make the audio path matter
        torch.nn.init.normal_(block.attn2.to_k_audio.weight, std=0.2)
        torch.nn.init.normal_(block.attn2.to_v_audio.weight, std=0.2)
    return model.eval()


def _inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 36, 3, 4, 6, generator=generator),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 7, TINY["text_dim"], generator=generator),
        "encoder_hidden_states_image": torch.randn(1, 257, TINY["image_dim"], generator=generator),
        "audio_embeds": torch.randn(1, 18, 768, generator=generator),
    }


def _hook_count(model: torch.nn.Module, names: tuple[str, ...]) -> int:
    registries = [m._diffusers_hook for m in model.modules() if hasattr(m, "_diffusers_hook")]
    return sum(registry.get_hook(name) is not None for registry in registries for name in names)


@pytest.mark.parametrize("cache", CACHES)
def test_cache_enables_hooks_and_disables_cleanly(cache: str) -> None:
    config, hooks = CACHES[cache]
    model = _model()
    assert not model.is_cache_enabled
    model.enable_cache(config())
    assert model.is_cache_enabled
    assert _hook_count(model, hooks) > 0
    with pytest.raises(ValueError, match="Caching has already been enabled"):
        model.enable_cache(config())
    model.disable_cache()
    assert not model.is_cache_enabled
    assert _hook_count(model, hooks) == 0


@pytest.mark.parametrize("cache", CACHES)
@torch.no_grad()
def test_cache_reuses_work_on_the_second_call(cache: str) -> None:
    """The first call computes everything (same output as uncached); the second, on changed latents, is
    approximated from the cache, so it differs from the uncached result; after disable_cache it is exact."""
    config = CACHES[cache][0]
    model = _model()
    first, second = _inputs(), _inputs()
    second["hidden_states"] = second["hidden_states"] + torch.randn_like(second["hidden_states"])
    reference_first = model(**first).sample
    reference_second = model(**second).sample

    model.enable_cache(config())
    with model.cache_context("clip"):
        cached_first = model(**first).sample
        cached_second = model(**second).sample
    assert torch.allclose(cached_first, reference_first, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(cached_second).all()
    assert not torch.allclose(cached_second, reference_second, atol=1e-5)
    model._reset_stateful_cache()
    model.disable_cache()
    assert torch.equal(model(**second).sample, reference_second)


@pytest.mark.parametrize("cache", CACHES)
@torch.no_grad()
def test_cache_contexts_do_not_share_state(cache: str) -> None:
    """The first call in a fresh context is computed in full, whatever another context cached."""
    config = CACHES[cache][0]
    model = _model()
    model.enable_cache(config())
    with model.cache_context("one"):
        one = model(**_inputs(1)).sample
    with model.cache_context("two"):
        two = model(**_inputs(1)).sample
    assert torch.allclose(one, two, rtol=1e-5, atol=1e-6)
    model.disable_cache()
