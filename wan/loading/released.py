"""The folder layout users of the published code download, and loading all of it into one pipeline.

```
checkpoints/
├── Wan2.1-Fun-V1.1-1.3B-InP/      config.json, diffusion_pytorch_model.safetensors, Wan2.1_VAE.pth,
│                                  models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/ (tokenizer),
│                                  models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth
├── StableAvatar-1.3B/             transformer3d-square.pt, transformer3d-rec-vec.pt
└── wav2vec2-base-960h/            a Hugging Face Wav2Vec2 folder
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ..errors import MissingFileError
from .audio_encoder import load_wav2vec2
from .image_encoder import clip_vision_config, load_clip_vision_encoder
from .text_encoder import load_umt5_encoder, umt5_config
from .transformer import load_stableavatar_transformer
from .vae import load_wan_vae, wan_vae_config

VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
# Optional, beside config.json: reference-style configs {"vae": ..., "t5": ..., "clip": ...} of encoders
# whose sizes differ from the released ones (home-made small models). The released files need none.
COMPONENT_CONFIG_FILE = "stableavatar_components.json"
# Wan's flow-matching schedule as the published sampler uses it.
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 5.0, "use_dynamic_shifting": False}


@dataclass
class ReleasedLayout:
    """Paths of one downloaded model. `component_configs` overrides the released encoder sizes; by default
    it is read from `COMPONENT_CONFIG_FILE` in the base folder when that file exists."""

    base_dir: Path
    transformer_path: Path | None
    wav2vec_dir: Path
    component_configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def required_files(self) -> list[Path]:
        files = [
            self.base_dir / "config.json",
            self.base_dir / VAE_FILE,
            self.base_dir / T5_FILE,
            self.base_dir / T5_TOKENIZER_DIR,
            self.base_dir / CLIP_FILE,
            self.wav2vec_dir / "config.json",
            self.wav2vec_dir / "preprocessor_config.json",
        ]
        if self.transformer_path is not None:
            files.append(self.transformer_path)
        return files

    def check(self) -> None:
        """Raise one MissingFileError naming every missing file."""
        missing = [str(path) for path in self.required_files() if not path.exists()]
        if missing:
            raise MissingFileError(
                "missing checkpoint files: "
                + ", ".join(missing)
                + " (see checkpoints/README.md for the layout)"
            )


def load_released_pipeline(layout: ReleasedLayout, dtype: torch.dtype = torch.float32, progress: bool = True):
    """Every component from the downloaded files, converted in memory, as a `StableAvatarPipeline`."""
    from ..pipeline.pipeline import StableAvatarPipeline  # the pipeline imports loading, not the reverse

    layout.check()
    configs = layout.component_configs
    config_file = layout.base_dir / COMPONENT_CONFIG_FILE
    if not configs and config_file.is_file():
        configs = json.loads(config_file.read_text())
    steps = tqdm(total=6, desc="loading checkpoints", unit="part", disable=not progress)

    def done(name: str) -> None:
        steps.set_postfix_str(name)
        steps.update()

    transformer = load_stableavatar_transformer(layout.base_dir, layout.transformer_path, dtype)
    done("transformer")
    vae_config = wan_vae_config(configs["vae"]) if "vae" in configs else None
    vae = load_wan_vae(layout.base_dir / VAE_FILE, vae_config)  # the VAE stays float32, as published
    done("vae")
    text_encoder = load_umt5_encoder(layout.base_dir / T5_FILE, umt5_config(configs.get("t5")), dtype)
    tokenizer = AutoTokenizer.from_pretrained(layout.base_dir / T5_TOKENIZER_DIR, local_files_only=True)
    done("text encoder")
    image_encoder = load_clip_vision_encoder(
        layout.base_dir / CLIP_FILE, clip_vision_config(configs.get("clip")), dtype
    )
    done("image encoder")
    audio_encoder, feature_extractor = load_wav2vec2(layout.wav2vec_dir)
    done("audio encoder")
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    done("scheduler")
    steps.close()
    return StableAvatarPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        transformer=transformer,
        scheduler=scheduler,
        audio_encoder=audio_encoder,
        audio_feature_extractor=feature_extractor,
    )
