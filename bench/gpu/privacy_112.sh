#!/usr/bin/env bash
# privacy-benchmark at 112 px, iResNet-50, on one GPU (target: < 10 min on an H200; not
# yet run on one).
#
#   bash bench/gpu/privacy_112.sh
#
# Renders the world data it needs (train 500 identities x 20, attacker 400 x 10 from the
# eval stream, three protocols of 10 x 300 pairs; cached in out/privacy/gpu_world), then
# runs bench/gpu/privacy_112.yaml as plain functions (no Prefect server) and prints the
# table. Finished steps are skipped on a rerun, so a run past the limit resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
LIMIT=${LIMIT:-570}
export SYNTHFACE_HOME=${SYNTHFACE_HOME:-$PWD}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
W=out/privacy/gpu_world
S=("$PY" -m synthface.pipeline.cli)
start=$(date +%s)
"${S[@]}" world make $W/train --identities 500 --per-identity 20 --size 112
"${S[@]}" world make $W/attacker --identities 400 --per-identity 10 --size 112 --split eval
"${S[@]}" world pairs $W/pairs --protocol lfw --protocol cfp-fp --protocol agedb \
    --size 112 --pairs-per-fold 300
echo "data: $(( $(date +%s) - start )) s"
timeout "$LIMIT" "${S[@]}" privacy benchmark bench/gpu/privacy_112.yaml "$@" \
    || echo "stopped after ${LIMIT}s (resumable)"
echo "wall time: $(( $(date +%s) - start )) s"
[ -f out/privacy/gpu_112/table.md ] && cat out/privacy/gpu_112/table.md
