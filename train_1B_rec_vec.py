"""Train Wan2.1 1.3B StableAvatar on mixed 832x480 and 480x832 batches. `--help` lists every flag."""

from wan.training.cli import main_for_preset

if __name__ == "__main__":
    raise SystemExit(main_for_preset("1B_rec_vec"))
