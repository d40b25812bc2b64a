#!/usr/bin/env bash
# iResNet-50 training throughput on one GPU: bf16, channels_last, the real shard loader.
#
#   bash bench/gpu/train_ir50.sh            # <= 5 minutes on one H200; goal >= 10,000 images/s
#
# Self-contained: renders a procedural-world dataset of 112x112 faces (pipeline.world), then
# runs bench/train_throughput.py, which reports images/s for training fed by in-memory tensors,
# by the shard loader (webdataset + JPEG decode in workers), the loader alone, and MFU against
# the H200's dense bf16 peak (989 TFLOP/s; override with PEAK_TFLOPS). A second, torch.compile'd
# measurement follows if time allows (COMPILE=0 skips it).
# Knobs: BATCH (512), STEPS (150), WORKERS (cores - 2), IDS (2000), PER_ID (10), OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-${TMPDIR:-/tmp}/synthface-train-ir50}
BATCH=${BATCH:-512}
STEPS=${STEPS:-150}
WORKERS=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}
IDS=${IDS:-2000}
PER_ID=${PER_ID:-10}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
COMPILE=${COMPILE:-1}
mkdir -p "$OUT"

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true

start=$(date +%s)
if [ ! -f "$OUT/world/dataset.json" ]; then
    "$PY" - "$OUT/world" "$IDS" "$PER_ID" <<'PYEOF'
import sys, time
from synthface.pipeline.world import make_world_dataset
t0 = time.perf_counter()
m = make_world_dataset(sys.argv[1], identities=int(sys.argv[2]), per_identity=int(sys.argv[3]),
                       size=112, seed=0, split="train", ext="jpg")
n = m["splits"]["train"]["num_samples"]
print(f"world: {n} images rendered in {time.perf_counter() - t0:.1f} s")
PYEOF
fi
echo "dataset ready after $(( $(date +%s) - start )) s"

common=(--data "$OUT/world" --device cuda --precision bf16 --channels-last
        --batch-size "$BATCH" --workers "$WORKERS" --steps "$STEPS" --warmup 20
        --peak-tflops "$PEAK_TFLOPS")
"$PY" bench/train_throughput.py "${common[@]}" --json "$OUT/eager.json"

if [ "$COMPILE" = 1 ] && [ $(( $(date +%s) - start )) -lt 150 ]; then
    "$PY" bench/train_throughput.py "${common[@]}" --compile --json "$OUT/compiled.json" \
        || echo "torch.compile run failed (eager numbers above stand)"
fi
echo "total $(( $(date +%s) - start )) s; results in $OUT/*.json"
