#!/usr/bin/env bash
# GPU check of the llm engine, on the GPU machine, from the repository root, with the bundle of
# bench/gpu_bundle.sh carried (.device/gpu): greedy equality with HF generate on CUDA, then a Triton sweep.
#   bash bench/gpu_check/run.sh            (results in $OUT)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,4p' "$0" | cut -c3-; exit 0;; esac
cd "$(dirname "$0")/../.."
source bench/gpu_setup.sh "${GPU_BUNDLE:-.device/gpu}"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; export OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# The engine's modules (core, paged_fast_core, ...) are imported in process as well.
PYTHONPATH=$PYTHONPATH:$PWD/model_repository/llm/1 python bench/gpu_check/gpu_check.py
