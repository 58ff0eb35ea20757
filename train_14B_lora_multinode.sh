#!/usr/bin/env bash
# Train LoRA of the 14B model, audio modules fully on several machines: run on each with NUM_MACHINES, NUM_PROCESSES, MACHINE_RANK,
# MAIN_PROCESS_IP set (see scripts/train.sh).
MULTINODE=1 exec "$(dirname "$0")/scripts/train.sh" 14B_lora "$@"
