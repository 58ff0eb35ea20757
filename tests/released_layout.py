"""A miniature of the downloaded checkpoint layout, every file in the released (original) naming."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from tests.reference import formula_state_dict, load_json
from wan.loading.released import (
    CLIP_FILE,
    COMPONENT_CONFIG_FILE,
    T5_FILE,
    T5_TOKENIZER_DIR,
    VAE_FILE,
    ReleasedLayout,
)
from wan.loading.transformer import rename_reference_key
from wan.models import StableAvatarTransformer3DModel, config_from_reference
from wan.pipeline.tiny import byte_tokenizer

# The fixtures' tiny encoders: VAE z_dim 4, umT5 width 32, CLIP width 64. The DiT is sized to fit them.
TRANSFORMER_REFERENCE_CONFIG = {
    "model_type": "i2v",
    "patch_size": [1, 2, 2],
    "in_dim": 12,
    "out_dim": 4,
    "dim": 48,
    "ffn_dim": 64,
    "freq_dim": 256,
    "text_dim": 32,
    "num_heads": 2,
    "num_layers": 2,
    "eps": 1e-6,
}


def _reference_transformer_state_dict() -> dict[str, torch.Tensor]:
    """Our small DiT's weights under the released key names (the tiny fixture's names, our shapes)."""
    torch.manual_seed(0)
    config = {
        **config_from_reference(TRANSFORMER_REFERENCE_CONFIG),
        "image_dim": 64,
        "audio_adapter_heads": 2,
    }
    ours = StableAvatarTransformer3DModel(**config).state_dict()
    names = load_json("transformer_tiny_keys.json")
    state = {name: ours[rename_reference_key(name)].clone() for name in names}
    for name, tensor in state.items():
        if "_vocal" in name:  # released audio projections are trained, not zero
            tensor.normal_(std=0.2)
    return state


def write_released_layout(root: Path) -> ReleasedLayout:
    components = load_json("component_cases.json")
    base = root / "Wan2.1-Fun-V1.1-1.3B-InP"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(TRANSFORMER_REFERENCE_CONFIG))
    (root / "StableAvatar-1.3B").mkdir()
    transformer_path = root / "StableAvatar-1.3B" / "transformer3d-square.pt"
    torch.save({"state_dict": _reference_transformer_state_dict()}, transformer_path)
    torch.save(formula_state_dict(components["vae"]["keys"]), base / VAE_FILE)

    tokenizer = byte_tokenizer()
    t5_keys = dict(components["t5"]["keys"])
    t5_keys["token_embedding.weight"] = [len(tokenizer), t5_keys["token_embedding.weight"][1]]
    torch.save(formula_state_dict(t5_keys), base / T5_FILE)
    tokenizer.save_pretrained(base / T5_TOKENIZER_DIR)
    torch.save(formula_state_dict(components["clip"]["keys"]), base / CLIP_FILE)

    sampler = load_json("sampler_cases.json")
    wav2vec_dir = root / "wav2vec2-base-960h"
    wav2vec2 = Wav2Vec2Model(Wav2Vec2Config(**sampler["wav2vec2_config"]))
    wav2vec2.load_state_dict(formula_state_dict(sampler["wav2vec2_keys"]))
    wav2vec2.save_pretrained(wav2vec_dir)
    Wav2Vec2FeatureExtractor(
        feature_size=1, padding_value=0.0, **sampler["feature_extractor"]
    ).save_pretrained(wav2vec_dir)

    configs = {
        "vae": {
            **components["vae"]["config"],
            "latents_mean": components["vae"]["latents_mean"],
            "latents_std": components["vae"]["latents_std"],
        },
        "t5": {**components["t5"]["config"], "vocab": len(tokenizer)},
        "clip": components["clip"]["config"],
    }
    (base / COMPONENT_CONFIG_FILE).write_text(json.dumps(configs))
    return ReleasedLayout(base, transformer_path, wav2vec_dir)
