"""Where a shard is produced: the device resolved on the worker, and the provenance log.

The device is resolved by the process that runs the shard, never by the flow process:
a head node without GPUs plans a ``generator.device: cuda`` run, and each GPU worker
(started with ``CUDA_VISIBLE_DEVICES`` set to its GPU, see ``synthface.flows.runners``)
resolves an explicit ``cuda:N``. A worker started with ``SYNTHFACE_LOGICAL_GPU`` holds a
*logical* GPU (same Dask resource and id as a real one) but computes on the CPU; the
log says both, so a CPU test run never passes for a GPU run.

The provenance log (``provenance/<split>-NNNNNN.json``, one file per shard, written
atomically after the shard) records who made each shard, on what, and how long it
took. It is deliberately outside the shards, records and manifest: those stay
byte-identical whichever runner, worker or device produced them; this log does not.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from synthface.pipeline.atomic import atomic_write_json
from synthface.pipeline.errors import ConfigError

log = logging.getLogger(__name__)

LOGICAL_GPU_ENV = "SYNTHFACE_LOGICAL_GPU"
PROVENANCE_DIR = "provenance"


@dataclass(frozen=True)
class Placement:
    """The device and worker one shard task runs on."""

    device: str  # what torch computes on: "cpu" or "cuda:N"
    logical_gpu: int | None  # the logical GPU a CPU worker stands for (tests, demos)
    cuda_visible_devices: str | None  # the physical GPU(s) behind cuda:N
    gpu_name: str | None
    host: str
    pid: int
    worker: str  # Dask worker name, or the thread's name
    worker_address: str | None  # Dask worker address

    def to_dict(self) -> dict:
        return asdict(self)


def _worker_identity() -> tuple[str, str | None]:
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.name), worker.address
    except (ImportError, ValueError):  # not inside a Dask worker
        return threading.current_thread().name, None


def resolve_device(requested: str, allow_cpu_fallback: bool = False) -> str:
    """``cpu``/``cuda``/``auto`` -> an explicit torch device of this process (``cuda:N``:
    the current one, which a GPU worker's ``CUDA_VISIBLE_DEVICES`` makes its own GPU),
    or a clear error."""
    import torch

    if requested == "cpu":
        return "cpu"
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        return f"cuda:{torch.cuda.current_device()}"
    if requested == "auto":
        return "cpu"
    if allow_cpu_fallback:
        log.warning("generator.device is cuda but no GPU is visible; falling back to the CPU")
        return "cpu"
    raise ConfigError(
        "generator.device: cuda requested but torch sees no GPU "
        "(set generator.allow_cpu_fallback: true to run on the CPU instead)"
    )


def worker_placement(requested: str, allow_cpu_fallback: bool = False) -> Placement:
    """Resolve the device here, in the worker, and say which worker this is."""
    logical = os.environ.get(LOGICAL_GPU_ENV)
    if logical is not None:
        if requested != "cpu":
            raise ConfigError(
                f"runner.logical_gpus: workers hold logical GPUs that compute on the CPU, "
                f"but generator.device is {requested!r}; set generator.device: cpu"
            )
        device = "cpu"
    else:
        device = resolve_device(requested, allow_cpu_fallback)
    gpu_name = None
    if device.startswith("cuda"):
        import torch

        gpu_name = torch.cuda.get_device_name(torch.device(device))
    worker, address = _worker_identity()
    return Placement(
        device=device,
        logical_gpu=None if logical is None else int(logical),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        gpu_name=gpu_name,
        host=socket.gethostname(),
        pid=os.getpid(),
        worker=worker,
        worker_address=address,
    )


def provenance_path(dataset_dir: str | Path, split: str, index: int) -> Path:
    return Path(dataset_dir) / PROVENANCE_DIR / f"{split}-{index:06d}.json"


def write_provenance(
    dataset_dir: str | Path,
    split: str,
    index: int,
    placement: Placement,
    *,
    num_samples: int,
    sha256: str,
    started: float,
    seconds: float,
    precision: str | None = None,
) -> Path:
    """Record who produced shard ``index`` (after it is written; a retry overwrites it)."""
    path = provenance_path(dataset_dir, split, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "shard": index,
        "split": split,
        "num_samples": num_samples,
        "sha256": sha256,
        **placement.to_dict(),
        **({"precision": precision} if precision else {}),
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="milliseconds"),
        "seconds": round(seconds, 3),
        "images_per_s": round(num_samples / seconds, 3) if seconds > 0 else None,
    }
    atomic_write_json(path, doc)
    return path


def read_provenance(dataset_dir: str | Path, split: str = "train") -> list[dict]:
    """Every shard's provenance record of ``split``, by shard index (unreadable ones skipped)."""
    folder = Path(dataset_dir) / PROVENANCE_DIR
    out = []
    for path in sorted(folder.glob(f"{split}-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda d: d.get("shard", -1))
