"""Train Wan2.1 14B StableAvatar on 512x512, 832x480 and 480x832 with DeepSpeed ZeRO-2. `--help` lists every flag."""

from wan.training.cli import main_for_preset

if __name__ == "__main__":
    raise SystemExit(main_for_preset("14B"))
