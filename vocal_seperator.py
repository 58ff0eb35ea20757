"""Separate vocals from music with an MDX-Net ONNX model (e.g. Kim_Vocal_2.onnx), offline. `python vocal_seperator.py --help` lists every flag."""

from wan.cli import run_cli
from wan.preprocess.cli import vocal_separator_main

if __name__ == "__main__":
    raise SystemExit(run_cli(vocal_separator_main))
