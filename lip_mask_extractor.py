"""Write lip masks (MediaPipe Face Mesh, offline) for FOLDER_ROOT/<clip>/images/. `--help` lists the flags."""

from wan.cli import run_cli
from wan.preprocess.cli import lip_mask_extractor_main

if __name__ == "__main__":
    raise SystemExit(run_cli(lip_mask_extractor_main))
