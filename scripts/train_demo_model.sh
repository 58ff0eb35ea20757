#!/usr/bin/env bash
# Reproduce checkpoints/demo end to end from one seed, on the CPU: synthetic data, the small VAE, cached
# encoder features, the transformer, then the pipeline folder. Every stage is skipped when its output exists,
# so re-running continues an interrupted run. Work files go to outputs/demo_training (git-ignored).
#   bash scripts/train_demo_model.sh                      # seed 1, writes checkpoints/demo
#   bash scripts/train_demo_model.sh --output /tmp/demo   # anywhere else; see --help for the sizes
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false
python3 -m wan.training.demo --seed 1 --work_dir outputs/demo_training --output checkpoints/demo "$@"
