#!/usr/bin/env bash
# Multi-host data-parallel training on a SLURM cluster: one process per GPU (JAX gives each
# SLURM task the GPU of its local rank); jax.distributed.initialize() takes the coordinator,
# process count and rank from SLURM's environment (pixelreg_jax.parallel.maybe_initialize_distributed).
#
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm.sh configs/cifar10.py runs/cifar10 [overrides…]
#
# (One process per node driving all its GPUs instead: --ntasks-per-node=1 and
#  export JAX_LOCAL_DEVICE_IDS=0,1,…,7 before srun.)
#
# The global batch (config.batch_size) is split over all GPUs of all nodes, so it must divide
# by their number (e.g. --config.batch_size=1024 --config.optim.learning_rate=… for 16 GPUs).
# Every node reads the (small) datasets itself: keep data_dir on a shared filesystem or import
# the data on each node. Checkpoints go to --workdir, which must be shared.
#SBATCH --job-name=pixelreg
#SBATCH --ntasks-per-node=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
CONFIG="${1:?usage: sbatch launch/slurm.sh CONFIG WORKDIR [overrides…]}"
WORKDIR="${2:?usage: sbatch launch/slurm.sh CONFIG WORKDIR [overrides…]}"
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON="${PYTHON:-.venv/bin/python}"
srun --kill-on-bad-exit=1 "$PYTHON" -m pixelreg_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
