#!/usr/bin/env bash
# The main job: the bundled demo model's one-step student (checkpoints/demo-student: the transformer of the toy
# demo model in checkpoints/demo, trained on synthetic cartoon faces, distilled to one forward per window)
# animates the bundled example face with the bundled speech; writes outputs/demo/video_with_audio.mp4 (64x64,
# 25 fps, with the audio). Size, steps, guidance and windows come from the folder's generation_settings.json;
# any inference.py flag given here overrides them (--model_dir checkpoints/demo: the 5-step guided teacher).
# For real results use the released model (README: "Using the released model"): convert it once and pass
# --model_dir with the photo of a person.
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
python3 inference.py \
  --model_dir checkpoints/demo-student \
  --validation_reference_path examples/demo-face/reference.png \
  --validation_driven_audio_path examples/case-1/audio.wav \
  --validation_prompts "$(cat examples/demo-face/prompt.txt)" \
  --output_dir outputs/demo \
  --seed 42 \
  "$@"
