#!/usr/bin/env bash
# Train LoRA (rank 128, alpha 64) of the 1.3B model on 832x480 / 480x832, audio modules fully on several machines: run on each with NUM_MACHINES, NUM_PROCESSES, MACHINE_RANK,
# MAIN_PROCESS_IP set (see scripts/train.sh).
MULTINODE=1 exec "$(dirname "$0")/scripts/train.sh" 1B_rec_vec_lora "$@"
