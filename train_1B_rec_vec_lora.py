"""Train LoRA (rank 128, alpha 64) of the 1.3B model on 832x480 / 480x832, audio modules fully. `--help` lists every flag."""

from wan.training.cli import main_for_preset

if __name__ == "__main__":
    raise SystemExit(main_for_preset("1B_rec_vec_lora"))
