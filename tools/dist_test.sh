#!/usr/bin/env bash
# Evaluate CHECKPOINT (a .pth file or a training work dir) on GPUS processes of this node with
# torchrun (--launcher pytorch); every sample is counted once.
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [coprs test options ...]
# Several nodes: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=first-node-address PORT=29500 on each.
# CPU processes (gloo): add --cfg-options env_cfg.dist_cfg.backend=gloo.
set -e
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [coprs test options ...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
