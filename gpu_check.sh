#!/usr/bin/env bash
# The first command to run on a GPU server (docs/sweeps.md#the-gpu-check), before any sweep: CUDA against CPU forward
# parity (float32), finite -amp bf16 / fp16 training steps, the default run's Dice within the CPU runs' spread,
# torchrun with NCCL on the GPUs present, -compile, bench.py throughput and peak memory for bash.sh's configurations;
# about 5 minutes on one GPU. Without CUDA it says so and runs the CPU parts. One JSON summary at the end
# (gpu_check.json). Flags go to gpu_check.py (e.g. -skip dice_run,compile; -out FILE).
set -euo pipefail
cd "$(dirname "$0")"
exec python gpu_check.py "$@"
