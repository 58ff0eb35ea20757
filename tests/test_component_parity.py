"""The encoders whose released files use the original Wan naming, converted into maintained diffusers /
transformers classes, compute what the published code computes (reference fixtures, tiny sizes), and the
conversion covers the released sizes key for key."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file
from transformers import (
    CLIPVisionModel,
    UMT5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from tests.reference import formula_state_dict, load_json, load_tensors, relative_error
from wan.errors import CheckpointError, MissingFileError
from wan.loading.audio_encoder import load_wav2vec2
from wan.loading.image_encoder import (
    _clip_source,
    _ignored,
    clip_vision_config,
    load_clip_vision_encoder,
)
from wan.loading.state_dict import convert_state_dict
from wan.loading.text_encoder import _t5_source, load_umt5_encoder, umt5_config
from wan.loading.vae import (
    _vae_source_name,
    load_wan_vae,
    wan_vae_config,
)
from wan.pipeline.encoders import (
    decode_normalised_latents,
    encode_audio,
    encode_image,
    encode_to_normalised_latents,
)

TOLERANCE = 1e-4


def _case(component: str) -> dict:
    return load_json("component_cases.json")[component]


def _tensors() -> dict[str, torch.Tensor]:
    return load_tensors("component_cases.safetensors")


def _tiny_vae() -> AutoencoderKLWan:
    case = _case("vae")
    config = wan_vae_config(case["config"], case["latents_mean"], case["latents_std"])
    return load_wan_vae(formula_state_dict(case["keys"]), config)


def test_vae_encode_matches_reference(tmp_path):
    case = _case("vae")
    # Through a .pth file, as released (read back with weights_only).
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(formula_state_dict(case["keys"]), path)
    vae = load_wan_vae(path, wan_vae_config(case["config"], case["latents_mean"], case["latents_std"]))
    latents = encode_to_normalised_latents(vae, _tensors()["vae.video"])
    expected = _tensors()["vae.latents_mean_normalised"]
    assert latents.shape == expected.shape
    assert relative_error(latents, expected) <= TOLERANCE


def test_vae_decode_matches_reference():
    video = decode_normalised_latents(_tiny_vae(), _tensors()["vae.decode_in"])
    expected = _tensors()["vae.decode_out"]
    assert video.shape == expected.shape
    assert video.abs().max() <= 1.0
    assert relative_error(video, expected) <= TOLERANCE


def test_umt5_matches_reference_padding_included(tmp_path):
    case = _case("t5")
    path = tmp_path / "t5.safetensors"
    save_file(formula_state_dict(case["keys"]), str(path))
    model = load_umt5_encoder(path, umt5_config(case["config"]))
    assert model.shared.weight is model.encoder.embed_tokens.weight
    tensors = _tensors()
    assert (tensors["t5.attention_mask"] == 0).any(), "the case should include padding"
    with torch.no_grad():
        out = model(input_ids=tensors["t5.input_ids"], attention_mask=tensors["t5.attention_mask"])
    assert out.last_hidden_state.shape == tensors["t5.out"].shape
    assert relative_error(out.last_hidden_state, tensors["t5.out"]) <= TOLERANCE


def test_clip_matches_reference_and_skips_text_tower():
    case = _case("clip")
    state_dict = formula_state_dict(case["keys"])
    # The released file also holds the text tower and the logit scale.
    state_dict["textual.token_embedding.weight"] = torch.zeros(4, 8)
    state_dict["log_scale"] = torch.zeros(())
    model = load_clip_vision_encoder(state_dict, clip_vision_config(case["config"]))
    image = _tensors()["clip.image"]  # [1, 3, 1, H, W]: one frame
    features = encode_image(model, image[:, :, 0])
    expected = _tensors()["clip.out"]
    assert features.shape == expected.shape
    assert relative_error(features, expected) <= TOLERANCE


_LOADERS: dict[str, Callable] = {
    "vae": lambda sd: load_wan_vae(sd, wan_vae_config(_case("vae")["config"], *_stats())),
    "t5": lambda sd: load_umt5_encoder(sd, umt5_config(_case("t5")["config"])),
    "clip": lambda sd: load_clip_vision_encoder(sd, clip_vision_config(_case("clip")["config"])),
}
_BOGUS = {"vae": "decoder.upsamples.3.bogus.weight", "t5": "blocks.0.bogus.weight", "clip": "visual.bogus"}


def _stats() -> tuple[list[float], list[float]]:
    return _case("vae")["latents_mean"], _case("vae")["latents_std"]


@pytest.mark.parametrize("component", ["vae", "t5", "clip"])
def test_missing_key_is_named(component):
    state_dict = formula_state_dict(_case(component)["keys"])
    dropped = sorted(state_dict)[len(state_dict) // 2]
    del state_dict[dropped]
    with pytest.raises(CheckpointError, match=re.escape(f"'{dropped}'")):
        _LOADERS[component](state_dict)


@pytest.mark.parametrize("component", ["vae", "t5", "clip"])
def test_unexpected_key_is_named(component):
    state_dict = formula_state_dict(_case(component)["keys"])
    state_dict[_BOGUS[component]] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=re.escape(f"'{_BOGUS[component]}'")):
        _LOADERS[component](state_dict)


def test_misshapen_key_is_named():
    state_dict = formula_state_dict(_case("t5")["keys"])
    state_dict["norm.weight"] = torch.ones(7)
    with pytest.raises(CheckpointError, match=re.escape("'norm.weight'")):
        _LOADERS["t5"](state_dict)


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError):
        load_wan_vae(tmp_path / "Wan2.1_VAE.pth")


# Released key sets, derived from the tiny fixture keys: same names (layer lists lengthened) and shapes with
# every tiny size replaced by its released size. The released code's modules were checked to have exactly
# these keys and shapes (VAE 194 keys / 126.9 M, umT5 242 / 5.68 B, CLIP vision tower 392 / 632.1 M).
_RELEASED_SIZES = {
    "vae": {3: 3, 1: 1, 4: 16, 8: 96, 16: 192, 32: 384, 64: 768, 96: 1152},  # dim 8 -> 96, z_dim 4 -> 16
    "t5": {64: 256384, 32: 4096, 48: 10240, 8: 32, 4: 64},  # vocab, dim, ffn, buckets, heads
    "clip": {64: 1280, 256: 5120, 192: 3840, 5: 257, 32: 1024, 14: 14, 3: 3, 1: 1},  # + 1 + 4 tokens
}
_LAYERS = {"vae": (None, 0), "t5": (r"blocks\.(\d+)\.", 24), "clip": (r"transformer\.(\d+)\.", 32)}
_RELEASED_KEY_COUNTS = {"vae": 194, "t5": 242, "clip": 392}


def _released_keys(component: str) -> dict[str, tuple[int, ...]]:
    sizes, (layer, count) = _RELEASED_SIZES[component], _LAYERS[component]
    released = {}
    for key, shape in _case(component)["keys"].items():
        scaled = [sizes[s] for s in shape]
        if key.startswith("conv1.") or key.startswith("encoder.head.2."):
            # Posterior channels: 2 * z_dim, which is 8 like the tiny base dim.
            scaled = [32 if s == 8 else size for s, size in zip(shape, scaled, strict=True)]
        m = re.search(layer, key) if layer else None
        if m is None:
            released[key] = tuple(scaled)
        elif m[1] == "0":
            for i in range(count):
                released[key[: m.start(1)] + str(i) + key[m.end(1) :]] = tuple(scaled)
    return released


def _released_model(component: str) -> tuple[torch.nn.Module, Callable, Callable[[str], bool]]:
    """Model at released size, its released-name rule and its ignore rule."""
    if component == "vae":
        return AutoencoderKLWan(**wan_vae_config()), lambda t: (_vae_source_name(t, 2), None), lambda k: False
    if component == "t5":
        return UMT5EncoderModel(umt5_config()), _t5_source, lambda k: False
    return CLIPVisionModel(clip_vision_config()), _clip_source, _ignored


@pytest.mark.parametrize("component", ["vae", "t5", "clip"])
def test_released_size_conversion_is_complete_and_shape_exact(component):
    released = _released_keys(component)
    assert len(released) == _RELEASED_KEY_COUNTS[component]
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in released.items()}
    with init_empty_weights():  # meta parameters: nothing is allocated
        model, source_of, ignored = _released_model(component)
    targets = model.state_dict()
    converted = convert_state_dict(state_dict, targets, source_of, ignored=ignored, what=component)
    assert set(converted) == set(targets)
    assert all(converted[key].shape == targets[key].shape for key in targets)


def test_wav2vec2_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    reference = Wav2Vec2Model(Wav2Vec2Config(**load_json("sampler_cases.json")["wav2vec2_config"])).eval()
    reference.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(tmp_path)

    model, feature_extractor = load_wav2vec2(tmp_path)
    seconds = 2
    waveform = (np.random.default_rng(0).standard_normal(16000 * seconds) * 0.3 + 0.1).astype(np.float32)
    features = encode_audio(model, feature_extractor, torch.from_numpy(waveform))

    normalised = (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
    with torch.no_grad():
        expected = reference(torch.from_numpy(normalised)[None]).last_hidden_state
    assert features.shape == (1, expected.shape[1], 768)
    assert abs(features.shape[1] - 50 * seconds) <= 1
    assert relative_error(features, expected) <= TOLERANCE


def test_wav2vec2_missing_folder(tmp_path):
    with pytest.raises(MissingFileError):
        load_wav2vec2(tmp_path / "wav2vec2-base-960h")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="config.json"):
        load_wav2vec2(tmp_path / "empty")
