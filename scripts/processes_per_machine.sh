# Sourced by the launchers (scripts/train.sh, train_distill.sh): sets per_machine, the number of training
# processes on this machine, to PROCESSES_PER_MACHINE or else its GPU count. Without a GPU and without
# PROCESSES_PER_MACHINE it stops with one line before anything starts (DRY_RUN=1: 1 process).
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ -z "${PROCESSES_PER_MACHINE:-}" ] && [ "$gpus" = 0 ] && [ "${DRY_RUN:-0}" != 1 ]; then
    echo "error: no CUDA GPU found on this machine; set PROCESSES_PER_MACHINE=1 to train on the CPU anyway (slow)" >&2
    exit 2
fi
per_machine="${PROCESSES_PER_MACHINE:-$gpus}"
[ "$per_machine" = 0 ] && [ "${DRY_RUN:-0}" = 1 ] && per_machine=1
case "$per_machine" in
    '' | *[!0-9]* | 0) echo "error: PROCESSES_PER_MACHINE must be a positive whole number, got '$per_machine'" >&2; exit 2 ;;
esac
