#!/usr/bin/env bash
# UIFace sampling throughput on one GPU (<= 6 min on an H200): the released architecture
# (UIFaceUNet, ~216M parameters, 3x32x32 VQ-f4 latents, VQ decode to 128 px included) with
# random weights, so this measures throughput only (identity consistency at equal settings
# is measured on the CPU with a trained world model: docs/benchmarks.md).
# Reference: fp32 (TF32 off), DDIM-50, the two passes of each step as separate UNet calls.
# Ours: the same two-stage + injection algorithm with both passes in one call, bf16
# autocast, DPM-Solver++(2M) at 20 and 15 steps, torch.compile(dynamic=True).
# Prints a JSON record and "ours_dpmpp_N: speedup ...x"; the goal is >= 5x.
# Usage: bash bench/gpu/uiface_throughput.sh [extra args for bench/uiface_throughput.py]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
ARGS=(--config configs/generators/uiface_128.yaml --device cuda --identities 32 --per-identity 8
      --batch 128 --ref-steps 50 --our-steps 20,15 --bf16)
if ! timeout 300 "$PY" bench/uiface_throughput.py "${ARGS[@]}" --compile "$@"; then
  echo "compiled run failed or timed out; measuring without torch.compile" >&2
  timeout 200 "$PY" bench/uiface_throughput.py "${ARGS[@]}" "$@"
fi
