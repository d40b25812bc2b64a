#!/usr/bin/env bash
# iResNet-50 training throughput: one GPU, then every GPU of the node, and what bounds it.
#
#   bash bench/gpu/train_ir50.sh            # <= 6 minutes on one node; goal >= 10,000 images/s per GPU
#   bash bench/gpu/train_ir50.sh --smoke    # CPU, tiny model, 2 gloo processes: checks the script
#
# Self-contained: renders a procedural-world dataset of 112x112 faces (pipeline.world), then
#  1. bench/train_throughput.py on one GPU: images/s for training fed by in-memory tensors
#     (the model alone), by the shard loader (webdataset + JPEG decode in workers), the
#     loader alone, and MFU against the dense bf16 peak (H200: 989 TFLOP/s; PEAK_TFLOPS);
#  2. with several GPUs, the loader alone again with each process's share of the cores
#     (WORKERS / GPUs workers): what every process can be fed when all of them run;
#  3. bench/train_launch.py: real training runs started as the train-recognizer flow starts
#     them (accelerate launch -m synthface.recognition.training) on 1 process and on one per
#     GPU; images/s and scaling efficiency;
#  4. a verdict per case: loader-bound when the loader alone is slower than the model alone.
# A torch.compile'd single-GPU measurement follows if time allows (COMPILE=0 skips it).
# Knobs: BATCH (512), STEPS (150), LAUNCH_STEPS (60), WORKERS (cores - 2), IDS (2000),
# PER_ID (10), GPUS (all visible), OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-${TMPDIR:-/tmp}/synthface-train-ir50$([ "$SMOKE" = 1 ] && echo -smoke)}
if [ "$SMOKE" = 1 ]; then
    BATCH=${BATCH:-8}; STEPS=${STEPS:-4}; LAUNCH_STEPS=${LAUNCH_STEPS:-6}; WORKERS=${WORKERS:-2}
    IDS=${IDS:-12}; PER_ID=${PER_ID:-6}; SIZE=32; GPUS=${GPUS:-2}; COMPILE=0; PEAK_TFLOPS=0
    model=(--backbone tiny --input-size 32); device=(--device cpu --precision no); warmup=1
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
    BATCH=${BATCH:-512}; STEPS=${STEPS:-150}; LAUNCH_STEPS=${LAUNCH_STEPS:-60}
    WORKERS=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}
    IDS=${IDS:-2000}; PER_ID=${PER_ID:-10}; SIZE=112; COMPILE=${COMPILE:-1}
    PEAK_TFLOPS=${PEAK_TFLOPS:-989}
    model=(--backbone ir50 --input-size 112); device=(--device cuda --precision bf16); warmup=20
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
    GPUS=${GPUS:-$("$PY" -c "import torch; print(torch.cuda.device_count())")}
fi
mkdir -p "$OUT"

start=$(date +%s)
if [ ! -f "$OUT/world/dataset.json" ]; then
    "$PY" - "$OUT/world" "$IDS" "$PER_ID" "$SIZE" <<'PYEOF'
import sys, time
from synthface.pipeline.world import make_world_dataset
t0 = time.perf_counter()
m = make_world_dataset(sys.argv[1], identities=int(sys.argv[2]), per_identity=int(sys.argv[3]),
                       size=int(sys.argv[4]), seed=0, split="train", ext="jpg")
n = m["splits"]["train"]["num_samples"]
print(f"world: {n} images rendered in {time.perf_counter() - t0:.1f} s")
PYEOF
fi
echo "dataset ready after $(( $(date +%s) - start )) s"

common=(--data "$OUT/world" "${device[@]}" "${model[@]}" --batch-size "$BATCH" --steps "$STEPS"
        --warmup "$warmup" --peak-tflops "$PEAK_TFLOPS")
[ "$SMOKE" = 1 ] || common+=(--channels-last)
# 1. one device: model alone, loader + model, loader alone
"$PY" bench/train_throughput.py "${common[@]}" --workers "$WORKERS" --json "$OUT/eager.json"
# 2. the loader alone with one process's share of the cores
if [ "$GPUS" -gt 1 ]; then
    share=$(( WORKERS / GPUS > 0 ? WORKERS / GPUS : 1 ))
    "$PY" bench/train_throughput.py "${common[@]}" --workers "$share" --modes loader_only \
        --json "$OUT/loader_share.json"
fi
# 3. real training through the launcher: one process, then one per GPU
procs=(1); [ "$GPUS" -gt 1 ] && procs+=("$GPUS")
"$PY" bench/train_launch.py --data "$OUT/world" "${device[@]}" "${model[@]}" \
    --embedding-dim 512 --batch-size "$BATCH" --workers "${share:-$WORKERS}" \
    --steps "$LAUNCH_STEPS" --log-every $(( LAUNCH_STEPS / 6 > 0 ? LAUNCH_STEPS / 6 : 1 )) \
    --processes "${procs[@]}" --json "$OUT/launch.json"
# 4. verdicts
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
eager = json.loads((out / "eager.json").read_text())["images_per_s"]
launch = json.loads((out / "launch.json").read_text())["runs"]
share_file = out / "loader_share.json"
share = json.loads(share_file.read_text())["images_per_s"]["loader_only"] if share_file.exists() else None
model, loader = eager["in_memory"], eager["loader_only"]
def verdict(loader, model):
    return "loader-bound" if loader < model else "model-bound"
print(f"1 process : model alone {model:.0f} img/s, loader alone {loader:.0f} img/s, "
      f"both {eager['shard_loader']:.0f} img/s -> {verdict(loader, model)}")
for run in launch:
    n = run["processes"]
    line = f"{n} process(es) via launcher: {run['images_per_s']:.0f} img/s"
    if "scaling_efficiency" in run:
        line += f", scaling efficiency {run['scaling_efficiency']:.2f}"
    if n > 1 and share is not None:  # each process: the model alone vs its loader share
        line += (f"; per process: model alone {model:.0f}, loader share {share:.0f} img/s"
                 f" -> {verdict(share, model)}")
    print(line)
PYEOF

if [ "$COMPILE" = 1 ] && [ $(( $(date +%s) - start )) -lt 240 ]; then
    "$PY" bench/train_throughput.py "${common[@]}" --workers "$WORKERS" --compile \
        --json "$OUT/compiled.json" || echo "torch.compile run failed (eager numbers above stand)"
fi
echo "total $(( $(date +%s) - start )) s; results in $OUT/*.json"
