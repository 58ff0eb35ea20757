#!/usr/bin/env bash
# Train Wan2.1 1.3B StableAvatar on mixed 832x480 and 480x832 batches on several machines: run on each with NUM_MACHINES, NUM_PROCESSES, MACHINE_RANK,
# MAIN_PROCESS_IP set (see scripts/train.sh).
MULTINODE=1 exec "$(dirname "$0")/scripts/train.sh" 1B_rec_vec "$@"
