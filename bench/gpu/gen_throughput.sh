#!/usr/bin/env bash
# Generator sampling throughput on one GPU (<= 5 min on an H200): UIFace-size UNet
# (~225M parameters, 3x32x32 latents, 128 px output) with random weights.
# Reference: fp32 (TF32 off), DDIM-50, separate cond/uncond passes.
# Ours: bf16 autocast, batched CFG, SDPA (diffusers default), torch.compile, DPM-Solver++(2M)-20.
# Prints a JSON record and "speedup ...x"; the goal is >= 5x.
# Usage: bash bench/gpu/gen_throughput.sh [extra args for bench/gen_throughput.py]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
ARGS=(--preset gpu-uiface --device cuda --images 128 --batch 128 --ref-steps 50 --our-steps 20 --bf16)
if ! timeout 240 "$PY" bench/gen_throughput.py "${ARGS[@]}" --compile "$@"; then
  echo "compiled run failed or timed out; measuring without torch.compile" >&2
  timeout 150 "$PY" bench/gen_throughput.py "${ARGS[@]}" "$@"
fi
