#!/usr/bin/env bash
# Train LoRA (rank 128, alpha 64) of the 1.3B model on 832x480 / 480x832, audio modules fully on all GPUs of this machine (see scripts/train.sh for MODEL_DIR, OUTPUT_DIR, DATA_ROOT).
exec "$(dirname "$0")/scripts/train.sh" 1B_rec_vec_lora "$@"
