"""What differs between the published training scripts, as data instead of copies of a 1,500-line file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A training set-up: which data flags exist (and the size each trains at) and its defaults."""

    description: str
    data_flags: dict[str, tuple[int, int]]  # flag -> (width, height)
    learning_rate: float = 2e-5
    lora_rank: int | None = None
    lora_alpha: float = 64.0
    accelerate_config: str = "accelerate_config/accelerate_config_machine_1B_single.yaml"


SQUARE = {"--train_data_square_dir": (512, 512)}
REC_VEC = {"--train_data_rec_dir": (832, 480), "--train_data_vec_dir": (480, 832)}

PRESETS: dict[str, Preset] = {
    "1B_square": Preset("Wan2.1 1.3B StableAvatar at 512x512", SQUARE),
    "1B_rec_vec": Preset("Wan2.1 1.3B StableAvatar on mixed 832x480 and 480x832 batches", REC_VEC),
    "1B_rec_vec_lora": Preset(
        "LoRA (rank 128, alpha 64) of the 1.3B model on 832x480 / 480x832, audio modules fully",
        REC_VEC,
        lora_rank=128,
    ),
    "14B": Preset(
        "Wan2.1 14B StableAvatar on 512x512, 832x480 and 480x832 with DeepSpeed ZeRO-2",
        {**SQUARE, **REC_VEC},
        learning_rate=1e-4,
        accelerate_config="accelerate_config/accelerate_config_machine_14B_single.yaml",
    ),
    "14B_lora": Preset(
        "LoRA of the 14B model, audio modules fully",
        {**SQUARE, **REC_VEC},
        learning_rate=1e-4,
        lora_rank=128,
        accelerate_config="accelerate_config/accelerate_config_machine_14B_single.yaml",
    ),
}
