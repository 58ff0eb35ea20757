"""Loading, batch semantics and training features of the StableAvatar transformer."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from tests.reference import load_json, relative_error
from wan.errors import CheckpointError
from wan.loading.transformer import convert_reference_state_dict, load_converted_state_dict
from wan.models import TINY, StableAvatarTransformer3DModel, config_from_reference


@pytest.mark.parametrize("manifest", ["stableavatar_1.3B_keys.json", "stableavatar_14B_keys.json"])
def test_released_checkpoint_keys_map_completely(manifest: str) -> None:
    """Every released key maps to one of our parameters with the same shape, and none of ours is left unset."""
    released = load_json(manifest)
    with torch.device("meta"):
        model = StableAvatarTransformer3DModel(**config_from_reference(released["config"]))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = convert_reference_state_dict(
        {k: torch.empty(v, device="meta") for k, v in released["keys"].items()}
    )
    assert len(converted) == len(released["keys"])
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    assert sum(v.numel() for v in model.parameters()) == released["num_params"]


def _tiny_model(seed: int = 0) -> StableAvatarTransformer3DModel:
    torch.manual_seed(seed)
    model = StableAvatarTransformer3DModel(**TINY)
    # The audio projections start at zero; make them matter so the tests see the audio path.
    for block in model.blocks:
        torch.nn.init.normal_(block.attn2.to_k_audio.weight, std=0.2)
        torch.nn.init.normal_(block.attn2.to_v_audio.weight, std=0.2)
    return model.eval()


def _inputs(batch: int, frames: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 36, frames, 4, 6, generator=generator),
        "timestep": torch.rand(batch, generator=generator) * 1000,
        "encoder_hidden_states": torch.randn(batch, 7, TINY["text_dim"], generator=generator),
        "encoder_hidden_states_image": torch.randn(batch, 257, TINY["image_dim"], generator=generator),
        "audio_embeds": torch.randn(batch, 2 * (4 * (frames - 1) + 1), 768, generator=generator),
    }


def test_missing_and_unexpected_keys_are_named() -> None:
    model = _tiny_model()
    state_dict = model.state_dict()
    partial = dict(state_dict)
    del partial["blocks.1.attn2.to_k_audio.weight"]
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn2\.to_k_audio\.weight"):
        load_converted_state_dict(model, partial)
    with pytest.raises(CheckpointError, match="blocks.0.cross_attn.k_extra"):
        convert_reference_state_dict({"blocks.0.cross_attn.k_extra.weight": torch.zeros(1)})
    bad_shape = {**state_dict, "proj_out.bias": torch.zeros(3)}
    with pytest.raises(CheckpointError, match="proj_out.bias"):
        load_converted_state_dict(model, bad_shape)


def test_base_checkpoint_without_audio_loads_when_allowed() -> None:
    model = _tiny_model()
    base = {k: v for k, v in model.state_dict().items() if "audio" not in k}
    with pytest.raises(CheckpointError):
        load_converted_state_dict(model, base)
    load_converted_state_dict(model, base, allow_missing_audio=True)


@pytest.mark.parametrize("batch", [2, 3])
def test_a_batch_is_independent_samples_by_default(batch: int) -> None:
    """No guidance layout unless asked: a batch of 3 is three clips, not [no audio, audio, audio]."""
    model = _tiny_model()
    inputs = _inputs(batch)
    with torch.no_grad():
        together = model(**inputs).sample
        singles = [model(**{k: v[i : i + 1] for k, v in inputs.items()}).sample for i in range(batch)]
    assert relative_error(together, torch.cat(singles)) < 1e-5


def test_audio_sources_give_the_published_guidance_layout() -> None:
    """`audio_sources=(None, 2, 2)`: the first sample gets no audio, the others the last sample's refined audio,
    and the adapter runs on the last sample only."""
    model = _tiny_model()
    inputs = _inputs(3)
    inputs["timestep"] = inputs["timestep"][:1].expand(3).clone()
    inputs["hidden_states"] = inputs["hidden_states"][:1].expand(3, -1, -1, -1, -1).clone()
    adapter_batches = []
    hook = model.audio_adapter.register_forward_hook(
        lambda m, args, out: adapter_batches.append(out.shape[0])
    )
    with torch.no_grad():
        layout = model(**inputs, audio_sources=(None, 2, 2)).sample
        hook.remove()
        independent = model(**inputs).sample
        other_audio = inputs["audio_embeds"].clone()
        other_audio[:2] = torch.randn_like(other_audio[:2])
        changed_first = model(**dict(inputs, audio_embeds=other_audio), audio_sources=(None, 2, 2)).sample
        silent = model(**{k: v[:1] for k, v in inputs.items()}, audio_sources=(None,)).sample
    assert adapter_batches == [1]
    assert relative_error(layout[2], independent[2]) < 1e-5
    assert relative_error(layout[1], independent[1]) > 1e-3
    assert relative_error(changed_first, layout) < 1e-6  # samples 0 and 1 ignore their own audio
    assert relative_error(layout[:1], silent) < 1e-5


def test_bad_audio_sources_are_a_clear_error() -> None:
    model = _tiny_model()
    with torch.no_grad(), pytest.raises(ValueError, match="audio_sources"):
        model(**_inputs(2), audio_sources=(None, 2))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    inputs = _inputs(1)
    grads = []
    for checkpointing in (False, True):
        model = _tiny_model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(**inputs).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert relative_error(grads[1], grads[0]) < 1e-5


def test_lora_adapter_attaches_to_the_dit_and_changes_only_lora_weights() -> None:
    model = _tiny_model()
    inputs = _inputs(1)
    with torch.no_grad():
        before = model(**inputs).sample
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora_params = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert any("blocks.0.attn1.to_q" in n for n in lora_params)
    with torch.no_grad():  # lora_B starts at zero: the model is unchanged
        assert relative_error(model(**inputs).sample, before) < 1e-6
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
        assert relative_error(model(**inputs).sample, before) > 1e-3


def test_save_and_load_pretrained_round_trip(tmp_path) -> None:
    model = _tiny_model()
    model.save_pretrained(tmp_path)
    loaded = StableAvatarTransformer3DModel.from_pretrained(tmp_path).eval()
    loaded_state = loaded.state_dict()
    assert all(torch.equal(tensor, loaded_state[key]) for key, tensor in model.state_dict().items())
    inputs = _inputs(1)
    with torch.no_grad():  # same weights; memory layout may pick other kernels, hence not bit-equal
        assert relative_error(loaded(**inputs).sample, model(**inputs).sample) < 1e-6


def test_from_pretrained_in_bfloat16_keeps_fp32_sensitive_modules(tmp_path) -> None:
    _tiny_model().save_pretrained(tmp_path)
    half = StableAvatarTransformer3DModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.proj_out.weight.dtype == torch.bfloat16
    assert half.scale_shift_table.dtype == torch.float32
    assert half.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    with torch.no_grad():
        out = half(**{k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _inputs(1).items()})
    assert torch.isfinite(out.sample.float()).all()
