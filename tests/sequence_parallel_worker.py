"""Run under `torchrun --nproc_per_node 2`: the sequence-parallel transformer and sampler vs one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan.models.fsdp import local_parameter_count, shard_transformer  # noqa: E402
from wan.pipeline.guidance import build_guidance  # noqa: E402
from wan.pipeline.sampler import SamplingConditions, SlidingWindowSampler  # noqa: E402
from wan.pipeline.solvers import build_scheduler  # noqa: E402
from wan.pipeline.tiny import build_tiny_pipeline  # noqa: E402


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def inputs(batch: int, frames: int) -> dict:
    g = torch.Generator().manual_seed(frames)
    return {
        "hidden_states": torch.randn(batch, 36, frames, 4, 6, generator=g),
        "timestep": torch.rand(batch, generator=g) * 1000,
        "encoder_hidden_states": torch.randn(batch, 7, 32, generator=g),
        "encoder_hidden_states_image": torch.randn(batch, 5, 32, generator=g),
        "audio_embeds": torch.randn(batch, 2 * (4 * (frames - 1) + 1), 768, generator=g),
    }


def main() -> None:
    dist.init_process_group("gloo")
    output = Path(sys.argv[1])
    transformer = build_tiny_pipeline(seed=0).transformer
    cases = [(1, 3), (3, 6), (1, 1)]  # uneven split, the guidance triple, a rank with no frames
    with torch.no_grad():
        single = {case: transformer(**inputs(*case)).sample for case in cases}
        g = torch.Generator().manual_seed(5)
        conditions = SamplingConditions(
            torch.randn(1, 5, 32, generator=g),
            torch.randn(1, 6, 32, generator=g),
            torch.randn(1, 5, 32, generator=g),
            torch.randn(1, 20, 6, 4, 4, generator=g),
        )
        noise = torch.randn(1, 16, 10, 4, 4, generator=g)

        def audio(window):
            return torch.randn(
                1, 8 * window.length, 768, generator=torch.Generator().manual_seed(window.start)
            )

        def sample(guidance: str = "published") -> torch.Tensor:
            sampler = SlidingWindowSampler(
                transformer,
                build_scheduler("euler"),
                window_length=6,
                overlap=2,
                guidance=build_guidance(guidance),
            )
            return sampler(noise, conditions, audio, num_inference_steps=3, progress=False)

        video_single = sample()
        video_single_ang = sample("ang")  # Audio Native Guidance: the adapter on two samples of the batch
        seen = []
        transformer.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
        errors = {}
        for mode in ("ulysses", "ring", "all-gather"):  # all-gather last: the FSDP check below runs with it
            transformer.enable_sequence_parallel(mode=mode)
            for b, f in cases:
                errors[f"{mode} {b}x{f}"] = relative(transformer(**inputs(b, f)).sample, single[(b, f)])
            errors[f"{mode} sampler"] = relative(sample(), video_single)
            errors[f"{mode} sampler ang"] = relative(sample("ang"), video_single_ang)
        total = local_parameter_count(transformer)
        shard_transformer(transformer, "cpu")
        errors["sharded"] = relative(transformer(**inputs(*cases[0])).sample, single[cases[0]])
        share = local_parameter_count(transformer) / total
    # Tokens block 0 processed here for the three transformer cases (4x6 latents: 6 tokens per frame).
    record = {
        "rank": dist.get_rank(),
        "world": dist.get_world_size(),
        "errors": errors,
        "local_tokens": seen[:3],
        "parameter_share": share,
    }
    (output / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    # Both ranks leave together: a rank tearing gloo down while its peer still finishes the last collective
    # aborted once in a full run ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
