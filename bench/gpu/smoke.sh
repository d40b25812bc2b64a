#!/usr/bin/env bash
# Smoke check of every training/inference path on one GPU, a few steps each (about 2-4 min
# on an H200, most of it imports and ONNX export): recognizer (iResNet-50, bf16) trained,
# resumed, exported to ONNX and run with onnxruntime's CUDA provider; every registered
# generator trained (bf16), resumed and sampled. One line per path: "PATH ok|FAIL SECONDS";
# exit status 1 if any path failed. See bench/gpu/README.md.
#
#   bash bench/gpu/smoke.sh             # GPU (needs the gpu extra: onnxruntime-gpu)
#   bash bench/gpu/smoke.sh --cpu       # the same paths on the CPU (the test suite runs this)
#   bash bench/gpu/smoke.sh --out DIR   # keep the work directory
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
command -v "$PY" >/dev/null || PY=python3
exec "$PY" bench/gpu/smoke.py "$@"
