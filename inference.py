"""Generate an audio-driven avatar video. `python inference.py --help` lists every flag."""

from wan.cli import run_cli
from wan.generate import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
