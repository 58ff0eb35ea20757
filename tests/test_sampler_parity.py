"""The sliding-window sampler reproduces the published long-video loop (fixtures: sampler_cases)."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from tests.reference import formula_state_dict, load_json, load_tensors, relative_error
from wan.loading.transformer import convert_reference_state_dict, load_converted_state_dict
from wan.models import StableAvatarTransformer3DModel, config_from_reference
from wan.pipeline.encoders import encode_audio
from wan.pipeline.guidance import PublishedGuidance
from wan.pipeline.sampler import SamplingConditions, SlidingWindowSampler
from wan.pipeline.windows import Window, window_audio_span

TOLERANCE = 1e-4
CASES = load_json("sampler_cases.json")


class CountingTransformer(torch.nn.Module):
    """Wraps the transformer to record calls and what the first call received."""

    def __init__(self, model: StableAvatarTransformer3DModel) -> None:
        super().__init__()
        self.model = model
        self.calls: list[dict[str, torch.Tensor]] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def forward(self, **kwargs):
        self.calls.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        return self.model(**kwargs)


@pytest.fixture(scope="module")
def tiny_transformer() -> StableAvatarTransformer3DModel:
    with torch.device("meta"):
        model = StableAvatarTransformer3DModel(**config_from_reference(CASES["transformer_config"]))
    keys = load_json("transformer_tiny_keys.json")
    load_converted_state_dict(model, convert_reference_state_dict(formula_state_dict(keys)))
    model.rebuild_buffers()
    return model.eval()


@pytest.fixture(scope="module")
def tiny_wav2vec2() -> tuple[Wav2Vec2Model, Wav2Vec2FeatureExtractor]:
    model = Wav2Vec2Model(Wav2Vec2Config(**CASES["wav2vec2_config"])).eval()
    model.load_state_dict(formula_state_dict(CASES["wav2vec2_keys"]), strict=True)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, padding_value=0.0, **CASES["feature_extractor"])
    return model, extractor


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    config = {k: v for k, v in CASES["scheduler"].items() if k != "class"}
    return FlowMatchEulerDiscreteScheduler(**config)


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda case: case["name"])
def test_sampler_matches_reference(case: dict, tiny_transformer, tiny_wav2vec2) -> None:
    tensors = {
        k.split(".", 1)[1]: v
        for k, v in load_tensors("sampler_cases.safetensors").items()
        if k.startswith(case["name"] + ".")
    }
    window_length = (case["clip_length"] - 1) // 4 + 1
    samples_per_frame = CASES["sample_rate"] // CASES["fps"]
    wav2vec2, extractor = tiny_wav2vec2
    encoded: list[Window] = []

    def window_audio(window: Window) -> torch.Tensor:
        encoded.append(window)
        start, length = window_audio_span(window, samples_per_frame)
        chunk = tensors["audio"][start : start + length]
        return encode_audio(wav2vec2, extractor, torch.nn.functional.pad(chunk, (0, length - chunk.numel())))

    transformer = CountingTransformer(tiny_transformer)
    sampler = SlidingWindowSampler(
        transformer,
        _scheduler(),
        window_length=window_length,
        overlap=case["overlap_window_length"],
        weighting=case["overlapping_weight_scheme"],
        guidance=PublishedGuidance(
            text_scale=case["text_guide_scale"], audio_scale=case["audio_guide_scale"]
        ),
    )
    conditions = SamplingConditions(
        prompt_embeds=tensors["prompt_embeds"][None],
        negative_prompt_embeds=tensors["negative_prompt_embeds"][None],
        image_embeds=tensors["clip_fea"],
        condition=tensors["y_first_call"][:1],
    )
    out = sampler(tensors["noise"], conditions, window_audio, case["num_inference_steps"], progress=False)

    assert len(sampler.plan(case["latent_frames"])) == case["windows_per_step"]
    assert len(transformer.calls) == case["transformer_calls"]
    assert [float(t) for t in sampler.scheduler.timesteps] == pytest.approx(case["timesteps"], rel=1e-6)
    first = transformer.calls[0]
    assert relative_error(first["audio_embeds"], tensors["audio_embeds_first_call"]) <= TOLERANCE
    assert relative_error(first["hidden_states"][:, 16:], tensors["y_first_call"]) <= TOLERANCE
    # wav2vec2 ran once per window, not once per window per step.
    assert len(encoded) == case["windows_per_step"]
    assert relative_error(out, tensors["out_latents"]) <= TOLERANCE
