#!/usr/bin/env bash
# The CPU benchmarks of docs/benchmarks.md, one after another, on an otherwise idle machine
# (numbers taken while other jobs run are not comparable). Output: out/bench/cpu_suite/*.log
# Long ones (bench/id3_fidelity.py ~45 min, bench/world.py --probe ~25 min) are not included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LOGS=out/bench/cpu_suite
mkdir -p "$LOGS"
run() {  # run NAME THREADS CMD...
  local name=$1 threads=$2
  shift 2
  echo "== $name (OMP_NUM_THREADS=$threads, load $(cut -d' ' -f1-3 /proc/loadavg))"
  /usr/bin/time -f "wall %e s" env OMP_NUM_THREADS="$threads" "$@" >"$LOGS/$name.log" 2>&1 \
    || { echo "   FAILED (see $LOGS/$name.log)"; return 0; }
  tail -n 3 "$LOGS/$name.log" | sed 's/^/   /'
}
run shards 1 $PY bench/shards.py
run eval_speed 1 $PY bench/eval_speed.py
run embed_ir50 2 $PY bench/embed_throughput.py --backbone ir50 --images 32 --repeats 2
run embed_tiny 2 $PY bench/embed_throughput.py --backbone tiny --images 256 --batch 64 --repeats 2
run world_speed 1 $PY bench/world.py --speed
run anchors_10k 1 .venv/bin/synthface generator anchors --n 10000 --dim 512 --iterations 20 \
  --block 2048 --threads 1 --out "$LOGS/anchors_10k.npy"
run gen_throughput 1 $PY bench/gen_throughput.py --preset cpu-tiny --images 32 --batch 32
run train_throughput 1 $PY bench/train_throughput.py --batch-size 8 --steps 4 --warmup 1 --workers 1
run recognition_fidelity 2 $PY bench/recognition_fidelity.py --set logging.progress=false
