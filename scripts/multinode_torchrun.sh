#!/usr/bin/env bash
# Multi-node training with torchrun's c10d rendezvous (no SLURM needed): start this same script on every node.
#   NNODES=2 MASTER_ADDR=10.0.0.1 GPUS_PER_NODE=8 RUN_ID=qwen7b-zero3 bash scripts/multinode_torchrun.sh \
#       model=qwen2.5-7b hardware=full hardware/deepspeed=zero3 output_root=/shared/medgpt
# output_root must be on a filesystem every node sees. RUN_ID names the run folder on all nodes (torchrun passes it
# to every rank as the rendezvous id; medgpt.runs.run_stamp turns it into the folder name), so the ranks of
# all nodes write into one run folder and only global rank 0 writes outputs.
set -euo pipefail
: "${NNODES:?set NNODES (number of nodes)}"
: "${MASTER_ADDR:?set MASTER_ADDR (address of the first node, reachable from every node)}"
: "${RUN_ID:?set RUN_ID, the same on every node (e.g. qwen7b-zero3-\$(date +%F))}"
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
MASTER_PORT=${MASTER_PORT:-29500}
export MEDGPT_RUN_ID="$RUN_ID" OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
cd "$(dirname "$0")/.."
exec torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RUN_ID" \
    train.py "$@"
