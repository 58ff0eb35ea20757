#!/usr/bin/env bash
# Train Wan2.1 1.3B StableAvatar on mixed 832x480 and 480x832 batches on all GPUs of this machine (see scripts/train.sh for MODEL_DIR, OUTPUT_DIR, DATA_ROOT).
exec "$(dirname "$0")/scripts/train.sh" 1B_rec_vec "$@"
