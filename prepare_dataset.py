"""Turn raw talking-head videos into the talking_face_data training layout. `python prepare_dataset.py --help` lists every flag."""

from wan.cli import run_cli
from wan.preprocess.cli import prepare_dataset_main

if __name__ == "__main__":
    raise SystemExit(run_cli(prepare_dataset_main))
