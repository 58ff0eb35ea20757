"""A randomly initialised pipeline of the real architecture at toy size: for tests, benchmarks and for
trying the program before any weights are downloaded. Its videos are noise-like, not faces."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from ..generation_settings import SAMPLE_RATE
from ..models import TINY, StableAvatarTransformer3DModel
from .pipeline import StableAvatarPipeline


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer that needs no download: one token per UTF-8 byte, `</s>` appended, `<pad>` = 0."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_small_encoders(
    text_dim: int,
    image_dim: int,
    *,
    text_kv: int,
    text_ffn: int,
    text_layers: int,
    image_size: int,
    image_ffn: int,
) -> dict:
    """Tokenizer, umT5, CLIP vision tower, wav2vec2 (768 wide, one layer) and its feature extractor at small
    size with random weights, frozen; drawn from torch's global generator in that order (seed it first)."""
    tokenizer = byte_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_dim,
            d_kv=text_kv,
            d_ff=text_ffn,
            num_layers=text_layers,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
    )
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            image_size=image_size,
            patch_size=14,
            hidden_size=image_dim,
            intermediate_size=image_ffn,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
    )
    audio_encoder = Wav2Vec2Model(
        Wav2Vec2Config(
            hidden_size=768,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            conv_dim=[32] * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=16,
            apply_spec_augment=False,
        )
    )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True
    )
    for module in (text_encoder, image_encoder, audio_encoder):
        module.eval().requires_grad_(False)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "image_encoder": image_encoder,
        "audio_encoder": audio_encoder,
        "audio_feature_extractor": feature_extractor,
    }


def build_tiny_pipeline(seed: int = 0, audio_strength: float = 0.2) -> StableAvatarPipeline:
    """All eight components at toy size with random weights (seeded). The audio projections, zero at
    initialisation, get `audio_strength`-scaled random values so the audio path is exercised."""
    torch.manual_seed(seed)
    encoders = build_small_encoders(
        TINY["text_dim"],
        TINY["image_dim"],
        text_kv=8,
        text_ffn=48,
        text_layers=1,
        image_size=28,
        image_ffn=64,
    )
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    with torch.no_grad():  # a trained VAE's encoder is nearly deterministic: posterior std e^-5
        log_variance = vae.quant_conv
        log_variance.weight[vae.config.z_dim :] = 0.0
        log_variance.bias[vae.config.z_dim :] = -10.0
    transformer = StableAvatarTransformer3DModel(**TINY)
    for block in transformer.blocks:
        torch.nn.init.normal_(block.attn2.to_k_audio.weight, std=audio_strength)
        torch.nn.init.normal_(block.attn2.to_v_audio.weight, std=audio_strength)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    for module in (vae, transformer):
        module.eval().requires_grad_(False)
    return StableAvatarPipeline(vae=vae, transformer=transformer, scheduler=scheduler, **encoders)
