"""Where shard tasks run: devices resolved on the worker, one model per thread, Dask GPU
resources on two logical GPUs, a worker killed mid-run, and no stray Prefect servers.

This machine has no GPU, so the Dask test declares two *logical* GPUs through Dask's own
resource mechanism (``GPU=1`` per worker, a device id per worker) that compute on the
CPU; the provenance log says so (``device: cpu, logical_gpu: N``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch

from synthface.generators.dataset import (
    finalize_generation,
    generate_dataset,
    prepare_generation,
    produce_shard,
    resolve_device,
)
from synthface.generators.dataset.placement import (
    LOGICAL_GPU_ENV,
    read_provenance,
    worker_placement,
)
from synthface.pipeline.errors import ConfigError
from tests.flows_helpers import (
    cmdline,
    make_tiny_models,
    start_flow_on_temporary_server,
    tiny_config,
)
from tests.test_flows_units import tree_hashes

BIN = Path(sys.executable).parent
STARTED = re.compile(r"shard (\d+): worker \S+ \(pid (\d+)\)")
# 5 shards of 6 images; 16 sampler steps make a shard last long enough to be killed in.
SECTIONS = {"identities": {"count": 10, "samples_per_identity": 3}, "generator": {"steps": 16}}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    return root


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory) -> dict[str, str]:
    ref = tmp_path_factory.mktemp("reference") / "ds"
    generate_dataset(tiny_config(models, ref, **SECTIONS))
    return tree_hashes(ref)


def test_concurrent_shards_never_share_a_model_and_write_the_same_bytes(
    models, reference, tmp_path, monkeypatch
):
    """Two threads producing shards at once each borrow their own model (UIFace swaps
    attention processors on its UNet while sampling); later shards and later runs reuse
    the two, and the dataset equals the sequential one."""
    from synthface.generators.dataset import producer as produce

    produce.clear_producer_cache()
    out = tmp_path / "ds"
    cfg = tiny_config(models, out, runner={"max_workers": 2}, **SECTIONS)
    prepared = prepare_generation(cfg)
    loaded, both_loading = [], threading.Barrier(2)
    real_load = produce.load_producer

    def counting_load(cfg_, device=None):
        # The first two loads must overlap: a shared model would load once and time out here.
        loaded.append(threading.get_ident())
        both_loading.wait(timeout=60)
        return real_load(cfg_, device)

    monkeypatch.setattr(produce, "load_producer", counting_load)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda w: produce_shard(cfg, w), prepared.work))
    assert len(loaded) == 2 and len(set(loaded)) == 2  # one per thread, then reused
    assert sum(len(v) for v in produce._IDLE.values()) == 2
    assert not any(r.skipped for r in results)
    finalize_generation(cfg, prepared.dataset_config, prepared.work)
    assert tree_hashes(out) == reference
    records = read_provenance(out)
    assert [r["shard"] for r in records] == [0, 1, 2, 3, 4]
    assert {r["device"] for r in records} == {"cpu"} and {r["logical_gpu"] for r in records} == {
        None
    }
    assert all(r["sha256"] and r["seconds"] > 0 and r["pid"] == os.getpid() for r in records)
    generate_dataset(tiny_config(models, tmp_path / "again", **SECTIONS))
    assert len(loaded) == 2  # a later run borrows the pooled models


def test_cpu_only_head_node_plans_a_cuda_run_and_the_worker_resolves(models, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(LOGICAL_GPU_ENV, raising=False)
    dask_cfg = tiny_config(
        models, tmp_path / "ds", generator={"device": "cuda"}, runner={"kind": "dask"}
    )
    prepared = prepare_generation(dask_cfg)  # the head node needs no GPU
    assert len(prepared.work) == 3
    with pytest.raises(ConfigError, match="allow_cpu_fallback"):
        worker_placement("cuda")  # a worker without a GPU says so
    assert worker_placement("cuda", allow_cpu_fallback=True).device == "cpu"
    thread_cfg = tiny_config(models, tmp_path / "ds2", generator={"device": "cuda"})
    with pytest.raises(ConfigError, match=r"generator\.device: cuda requested"):
        prepare_generation(thread_cfg)  # thread runner: the shards run here, fail early
    assert not (tmp_path / "ds2").exists()


def test_device_strings_are_explicit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == "cuda:1" and resolve_device("auto") == "cuda:1"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setenv(LOGICAL_GPU_ENV, "1")
    where = worker_placement("cpu")
    assert (where.device, where.logical_gpu) == ("cpu", 1)  # honest: computes on the CPU
    with pytest.raises(ConfigError, match="logical GPUs that compute on the CPU"):
        worker_placement("cuda")


def test_local_cluster_binds_one_worker_per_visible_gpu(models, tmp_path, monkeypatch):
    pytest.importorskip("prefect_dask")
    from synthface.flows import runners

    monkeypatch.setattr(runners, "flow_api_url", lambda: "http://127.0.0.1:4200/api")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    cfg = tiny_config(
        models, tmp_path / "ds", generator={"device": "cuda"}, runner={"kind": "dask"}
    )
    built = runners.build_task_runner(cfg)
    envs = built.task_runner.cluster_kwargs["workers"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3", "5"]
    assert all(e["PREFECT_API_URL"] == "http://127.0.0.1:4200/api" for e in envs)
    assert built.resources == {"GPU": 1} and built.task_runner.cluster_kwargs["resources"] == {
        "GPU": 1
    }
    cpu = tiny_config(models, tmp_path / "ds", runner={"kind": "dask", "logical_gpus": True})
    envs = runners.build_task_runner(cpu).task_runner.cluster_kwargs["workers"]
    assert [e[LOGICAL_GPU_ENV] for e in envs] == ["0", "1"]
    bad = cfg.model_copy(update={"runner": cpu.runner})  # logical GPUs but device cuda
    with pytest.raises(ConfigError, match=r"runner\.logical_gpus"):
        runners.build_task_runner(bad)


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_two_logical_gpus_a_killed_worker_and_no_stray_servers(models, reference, tmp_path):
    """The flow on its temporary Prefect API, a local Dask cluster of two logical GPUs.

    A worker is SIGKILLed while shards remain; Dask reruns its shard elsewhere and the
    dataset is byte-identical to the in-process one. The workers report to the flow's
    API: at no point is more than one Prefect server running, and nothing the run
    started outlives it.
    """
    pytest.importorskip("prefect_dask")
    out = tmp_path / "ds"
    cfg = tiny_config(
        models, out, runner={"kind": "dask", "dask_workers": 2, "logical_gpus": True}, **SECTIONS
    )
    proc = start_flow_on_temporary_server(cfg, tmp_path)
    log = tmp_path / "run.log"
    root = psutil.Process(proc.pid)
    started: dict[int, float] = {}  # every process the run started: pid -> create time
    max_servers = 0
    killed = None
    deadline = time.monotonic() + 420
    while proc.poll() is None and time.monotonic() < deadline:
        tree = _tree(root)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                started.setdefault(p.pid, p.create_time())
        max_servers = max(max_servers, sum("uvicorn" in cmdline(p) for p in tree))
        if killed is None:
            records = read_provenance(out)
            finished = {r["shard"] for r in records}
            begun = {  # "shard N: worker W (pid P) ..." is logged as a shard task starts
                int(m[1]): int(m[2]) for m in STARTED.finditer(log.read_text(errors="replace"))
            }
            busy = {i: pid for i, pid in begun.items() if i not in finished}
            # Both logical GPUs have produced a shard, and one worker is inside another.
            if {r["logical_gpu"] for r in records} == {0, 1} and busy:
                index, pid = min(busy.items())
                os.kill(pid, 9)
                killed = (index, pid)
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
    proc.wait()
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert killed is not None, "the run finished before a worker could be killed"
    assert "local_dask_cluster" in text
    assert tree_hashes(out) == reference  # the rerun shard wrote the same bytes
    records = read_provenance(out)
    assert records[killed[0]]["pid"] != killed[1]  # the killed shard was redone elsewhere
    assert [r["shard"] for r in records] == [0, 1, 2, 3, 4]
    assert {r["device"] for r in records} == {"cpu"}
    assert {r["logical_gpu"] for r in records} == {0, 1}
    assert {r["worker"] for r in records} <= {"worker-0", "worker-1"}
    assert all(r["worker_address"].startswith("tcp://127.0.0.1:") for r in records)
    assert max_servers == 1, (
        f"{max_servers} Prefect servers ran at once (workers started their own)"
    )
    time.sleep(1)
    alive = []
    for pid, created in started.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {cmdline(p)[:80]}")
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"left running after the run: {alive}"
    print(f"killed pid {killed[1]} in shard {killed[0]}; {len(started)} processes, all gone")


def test_remote_cluster_without_gpu_workers_is_refused_not_waited_on():
    pytest.importorskip("prefect_dask")
    from types import SimpleNamespace

    from synthface.flows.runners import check_gpu_workers

    def runner(*resources):
        workers = {f"tcp://w{i}": {"resources": r} for i, r in enumerate(resources)}
        info = {"workers": workers}
        return SimpleNamespace(client=SimpleNamespace(scheduler_info=lambda n_workers: info))

    with pytest.raises(ConfigError, match="--resources GPU=1"):
        check_gpu_workers(runner({}, {"CPU": 4}), {"GPU": 1})
    check_gpu_workers(runner({}, {"GPU": 1}), {"GPU": 1})  # one GPU worker is enough
    check_gpu_workers(runner({}), None)  # a CPU run asks for nothing


def test_local_cluster_for_cuda_without_a_gpu_fails_before_starting(models, tmp_path, monkeypatch):
    pytest.importorskip("prefect_dask")
    from synthface.flows import runners

    monkeypatch.setattr(runners, "flow_api_url", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gen = {"device": "cuda"}
    cfg = tiny_config(models, tmp_path / "ds", generator=gen, runner={"kind": "dask"})
    with pytest.raises(ConfigError, match="allow_cpu_fallback"):
        runners.build_task_runner(cfg)
    gen["allow_cpu_fallback"] = True
    cfg = tiny_config(models, tmp_path / "ds", generator=gen, runner={"kind": "dask"})
    built = runners.build_task_runner(cfg)  # CPU workers, nothing requested of them
    assert built.resources is None and len(built.task_runner.cluster_kwargs["workers"]) == 2
