#!/usr/bin/env bash
# Train: LoRA (rank 128, alpha 64) of the 1.3B model on 832x480 / 480x832, audio modules fully.
# Several machines: run this on every machine with NUM_MACHINES, NUM_PROCESSES, MACHINE_RANK, MAIN_PROCESS_IP set.
# The model folder comes from: python -m wan.convert --base_only ... (a Wan base with fresh audio modules) or a
# converted StableAvatar folder to finetune. Data lists come from prepare_dataset.py. Extra flags pass through.
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
accelerate launch --config_file accelerate_config/accelerate_config_machine_1B_multiple.yaml \
  --num_machines "${NUM_MACHINES:?set NUM_MACHINES}" --num_processes "${NUM_PROCESSES:?set NUM_PROCESSES (GPUs in all)}" \
  --machine_rank "${MACHINE_RANK:?set MACHINE_RANK (0 on the main machine)}" \
  --main_process_ip "${MAIN_PROCESS_IP:?set MAIN_PROCESS_IP}" --main_process_port "${MAIN_PROCESS_PORT:-29500}" \
  train_1B_rec_vec_lora.py \
  --pretrained_model_name_or_path="${MODEL_DIR:-checkpoints/Wan2.1-1.3B-base}" \
  --train_data_rec_dir="talking_face_data/video_rec_path.txt" \
  --train_data_vec_dir="talking_face_data/video_vec_path.txt" \
  --validation_reference_path="examples/case-1/reference.png" \
  --validation_driven_audio_path="examples/case-1/audio.wav" \
  --output_dir="${OUTPUT_DIR:-outputs/train_1B_rec_vec_lora}" \
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
  --learning_rate=1e-4 \
  --resume_from_checkpoint=latest \
  "$@"
