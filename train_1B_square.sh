#!/usr/bin/env bash
# Train Wan2.1 1.3B StableAvatar at 512x512 on all GPUs of this machine (see scripts/train.sh for MODEL_DIR, OUTPUT_DIR, DATA_ROOT).
exec "$(dirname "$0")/scripts/train.sh" 1B_square "$@"
