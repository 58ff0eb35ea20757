"""Training cost: measured step time and peak memory on a small config, and a computed memory table for
the released sizes.

    python -m benchmarks.train_step [--steps 5] [--skip-measure] [--skip-table]

Measured: the tiny model (same architecture) on 32x32 clips of 21 frames, full finetune and LoRA, with and
without gradient checkpointing, each in a fresh process (peak resident memory includes the encoders).

Computed (no weights, no compute: the model runs on the meta device): parameter counts and the activation
memory backward needs, counted tensor by tensor with saved-tensor hooks. Attention is counted as a flash
kernel stores it (q, k, v, output and the log-sum-exp), as on a GPU with flash attention or cuDNN SDPA,
not as the CPU's math kernel would. Columns assume bf16 autocast with fp32 master weights (accelerate), AdamW
(two fp32 states per trained parameter), batch 1, 81 frames, and features precomputed (encoders not loaded;
loading them adds umT5-XXL 10.6 GiB in bf16, CLIP 1.2 GiB, wav2vec2 0.2 GiB, VAE 0.5 GiB).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.measure import print_table, run_isolated

GIB = 2**30


# ---- measured ---------------------------------------------------------------------------------------
def measure_step(lora: bool, checkpointing: bool, steps: int) -> dict:
    from tests.training_helpers import SIZE, tiny_config, write_tiny_model
    from wan.training.synthetic import write_dataset
    from wan.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = write_dataset(root / "data", 1, 1.6, (SIZE, SIZE), seed=1)
        model = write_tiny_model(root / "model")
        config = tiny_config(
            root / "run",
            data,
            pipeline_dir=model,
            max_train_steps=steps + 1,
            lora_rank=8 if lora else None,
            gradient_checkpointing=checkpointing,
        )
        trainer = Trainer(config)
        trainer.max_train_steps = 1  # warm-up step, not timed
        trainer.train()
        trainer.max_train_steps = steps + 1
        started = time.perf_counter()
        trainer.train()
        seconds = (time.perf_counter() - started) / steps
    return {"mode": "LoRA r8" if lora else "full", "checkpointing": checkpointing, "s_per_step": seconds}


# ---- computed -------------------------------------------------------------------------------------
class _FlashLikeAttention(torch.autograd.Function):
    """Attention whose backward keeps what a flash kernel keeps: q, k, v, output, log-sum-exp."""

    @staticmethod
    def forward(ctx, query, key, value):  # [B, L, H, D]
        out = torch.empty_like(query)
        lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: counting only
        raise NotImplementedError


def _flash_like_dispatch(query, key, value, *args, **kwargs):
    return _FlashLikeAttention.apply(query, key, value)


@contextmanager
def flash_like_attention():
    import diffusers.models.transformers.transformer_wan as wan_module

    import wan.models.attention as ours

    saved = (ours.dispatch_attention_fn, wan_module.dispatch_attention_fn)
    ours.dispatch_attention_fn = wan_module.dispatch_attention_fn = _flash_like_dispatch
    try:
        yield
    finally:
        ours.dispatch_attention_fn, wan_module.dispatch_attention_fn = saved


def saved_activation_bytes(
    config: dict, num_layers: int, frames: int, height: int, width: int, lora: bool
) -> int:
    """Bytes autograd keeps for backward (parameters themselves excluded), batch 1, bf16 activations."""
    from wan.loading.lora import is_audio_parameter, lora_config
    from wan.models import StableAvatarTransformer3DModel

    with torch.device("meta"):
        model = StableAvatarTransformer3DModel(**{**config, "num_layers": num_layers})
    if lora:
        model.add_adapter(lora_config(128, 64))
    for name, parameter in model.named_parameters():
        trained = (
            ("lora_" in name or is_audio_parameter(name)) if lora else ("blocks." in name or "audio" in name)
        )
        parameter.requires_grad_(trained)
    parameters = {id(p) for p in model.parameters()}
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in parameters and id(base) not in parameters:
            total += tensor.numel() * tensor.element_size()
        return tensor

    latent = (1, 36, (frames - 1) // 4 + 1, height // 8, width // 8)
    inputs = {
        "hidden_states": torch.empty(latent, device="meta"),
        "timestep": torch.empty(1, device="meta"),
        "encoder_hidden_states": torch.empty(1, 512, config["text_dim"], device="meta"),
        "encoder_hidden_states_image": torch.empty(1, 257, config["image_dim"], device="meta"),
        "audio_embeds": torch.empty(1, 2 * frames + 8, config["audio_dim"], device="meta"),
    }
    with (
        flash_like_attention(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        model(**inputs)
    return total


def memory_row(name: str, config: dict, size: tuple[int, int], lora: bool, checkpointing: bool) -> dict:
    from wan.loading.lora import is_audio_parameter
    from wan.models import StableAvatarTransformer3DModel

    width, height = size
    with torch.device("meta"):
        model = StableAvatarTransformer3DModel(**config)
    total = sum(p.numel() for p in model.parameters())
    layers = config["num_layers"]
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    if lora:
        from wan.loading.lora import lora_config

        with torch.device("meta"):
            model.add_adapter(lora_config(128, 64))
        adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        trained = adapters + sum(
            p.numel() for n, p in model.named_parameters() if is_audio_parameter(n) and "lora_" not in n
        )
    else:
        adapters = 0
        trained = sum(p.numel() for n, p in model.named_parameters() if "blocks." in n or "audio" in n)
    one = saved_activation_bytes(config, 1, 81, height, width, lora)
    two = saved_activation_bytes(config, 2, 81, height, width, lora)
    per_block, outside = two - one, 2 * one - two
    tokens = 21 * (height // 16) * (width // 16)
    if checkpointing:  # each block keeps its bf16 input; one block at a time is recomputed
        activations = outside + per_block + layers * tokens * dim * 2
    else:
        activations = outside + layers * per_block
    weights, grads, adam = 4 * (total + adapters), 4 * trained, 8 * trained
    return {
        "model": name,
        "size": f"{width}x{height}",
        "mode": "LoRA r128" if lora else "full",
        "ckpt": "yes" if checkpointing else "no",
        "params_B": total / 1e9,
        "trained_B": trained / 1e9,
        "weights": weights / GIB,
        "grads+adam": (grads + adam) / GIB,
        "activations": activations / GIB,
        "total_GiB": (weights + grads + adam + activations) / GIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--skip-measure", action="store_true")
    parser.add_argument("--skip-table", action="store_true")
    args = parser.parse_args()
    if not args.skip_measure:
        rows = [
            run_isolated(measure_step, lora=lora, checkpointing=ckpt, steps=args.steps)
            for lora in (False, True)
            for ckpt in (False, True)
        ]
        print("measured, tiny model, 32x32, 21 frames, 2 CPU threads:")
        print_table(rows, ["mode", "checkpointing", "s_per_step", "peak_rss_mib"])
    if not args.skip_table:
        from wan.models import STABLEAVATAR_1_3B, STABLEAVATAR_14B

        rows = [
            memory_row(name, config, size, lora, ckpt)
            for name, config in (("1.3B", STABLEAVATAR_1_3B), ("14B", STABLEAVATAR_14B))
            for size in ((512, 512), (832, 480))
            for lora in (False, True)
            for ckpt in (True, False)
        ]
        print("\ncomputed per GPU, batch 1, 81 frames, bf16 autocast, AdamW, features precomputed (GiB):")
        print_table(
            rows,
            [
                "model",
                "size",
                "mode",
                "ckpt",
                "params_B",
                "trained_B",
                "weights",
                "grads+adam",
                "activations",
                "total_GiB",
            ],
        )
        print("DeepSpeed ZeRO-2 over N GPUs divides grads+adam by N; ZeRO-3 also the weights.")


if __name__ == "__main__":
    main()
