#!/usr/bin/env bash
# Train Wan2.1 14B StableAvatar on 512x512, 832x480 and 480x832 with DeepSpeed ZeRO-2 on several machines: run on each with NUM_MACHINES, NUM_PROCESSES, MACHINE_RANK,
# MAIN_PROCESS_IP set (see scripts/train.sh).
MULTINODE=1 exec "$(dirname "$0")/scripts/train.sh" 14B "$@"
