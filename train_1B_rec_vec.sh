#!/usr/bin/env bash
# Train: Wan2.1 1.3B StableAvatar on mixed 832x480 and 480x832 batches.
# One machine, all GPUs listed in accelerate_config/accelerate_config_machine_1B_single.yaml (edit num_processes).
# The model folder comes from: python -m wan.convert --base_only ... (a Wan base with fresh audio modules) or a
# converted StableAvatar folder to finetune. Data lists come from prepare_dataset.py. Extra flags pass through.
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
accelerate launch --config_file accelerate_config/accelerate_config_machine_1B_single.yaml \
  train_1B_rec_vec.py \
  --pretrained_model_name_or_path="${MODEL_DIR:-checkpoints/Wan2.1-1.3B-base}" \
  --train_data_rec_dir="talking_face_data/video_rec_path.txt" \
  --train_data_vec_dir="talking_face_data/video_vec_path.txt" \
  --validation_reference_path="examples/case-1/reference.png" \
  --validation_driven_audio_path="examples/case-1/audio.wav" \
  --output_dir="${OUTPUT_DIR:-outputs/train_1B_rec_vec}" \
  --video_sample_n_frames=81 \
  --train_batch_size=1 \
  --gradient_accumulation_steps=1 \
  --checkpointing_steps=2000 \
  --checkpoints_total_limit=5 \
  --validation_steps=500 \
  --lr_warmup_steps=100 \
  --mixed_precision="bf16" \
  --gradient_checkpointing \
  --max_grad_norm=0.05 \
  --resume_from_checkpoint=latest \
  "$@"
