"""Task runner chosen by ``runner.kind``: a thread pool (default) or a Dask cluster.

The runner only decides *where* shard tasks run; the shards' bytes never depend on it.

Device placement is Dask's own: a GPU worker declares the resource ``GPU=1`` and sees
only its GPU (``CUDA_VISIBLE_DEVICES``), and every shard task of a GPU run is submitted
under ``dask.annotate(resources={"GPU": 1})``, so the scheduler runs one shard per GPU
at a time and never two on one device. The device string itself is resolved by the
worker (``synthface.generators.dataset.placement``), so the flow process needs no GPU.

Without ``runner.dask_address`` a local cluster is started on 127.0.0.1 (dashboard off):
one single-threaded worker per visible GPU when the generator runs on a GPU, each with
its own ``CUDA_VISIBLE_DEVICES``; ``runner.logical_gpus`` gives CPU workers logical GPU
ids instead. Its workers report to the flow's Prefect API (``PREFECT_API_URL`` in their
environment) instead of each starting a temporary server of its own. With an address
the flow submits to that existing scheduler, whose workers are started by hand, one per
GPU: ``CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nworkers 1 --nthreads 1
--resources GPU=1`` with ``PREFECT_API_URL`` set (docs/flows.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.dataset.placement import LOGICAL_GPU_ENV
from synthface.pipeline.errors import ConfigError, InputError

GPU_RESOURCE = {"GPU": 1}

# Raised for a bad config or input: every retry would fail the same way, only later.
NOT_RETRIED = (ConfigError, InputError)


@dataclass
class ShardRunner:
    """The Prefect task runner, and the Dask resources each shard task requests."""

    task_runner: object
    resources: dict[str, int] | None = None
    remote: bool = False
    workers: int | None = None  # how many shards run at once (None: a remote scheduler's)


def visible_gpus() -> list[str]:
    """This machine's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (respecting an existing one)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def flow_api_url() -> str | None:
    """The Prefect API this process talks to (a temporary server's too), for the workers."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    return (
        url if url.startswith(("http://", "https://")) and "ephemeral-prefect" not in url else None
    )


def local_dask_cluster(
    *,
    workers: list[dict[str, str]],
    resources: dict[str, int] | None = None,
    host: str = "127.0.0.1",
):
    """A local Dask cluster with one single-threaded worker per entry of ``workers``, each
    with that entry as extra environment (its GPU, its Prefect API); ``resources`` are
    what every worker declares. Built from Dask's ``SpecCluster`` (what ``LocalCluster``
    is made of) because a ``LocalCluster`` gives every worker the same environment."""
    from distributed import Nanny, Scheduler, SpecCluster

    scheduler = {
        "cls": Scheduler,
        "options": {"host": host, "dashboard": False, "dashboard_address": None},
    }
    spec = {
        f"worker-{i}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "host": host,
                "resources": dict(resources or {}),
                "env": dict(env),
            },
        }
        for i, env in enumerate(workers)
    }
    return SpecCluster(workers=spec, scheduler=scheduler, name="synthface-local")


def build_task_runner(cfg: GenerateConfig) -> ShardRunner:
    runner, device = cfg.runner, cfg.generator.device
    if runner.logical_gpus and (runner.kind != "dask" or runner.dask_address):
        raise ConfigError(
            "runner.logical_gpus: only for a local Dask cluster (runner.kind: dask without "
            "runner.dask_address)"
        )
    if runner.logical_gpus and device != "cpu":
        raise ConfigError(
            f"runner.logical_gpus: logical GPUs compute on the CPU, but generator.device is "
            f"{device!r}; set generator.device: cpu"
        )
    if runner.kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ShardRunner(
            ThreadPoolTaskRunner(max_workers=runner.max_workers), workers=runner.max_workers
        )
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError(
            "runner.kind: 'dask' needs prefect-dask (pip install 'synthface[dask]')"
        ) from None
    if runner.dask_address:
        # Remote workers declare their own resources; a cuda run asks for a GPU worker.
        resources = dict(GPU_RESOURCE) if device == "cuda" else None
        return ShardRunner(DaskTaskRunner(address=runner.dask_address), resources, remote=True)
    api = flow_api_url()
    base_env = {"PREFECT_API_URL": api} if api else {}
    if runner.logical_gpus:
        count = runner.dask_workers or 2
        envs = [{**base_env, LOGICAL_GPU_ENV: str(i)} for i in range(count)]
        resources = dict(GPU_RESOURCE)
    else:
        gpus = visible_gpus() if device in ("cuda", "auto") else []
        if gpus:
            count = runner.dask_workers or len(gpus)
            # More workers than GPUs share them round-robin (each still declares GPU=1).
            envs = [{**base_env, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(count)]
            resources = dict(GPU_RESOURCE)
        else:
            if device == "cuda":  # the local workers are this machine: say so before starting
                from synthface.generators.dataset import resolve_device

                resolve_device(device, cfg.generator.allow_cpu_fallback)
            count = runner.dask_workers or 2
            envs = [dict(base_env) for _ in range(count)]
            resources = None
    task_runner = DaskTaskRunner(
        cluster_class=local_dask_cluster,
        cluster_kwargs={"workers": envs, "resources": resources},
    )
    return ShardRunner(task_runner, resources, workers=count)


def check_gpu_workers(task_runner, resources: dict[str, int] | None) -> None:
    """Fail clearly when no worker of a remote cluster declares what the shard tasks
    request (they would wait forever)."""
    if not resources:
        return
    info = task_runner.client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {}).values()
    if not any(
        all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items()) for w in workers
    ):
        raise ConfigError(
            f"runner.dask_address: no Dask worker declares the resources {resources} that "
            "generator.device: cuda asks for; start one worker per GPU with "
            "`CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nworkers 1 --nthreads 1 "
            "--resources GPU=1`"
        )


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn`` of shard tasks: retry a failure unless it is a
    ``ConfigError``/``InputError``, which would only fail again after ``retries`` delays
    and hide the one-line message behind them; crashes, I/O and device errors are still
    retried. Prefect calls it with the task, its run and the ``Failed`` state."""
    exc = state.data  # the exception itself when the task raised
    if not isinstance(exc, BaseException):
        try:  # a persisted result; _sync: a coroutine otherwise, inside an event loop
            exc = state.result(raise_on_failure=False, _sync=True)
        except Exception:  # an unreadable result is not evidence of bad input
            return True
    return not isinstance(exc, NOT_RETRIED)
