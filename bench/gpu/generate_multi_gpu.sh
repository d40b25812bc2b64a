#!/usr/bin/env bash
# generate-synthetic on one GPU vs every GPU of the node, through the flow's local Dask
# cluster (one worker per GPU, CUDA_VISIBLE_DEVICES and the GPU=1 resource each):
# images/s of the shard phase, wall time, images per GPU (from the dataset's provenance
# log) and each GPU's utilisation sampled with nvidia-smi every 0.5 s. The two datasets
# must be byte-identical (the script fails otherwise). Each worker count runs with QC and
# JPEG encoding overlapped with sampling and without (runner.overlap), same bytes.
# Default model: the demo's ID3 generator (32 px, small: expect low utilisation; the point
# is placement and scaling). Give a real one with --config FILE (a `generate` config).
# Needs the `dask` extra (prefect, prefect-dask) besides the `gpu` one.
# Usage: bash bench/gpu/generate_multi_gpu.sh [--identities N] [--config FILE] [...]
#        (extra args go to bench/generate_workers.py; about 2-5 min on a small node)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.device_count(), 'GPU(s):', torch.cuda.get_device_name(0))"
"$PY" -c "import prefect_dask" || { echo "prefect-dask missing: pip install '.[dask]'" >&2; exit 1; }
nvidia-smi --query-gpu=index,name,memory.total --format=csv
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180
timeout 600 "$PY" bench/generate_workers.py --device cuda --workers 1,all --overlap off,on --nvidia-smi \
  --identities 256 --samples 8 --shard-samples 128 "$@"
