"""Images/s of the generate-synthetic flow on 1 vs N Dask workers (CPU, logical or real GPUs),
with post-processing overlapped with sampling or not (``--overlap on,off``).

Each run is the real flow (``synthface.flows.generate.generate_synthetic``, Prefect's
temporary API unless ``PREFECT_API_URL`` is set) on a local Dask cluster, into a fresh
directory. Reported per run: wall seconds of the whole flow (cluster start and model
loading included), and the shard phase's images/s from the provenance log (all samples
over first shard start .. last shard end), per device. With ``--nvidia-smi`` the GPUs'
utilisation is sampled every 0.5 s during each run (mean and max per GPU). The datasets of
all runs must be byte-identical (provenance excluded); the script says so or fails.

    .venv/bin/python bench/generate_workers.py --workers 1,2 --logical-gpus
    .venv/bin/python bench/generate_workers.py --workers 1 --overlap off,on
    .venv/bin/python bench/generate_workers.py --device cuda --workers 1,all --nvidia-smi
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "provenance"
    }


class GpuSampler:
    """``nvidia-smi`` utilisation samples (GPU index -> list of percent) while running."""

    def __init__(self) -> None:
        self.samples: dict[int, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            out = subprocess.run(query, capture_output=True, text=True, check=False).stdout
            for line in out.strip().splitlines():
                idx, util = (v.strip() for v in line.split(","))
                self.samples.setdefault(int(idx), []).append(float(util))
            self._stop.wait(0.5)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {
            str(i): {"mean_util": round(sum(v) / len(v), 1), "max_util": max(v)}
            for i, v in sorted(self.samples.items())
            if v
        }


def shard_phase(records: list[dict]) -> dict:
    start = min(datetime.fromisoformat(r["started"]).timestamp() for r in records)
    end = max(datetime.fromisoformat(r["started"]).timestamp() + r["seconds"] for r in records)
    images = sum(r["num_samples"] for r in records)
    per_device: dict[str, int] = {}
    for r in records:
        key = (
            r["device"] if r["logical_gpu"] is None else f"{r['device']}/logical{r['logical_gpu']}"
        )
        if r["cuda_visible_devices"] and r["device"].startswith("cuda"):
            key = f"gpu{r['cuda_visible_devices']}"
        per_device[key] = per_device.get(key, 0) + r["num_samples"]
    return {
        "images": images,
        "shard_phase_s": round(end - start, 2),
        "images_per_s": round(images / (end - start), 2),
        "images_by_device": per_device,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="a generate config (default: the embedded demo default)")
    ap.add_argument("--workers", default="1,2", help="comma list of counts; 'all' = one per GPU")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--logical-gpus", action="store_true", help="CPU workers as logical GPUs")
    ap.add_argument("--identities", type=int, default=48)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--shard-samples", type=int, default=24, help="output.max_samples_per_shard")
    ap.add_argument("--overlap", default="on", help="comma list of on/off (runner.overlap)")
    ap.add_argument("--repeats", type=int, default=1, help="run the list this many times")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--nvidia-smi", action="store_true", help="sample GPU utilisation")
    ap.add_argument("--out", help="keep the datasets here (default: a temporary directory)")
    args = ap.parse_args()

    from synthface.flows.defaults import load_default_config
    from synthface.flows.generate import generate_synthetic
    from synthface.generators.dataset.config import GenerateConfig
    from synthface.generators.dataset.placement import read_provenance
    from synthface.pipeline.config import load_config

    base = load_config(args.config, GenerateConfig) if args.config else load_default_config()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gen-workers-"))
    rows, hashes = [], {}
    runs = [
        (count, overlap)
        for _ in range(args.repeats)
        for count in args.workers.split(",")
        for overlap in args.overlap.split(",")
    ]
    for count, overlap in runs:
        data = base.model_dump(mode="json")
        label = f"workers-{count}-overlap-{overlap}"
        out = root / label / "dataset"  # same leaf: the name enters the card
        shutil.rmtree(out, ignore_errors=True)
        data["output"].update(dir=str(out), max_samples_per_shard=args.shard_samples)
        data["identities"].update(count=args.identities, samples_per_identity=args.samples)
        data["generator"]["device"] = args.device
        data["report"]["enabled"] = False
        data["runner"] = {
            "kind": "dask",
            "dask_workers": None if count == "all" else int(count),
            "logical_gpus": args.logical_gpus,
            "torch_threads": args.torch_threads,
            "overlap": overlap == "on",
        }
        cfg = GenerateConfig.model_validate(data)
        sampler = GpuSampler() if args.nvidia_smi else None
        t0 = time.perf_counter()
        if sampler:
            with sampler:
                generate_synthetic(config=cfg)
        else:
            generate_synthetic(config=cfg)
        wall = time.perf_counter() - t0
        records = read_provenance(out, cfg.output.split)
        row = {
            "workers": count,
            "overlap": overlap,
            "wall_s": round(wall, 1),
            **shard_phase(records),
        }
        if sampler:
            row["gpu_util"] = sampler.summary()
        rows.append(row)
        hashes[label] = tree_hashes(out)
        print(json.dumps(row), flush=True)
    first = next(iter(hashes.values()))
    identical = all(h == first for h in hashes.values())
    print(json.dumps({"byte_identical": identical, "files": len(first), "datasets": str(root)}))
    if not identical:
        raise SystemExit("datasets differ between runs")


if __name__ == "__main__":
    main()
