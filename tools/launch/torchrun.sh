#!/usr/bin/env bash
# Data-parallel training of handnet with PyTorch's own launcher: torchrun sets
# RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT
# (and serves the rendezvous store), handnet reads them. --no_python: handnet
# is a program, not a Python script. --batch-size is per process.
# Underscore spellings (--nproc_per_node, --no_python) work on every torchrun;
# PyTorch 1.13's rejects --nproc-per-node. Debian's torchrun (PyTorch 1.13,
# Python 3.11) crashes unless --redirects and --tee are given (1 or 2).
# With --max_restarts, a restarted worker group resumes from the last
# checkpoint by itself.
set -euo pipefail
DATA=${DATA:-/data/11k-hands}
OUT=${OUT:-runs/ddp}

# One machine, 4 GPUs (or 4 CPU processes with Gloo):
torchrun --standalone --nproc_per_node 4 --max_restarts 3 --redirects 1 --tee 1 --no_python \
  bin/handnet train --data "$DATA" --out "$OUT" --model resnet18 --epochs 10 --batch-size 64

# Two machines, 8 GPUs each: run this on both (NODE0 is the first machine's address).
# (GLOO_SOCKET_IFNAME=eth0 picks Gloo's interface; by default, the one that routes to the rendezvous host.)
# torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint "$NODE0:29400" --redirects 1 --tee 1 --no_python \
#   bin/handnet train --data "$DATA" --out "$OUT" --model resnet18 --epochs 10 --batch-size 64
