#!/usr/bin/env bash
# Train CONFIG as a slurm job step: GPUS tasks, GPUS_PER_NODE per node (--launcher slurm).
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#     tools/slurm_train.sh PARTITION JOB_NAME CONFIG [coprs train options ...]
# The master is the first host of the allocation (MASTER_ADDR overrides), port MASTER_PORT or
# 29500.
set -e
if [ $# -lt 3 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG [coprs train options ...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}

# SRUN_ARGS is split into words on purpose: it holds several srun options
# shellcheck disable=SC2086
PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "${PYTHON:-python}" -u "$(dirname "$0")/train.py" "$CONFIG" --launcher slurm "${@:4}"
