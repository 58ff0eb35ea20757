#!/usr/bin/env bash
# Distil a few-step student without guidance from a StableAvatar teacher (python -m wan.training.distill --help).
#   bash train_distill.sh                 # the demo recipe on the CPU: checkpoints/demo -> outputs/distill_demo/student
#   TEACHER=checkpoints/StableAvatar-1.3B-square CACHE=cache/square OUTPUT_DIR=outputs/distill_1B \
#     ACCELERATE_CONFIG=accelerate_config/accelerate_config_machine_1B_single.yaml \
#     bash train_distill.sh --mixed_precision bf16 --gradient_checkpointing --samples_per_window 2
#                                         # a released model on its GPUs, on a feature cache of
#                                         # python -m wan.training.precompute (README: "Few-step students")
# Extra flags pass through; later flags override earlier ones. Stages resume after an interruption.
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
teacher="${TEACHER:-checkpoints/demo}"
output="${OUTPUT_DIR:-outputs/distill_demo}"
if [ -z "${CACHE:-}" ]; then   # the demo: synthetic clips of its training set, cached here first
    data=(--demo_clips 64 --precomputed_dir "$output/windows/cache")
else
    data=(--precomputed_dir "$CACHE")
fi
launch=(python3)
if [ -n "${ACCELERATE_CONFIG:-}" ]; then  # one process per GPU (PROCESSES_PER_MACHINE: see scripts/train.sh)
    source scripts/processes_per_machine.sh
    launch=(accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$per_machine")
fi
exec "${launch[@]}" -m wan.training.distill --teacher "$teacher" --output_dir "$output" "${data[@]}" \
    --student_steps 1 2 4 --samples_per_window 4 --train_batch_size 4 --learning_rate 2e-4 --lr_warmup_steps 10 \
    --max_train_steps 200 --seed 1 "$@"
