"""Train Wan2.1 1.3B StableAvatar at 512x512. `--help` lists every flag."""

from wan.training.cli import main_for_preset

if __name__ == "__main__":
    raise SystemExit(main_for_preset("1B_square"))
