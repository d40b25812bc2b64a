#!/usr/bin/env bash
# The training options (DDL, EKD, AFA) and SDD-FIQA quality at 112 px on one GPU.
#
#   bash bench/gpu/training_options.sh       # not run yet: written for a GPU session
#
# Runs bench/training_options.py (see its docstring) with a larger world (2000 identities x
# 20 images, 112 px), bf16, more epochs and loader workers; each subcommand writes
# OUT/<cmd>.json. Knobs: OUT, IDS (2000), PER_ID (20), EPOCHS (20), WORKERS (cores - 2),
# CMDS ("ddl ekd afa fiqa"). Generation for `fiqa` still uses the 32 px demo models.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-${TMPDIR:-/tmp}/synthface-training-options}
IDS=${IDS:-2000}
PER_ID=${PER_ID:-20}
EPOCHS=${EPOCHS:-20}
WORKERS=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}
CMDS=${CMDS:-"ddl ekd afa fiqa"}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
for cmd in $CMDS; do
  "$PY" bench/training_options.py "$cmd" --workdir "$OUT" --size 112 --device cuda \
    --mixed-precision bf16 --workers "$WORKERS" --identities "$IDS" --per-identity "$PER_ID" \
    --epochs "$EPOCHS" --afa-epochs "$(( EPOCHS / 2 ))" --reuse
done
