#!/usr/bin/env bash
# The launcher behind every train_*.sh: scripts/train.sh PRESET [extra training flags...]
#   MULTINODE=1      several machines: also set NUM_MACHINES, NUM_PROCESSES (GPUs in all), MACHINE_RANK
#                    (0 on the main machine), MAIN_PROCESS_IP and optionally MAIN_PROCESS_PORT on each.
#   MODEL_DIR        the starting model: python -m wan.convert --base_only ... (Wan base, fresh audio modules)
#                    or a converted StableAvatar folder to finetune.
#   OUTPUT_DIR       checkpoints, logs and validation videos.
#   DATA_ROOT        the folder prepare_dataset.py wrote (default talking_face_data).
#   PROCESSES_PER_MACHINE  training processes on this machine (default: its GPUs). Without a GPU the script
#                    stops with one message unless this is set (CPU training: 1 or 2, slow).
#   ACCELERATE_CONFIG  another accelerate config file (e.g. accelerate_config/accelerate_config_machine_1B_fsdp.yaml).
#   DRY_RUN=1        print the command instead of running it.
# Stop a run with Ctrl-C or `kill PID` (SIGTERM) of this script: every process finishes its step, saves a
# checkpoint and exits; resume with the same command (--resume_from_checkpoint=latest is the default).
# Extra flags pass through to train_PRESET.py (--help lists them); later flags override earlier ones.
set -euo pipefail
preset="${1:?usage: scripts/train.sh PRESET [flags...]}"
shift
cd "$(dirname "$0")/.."
data="${DATA_ROOT:-talking_face_data}"
square=(--train_data_square_dir="$data/video_square_path.txt")
rec_vec=(--train_data_rec_dir="$data/video_rec_path.txt" --train_data_vec_dir="$data/video_vec_path.txt")
case "$preset" in
    1B_square) size=1B; data_flags=("${square[@]}"); model=checkpoints/Wan2.1-1.3B-base ;;
    1B_rec_vec | 1B_rec_vec_lora) size=1B; data_flags=("${rec_vec[@]}"); model=checkpoints/Wan2.1-1.3B-base ;;
    14B | 14B_lora) size=14B; data_flags=("${square[@]}" "${rec_vec[@]}"); model=checkpoints/Wan2.1-14B-base ;;
    *) echo "error: unknown preset $preset (1B_square, 1B_rec_vec, 1B_rec_vec_lora, 14B, 14B_lora)" >&2; exit 2 ;;
esac
if [ "${MULTINODE:-0}" = 1 ]; then
    : "${NUM_MACHINES:?set NUM_MACHINES}" "${MACHINE_RANK:?set MACHINE_RANK}" "${MAIN_PROCESS_IP:?set MAIN_PROCESS_IP}"
fi
source scripts/processes_per_machine.sh
launch=(accelerate launch)
if [ "${MULTINODE:-0}" = 1 ]; then
    machines="$NUM_MACHINES"
    launch+=(--config_file "${ACCELERATE_CONFIG:-accelerate_config/accelerate_config_machine_${size}_multiple.yaml}"
             --num_machines "$machines" --num_processes "${NUM_PROCESSES:-$((machines * per_machine))}"
             --machine_rank "${MACHINE_RANK:?set MACHINE_RANK}" --main_process_ip "${MAIN_PROCESS_IP:?set MAIN_PROCESS_IP}"
             --main_process_port "${MAIN_PROCESS_PORT:-29500}")
    # The published multi-node 1.3B runs used a larger learning rate.
    [ "$size" = 1B ] && set -- --learning_rate=1e-4 "$@"
else
    launch+=(--config_file "${ACCELERATE_CONFIG:-accelerate_config/accelerate_config_machine_${size}_single.yaml}" --num_processes "$per_machine")
    [ -n "${MAIN_PROCESS_PORT:-}" ] && launch+=(--main_process_port "$MAIN_PROCESS_PORT")
fi
export TOKENIZERS_PARALLELISM=false
[ "${DRY_RUN:-0}" = 1 ] && launch=(echo "${launch[@]}")
exec "${launch[@]}" "train_${preset}.py" \
    --pretrained_model_name_or_path="${MODEL_DIR:-$model}" \
    "${data_flags[@]}" \
    --validation_reference_path=examples/case-1/reference.png \
    --validation_driven_audio_path=examples/case-1/audio.wav \
    --output_dir="${OUTPUT_DIR:-outputs/train_$preset}" \
    --video_sample_n_frames=81 --train_batch_size=1 --gradient_accumulation_steps=1 \
    --checkpointing_steps=2000 --checkpoints_total_limit=5 --validation_steps=500 --lr_warmup_steps=100 \
    --mixed_precision=bf16 --gradient_checkpointing --max_grad_norm=0.05 --resume_from_checkpoint=latest \
    "$@"
