"""diffusers' conventions on the model and the loading path: LoRA scale, no unused inputs, current arguments."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from peft import LoraConfig

from tests.reference import relative_error
from wan.generate import DEMO_MODEL_DIR, build_parser, load_pipeline
from wan.models import TINY, StableAvatarTransformer3DModel


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 36, 3, 4, 6, generator=generator),
        "timestep": torch.tensor([400.0]),
        "encoder_hidden_states": torch.randn(1, 7, TINY["text_dim"], generator=generator),
        "encoder_hidden_states_image": torch.randn(1, 257, TINY["image_dim"], generator=generator),
        "audio_embeds": torch.randn(1, 18, 768, generator=generator),
    }


@torch.no_grad()
def test_attention_kwargs_scale_scales_the_lora_adapter() -> None:
    """`attention_kwargs={"scale": s}` (diffusers' LoRA convention): 0 is the base model, 1 the full adapter,
    and the scale applies to that call only."""
    torch.manual_seed(0)
    model = StableAvatarTransformer3DModel(**TINY).eval()
    inputs = _inputs()
    base = model(**inputs).sample
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.1)
    full = model(**inputs).sample
    assert relative_error(full, base) > 1e-3
    off = model(**inputs, attention_kwargs={"scale": 0.0}).sample
    half = model(**inputs, attention_kwargs={"scale": 0.5}).sample
    assert relative_error(off, base) < 1e-6
    assert relative_error(half, full) > 1e-4 and relative_error(half, base) > 1e-4
    assert relative_error(model(**inputs).sample, full) < 1e-6  # the scale did not stick


def test_the_model_has_no_unused_inputs_and_one_meaning_per_name() -> None:
    """No forward input without a caller (`audio_context`), and `encode_audio` names only the wav2vec2 encoder:
    the model's adapter step is `compute_audio_context`."""
    parameters = inspect.signature(StableAvatarTransformer3DModel.forward).parameters
    assert "audio_context" not in parameters
    assert not hasattr(StableAvatarTransformer3DModel, "encode_audio")
    assert hasattr(StableAvatarTransformer3DModel, "compute_audio_context")


@pytest.mark.skipif(not DEMO_MODEL_DIR.is_dir(), reason="the bundled demo model is not present")
def test_the_main_job_loads_its_model_without_deprecation_warnings() -> None:
    """What `bash inference.sh` loads (the demo model folder) prints no `torch_dtype` deprecation warning."""
    args = build_parser().parse_args(
        ["--validation_reference_path", "x.png", "--validation_driven_audio_path", "x.wav"]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_pipeline(args, torch.float32)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "torch_dtype" in m], messages
