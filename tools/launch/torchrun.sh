#!/usr/bin/env bash
# Data-parallel training of handnet with PyTorch's own launcher: torchrun sets
# RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT
# (and serves the rendezvous store), handnet reads them. --no-python: handnet
# is a program, not a Python script. --batch-size is per process.
set -euo pipefail
DATA=${DATA:-/data/11k-hands}
OUT=${OUT:-runs/ddp}

# One machine, 4 GPUs (or 4 CPU processes with Gloo):
torchrun --standalone --nproc-per-node 4 --no-python \
  bin/handnet train --data "$DATA" --out "$OUT" --model resnet18 --epochs 10 --batch-size 64

# Two machines, 8 GPUs each: run this on both (NODE0 is the first machine's address).
# torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint "$NODE0:29400" --no-python \
#   bin/handnet train --data "$DATA" --out "$OUT" --model resnet18 --epochs 10 --batch-size 64
