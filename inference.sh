#!/usr/bin/env bash
# The bundled example. With downloaded weights, convert them once (see checkpoints/README.md) and pass
# --model_dir instead of --random_tiny_model, at 512x512 and 50 steps (the defaults).
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
python3 inference.py \
  --random_tiny_model \
  --validation_reference_path examples/case-1/reference.png \
  --validation_driven_audio_path examples/case-1/audio.wav \
  --validation_prompts "$(cat examples/case-1/prompt.txt)" \
  --output_dir outputs/case-1 \
  --width 128 --height 128 \
  --sample_steps 4 \
  --overlap_window_length 5 \
  --clip_sample_n_frames 81 \
  --seed 42 \
  "$@"
