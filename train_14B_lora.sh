#!/usr/bin/env bash
# Train LoRA of the 14B model, audio modules fully on all GPUs of this machine (see scripts/train.sh for MODEL_DIR, OUTPUT_DIR, DATA_ROOT).
exec "$(dirname "$0")/scripts/train.sh" 14B_lora "$@"
