#!/usr/bin/env bash
# benchmark-synthetic on one GPU (target: < 10 min on an H200; not yet run on one).
#
#   bash bench/gpu/benchmark_synthetic.sh
#
# Runs the paper protocol of configs/benchmark/cpu.yaml at the size of
# bench/gpu/benchmark_synthetic.yaml (plain and id3, real baseline, real + synthetic) as plain
# functions (no Prefect server needed), then prints the report and every stage's seconds.
# A run past the time limit keeps its finished stages: run the script again to resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
LIMIT=${LIMIT:-570}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
start=$(date +%s)
timeout "$LIMIT" "$PY" -m synthface.pipeline.cli benchmark synthetic \
    --config bench/gpu/benchmark_synthetic.yaml --no-prefect "$@" || echo "stopped after ${LIMIT}s (resumable)"
echo "wall time: $(( $(date +%s) - start )) s"
REPORT=out/benchmark/gpu/report/benchmark.json
if [ -f "$REPORT" ]; then
    cat out/benchmark/gpu/report/benchmark.md
    "$PY" - "$REPORT" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
for k, v in sorted(s["stages"]["seconds"].items(), key=lambda kv: -kv[1]):
    print(f"{v:8.1f} s  {k}")
PYEOF
fi
