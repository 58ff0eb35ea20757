"""Train LoRA of the 14B model, audio modules fully. `--help` lists every flag."""

from wan.training.cli import main_for_preset

if __name__ == "__main__":
    raise SystemExit(main_for_preset("14B_lora"))
