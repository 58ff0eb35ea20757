#!/usr/bin/env bash
# Train Wan2.1 14B StableAvatar on 512x512, 832x480 and 480x832 with DeepSpeed ZeRO-2 on all GPUs of this machine (see scripts/train.sh for MODEL_DIR, OUTPUT_DIR, DATA_ROOT).
exec "$(dirname "$0")/scripts/train.sh" 14B "$@"
