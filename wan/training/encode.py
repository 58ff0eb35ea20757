"""Frozen encoders applied to a training batch.

What the encoders produce is deterministic (`EncodedBatch`): the VAE posterior of the clip and of the
conditioning video (reference frame + zeros), the text, CLIP and wav2vec2 features and the masks. It can be
cached on disk once (`wan.training.precompute`) so training runs without loading the encoders. The
per-step randomness (posterior samples, noise) is drawn from the step's generator.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..pipeline.conditioning import first_frame_mask
from ..pipeline.encoders import encode_audio, encode_image, encode_prompts, latent_stats
from ..pipeline.pipeline import StableAvatarPipeline


@dataclass
class EncodedBatch:
    """Tensors of a batch of B clips of T frames (F = (T-1)/4 + 1 latent frames).

    latent_mean, latent_std: `[B, 16, F, h, w]` VAE posterior of the clip, mean normalised per channel.
    condition_mean, condition_std: the same for (reference frame, zeros...).
    text: `[B, L, text_dim]` (zero-padded); image: `[B, 257, image_dim]`; audio: `[B, Na, 768]`.
    face_masks, lip_masks: `[B, 1, T, H, W]`.
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    condition_mean: torch.Tensor
    condition_std: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor
    audio: torch.Tensor
    face_masks: torch.Tensor
    lip_masks: torch.Tensor

    @property
    def num_video_frames(self) -> int:
        return self.face_masks.shape[2]

    def to(self, device: torch.device | str) -> EncodedBatch:
        return EncodedBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def save(self, path) -> None:
        """Writes to a temporary name first, so an interrupted run never leaves a truncated file behind."""
        staging = Path(path).with_name(Path(path).name + ".partial")
        save_file({f.name: getattr(self, f.name).contiguous().cpu() for f in fields(self)}, str(staging))
        staging.replace(path)

    @classmethod
    def load(cls, path) -> EncodedBatch:
        return cls(**load_file(str(path)))

    @classmethod
    def stack(cls, items: list[EncodedBatch]) -> EncodedBatch:
        def cat(name: str) -> torch.Tensor:
            tensors = [getattr(item, name) for item in items]
            if name == "text":  # prompts differ in length: zero-pad (the DiT pads to 512 with zeros anyway)
                longest = max(t.shape[1] for t in tensors)
                tensors = [torch.nn.functional.pad(t, (0, 0, 0, longest - t.shape[1])) for t in tensors]
            return torch.cat(tensors)

        return cls(**{f.name: cat(f.name) for f in fields(cls)})

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior samples: clip latents `[B, 16, F, h, w]` and the DiT's conditioning `[B, 20, F, h, w]`
        (first-frame mask + sampled reference latents), as the published trainer draws them."""
        latents = self.latent_mean + self.latent_std * _randn_like(self.latent_mean, generator)
        reference = self.condition_mean + self.condition_std * _randn_like(self.condition_mean, generator)
        batch, _, frames, h, w = reference.shape
        mask = first_frame_mask(frames, h, w).to(reference).expand(batch, -1, -1, -1, -1)
        return latents, torch.cat([mask, reference], dim=1)


def _randn_like(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn on the CPU so a run is reproducible on any device.
    return torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor)


@torch.no_grad()
def _posterior(pipe: StableAvatarPipeline, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised posterior mean, posterior std). The std stays in raw VAE units on purpose: the published
    trainer's VAE normalises only `mu` and keeps `log_var` as the encoder gives it, so its samples are
    `(mu - mean) / std + exp(log_var / 2) * noise`."""
    vae = pipe.vae
    parameter = next(vae.parameters())
    posterior = vae.encode(video.to(parameter.device, parameter.dtype)).latent_dist
    posterior_mean = posterior.mean.float()
    mean, std = latent_stats(vae, posterior_mean)
    return ((posterior_mean - mean) / std).cpu(), posterior.std.float().cpu()


@torch.no_grad()
def encode_batch(pipe: StableAvatarPipeline, batch: dict) -> EncodedBatch:
    """Encode a collated dataset batch (`pixel_values` `[B, T, 3, H, W]`, `audio` `[B, S]`, `prompt` list)."""
    video = batch["pixel_values"].permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W]
    latent_mean, latent_std = _posterior(pipe, video)
    conditioning = torch.zeros_like(video)
    conditioning[:, :, 0] = video[:, :, 0]
    condition_mean, condition_std = _posterior(pipe, conditioning)
    text_device = next(pipe.text_encoder.parameters()).device
    text = encode_prompts(pipe.tokenizer, pipe.text_encoder, list(batch["prompt"]), text_device)
    image = encode_image(pipe.image_encoder, video[:, :, 0])
    audio = torch.cat(
        [
            encode_audio(pipe.audio_encoder, pipe.audio_feature_extractor, clip).float().cpu()
            for clip in batch["audio"]
        ]
    )
    return EncodedBatch(
        latent_mean,
        latent_std,
        condition_mean,
        condition_std,
        text,
        image,
        audio,
        batch["face_masks"].float(),
        batch["lip_masks"].float(),
    )
