"""``bench/gpu/smoke.sh --cpu``: every path of the GPU smoke check, run on the CPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from synthface.generators.base import GENERATORS

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_script_runs_every_path_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "bench/gpu/smoke.sh", "--cpu", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = dict(ln.split(" ", 1) for ln in proc.stdout.splitlines() if ln.count(" ") == 2)
    expected = ["world", "recognizer-train", "recognizer-resume", "recognizer-onnx"] + [
        f"generator-{name}-{what}"
        for name in GENERATORS.names()
        for what in ("train", "resume", "sample")
    ]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for name in expected:
        assert lines.get(name, "").startswith("ok "), (name, proc.stdout)
