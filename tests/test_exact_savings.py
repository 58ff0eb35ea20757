"""The transformer's exact savings (`exact_savings`): packed text padding, block 0's self-attention once for a
guidance batch, audio key/value projections once per distinct source. Each equals the full computation."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName

from tests.reference import relative_error
from tests.test_transformer_caches import _model as audio_model
from wan.models import STABLEAVATAR_1_3B, TINY, CrossAttentionCache, StableAvatarTransformer3DModel
from wan.models.attention import TEXT_SEQ_LEN, compress_text_padding
from wan.pipeline.guidance import GuidanceInputs, build_guidance, transformer_forward

ROUND_OFF = 1e-6  # float32: measured 1e-7 to 5e-7 here


@pytest.fixture(scope="module")
def model() -> StableAvatarTransformer3DModel:
    model = audio_model()
    for block in model.blocks:  # a zero sample's audio keys are the bias: make it matter too
        torch.nn.init.normal_(block.attn2.to_k_audio.bias, std=0.2)
    return model


def _inputs(text_lengths: tuple[int, ...], seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batch = len(text_lengths)
    texts = [torch.randn(length, TINY["text_dim"], generator=generator) for length in text_lengths]
    return {
        "hidden_states": torch.randn(batch, 36, 3, 4, 6, generator=generator),
        "timestep": torch.tensor([500.0, 300.0, 700.0][:batch]),
        "encoder_hidden_states": torch.nn.utils.rnn.pad_sequence(texts, batch_first=True),
        "encoder_hidden_states_image": torch.randn(batch, 257, TINY["image_dim"], generator=generator),
        "audio_embeds": torch.randn(batch, 18, 768, generator=generator),
    }


def _both(model: StableAvatarTransformer3DModel, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The output with the savings, and with everything computed."""
    with torch.no_grad():
        saved = model(**inputs).sample
        model.exact_savings = False
        try:
            full = model(**inputs).sample
        finally:
            model.exact_savings = True
    return saved, full


def test_compress_text_padding_keeps_real_rows_and_one_weighted_pad_row() -> None:
    text = torch.zeros(3, 6, 4)
    text[0, :2] = 1.0
    text[1, [0, 2, 3, 5]] = 2.0  # a zero row inside counts as padding too
    packed, bias = compress_text_padding(text)
    assert packed.shape == (3, 5, 4)
    assert packed[0, :2].eq(1).all() and packed[0, 2:].eq(0).all()
    assert packed[1, :4].eq(2).all() and packed[1, 4].eq(0).all()
    assert packed.eq(0).all(dim=-1)[2].all()
    assert bias[0, :2].eq(0).all() and bias[0, 2] == pytest.approx(math.log(TEXT_SEQ_LEN - 2))
    assert bias[0, 3:].eq(-math.inf).all()
    assert bias[1, :4].eq(0).all() and bias[1, 4] == pytest.approx(math.log(TEXT_SEQ_LEN - 4))
    assert bias[2, 0] == pytest.approx(math.log(TEXT_SEQ_LEN)) and bias[2, 1:].eq(-math.inf).all()


@pytest.mark.parametrize("text_lengths", [(7,), (3, 11, 5), (TEXT_SEQ_LEN, 4)], ids=["one", "uneven", "full"])
def test_packed_text_equals_padded_text(model: StableAvatarTransformer3DModel, text_lengths: tuple) -> None:
    inputs = _inputs(text_lengths)
    cache = CrossAttentionCache()
    with torch.no_grad():
        model(**inputs, context_cache=cache)
    packed_len = max(text_lengths) + 1
    # What the blocks attend to, and what the cache keeps.
    assert cache.blocks[0]["text_key"].shape[1] == packed_len
    assert cache.blocks[0]["text_bias"].shape == (len(text_lengths), 1, 1, packed_len)
    saved, full = _both(model, **inputs)
    assert relative_error(saved, full) <= ROUND_OFF
    with torch.no_grad():  # the cached keys, values and bias give the same output again
        assert relative_error(model(**inputs, context_cache=cache).sample, full) <= ROUND_OFF


def test_text_stays_padded_where_the_backend_takes_no_float_mask(
    model: StableAvatarTransformer3DModel,
) -> None:
    assert model._packs_text()
    processor = model.blocks[1].attn2.processor
    processor._attention_backend = AttentionBackendName.FLASH
    try:
        assert not model._packs_text()
    finally:
        processor._attention_backend = None
    model.exact_savings = False
    try:
        assert not model._packs_text()
    finally:
        model.exact_savings = True


def _guidance_forward(model: StableAvatarTransformer3DModel, rule: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    inputs = GuidanceInputs(
        prompt_embeds=torch.randn(1, 9, TINY["text_dim"], generator=generator),
        negative_prompt_embeds=torch.randn(1, 4, TINY["text_dim"], generator=generator),
        image_embeds=torch.randn(1, 257, TINY["image_dim"], generator=generator),
        audio_embeds=torch.randn(1, 18, 768, generator=generator),
    )
    latents = torch.randn(1, 16, 3, 4, 6, generator=generator)
    condition = torch.randn(1, 20, 3, 4, 6, generator=generator)
    forward = transformer_forward(model, latents, condition, torch.tensor(600.0), 9)
    with torch.no_grad():
        return forward(build_guidance(rule).build_batch(inputs))


@pytest.mark.parametrize("rule", ["published", "ang"])
def test_guidance_batch_runs_block_0_self_attention_once(
    model: StableAvatarTransformer3DModel, rule: str
) -> None:
    batches: dict[int, list[int]] = {0: [], 1: []}
    handles = [
        model.blocks[index].attn1.register_forward_pre_hook(
            lambda module, args, index=index: batches[index].append(args[0].shape[0])
        )
        for index in batches
    ]
    try:
        saved = _guidance_forward(model, rule)
        assert batches == {0: [1], 1: [3]}
        model.exact_savings = False
        try:
            full = _guidance_forward(model, rule)
        finally:
            model.exact_savings = True
    finally:
        for handle in handles:
            handle.remove()
    assert batches == {0: [1, 3], 1: [3, 3]}
    assert relative_error(saved, full) <= ROUND_OFF


def test_audio_projections_run_once_per_distinct_source(model: StableAvatarTransformer3DModel) -> None:
    inputs = _inputs((5, 5, 8))
    inputs["hidden_states"] = inputs["hidden_states"][:1].expand(3, -1, -1, -1, -1)
    inputs["timestep"] = inputs["timestep"][:1].expand(3)
    rows: list[int] = []
    handle = model.blocks[0].attn2.to_k_audio.register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[:-1].numel())
    )
    try:
        saved, full = _both(model, **inputs, audio_sources=(None, 2, 2))
    finally:
        handle.remove()
    frame_tokens = rows[-1] // 3  # the full computation projects all three samples' tokens
    assert rows == [frame_tokens, 1, 3 * frame_tokens]  # the shared source once, one zero token
    assert relative_error(saved, full) <= ROUND_OFF
    audio_only = _both(model, **inputs, audio_sources=(None, None, None))
    assert relative_error(*audio_only) <= ROUND_OFF


def test_flop_counting_on_the_meta_device_still_runs() -> None:
    """Meta tensors hold no values to find the text padding in: the cost model counts the padded text."""
    from benchmarks.cost_model import forward_flops

    assert forward_flops({**STABLEAVATAR_1_3B, "num_layers": 1}, 64, 64, frames=5) > 0
