"""Extract a video's audio track as 16 kHz mono wav (or a folder of videos). `python audio_extractor.py --help` lists every flag."""

from wan.cli import run_cli
from wan.preprocess.cli import audio_extractor_main

if __name__ == "__main__":
    raise SystemExit(run_cli(audio_extractor_main))
