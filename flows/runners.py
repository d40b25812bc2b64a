"""Task runner chosen by ``runner.kind``: a thread pool (default) or a Dask cluster.

The runner only decides *where* shard tasks run; the shards' bytes never depend on it.
Dask: without ``runner.dask_address`` a local cluster of ``runner.dask_workers``
single-threaded worker processes is started on 127.0.0.1 (dashboard off); with an
address the flow submits to that existing scheduler. For GPUs run one worker process
per GPU (``CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nworkers 1 --nthreads 1``).
"""

from __future__ import annotations

from synthface.pipeline.errors import ConfigError
from synthface.pipeline.generate_plan import RunnerSection


def build_task_runner(runner: RunnerSection):
    if runner.kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=runner.max_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError(
            "runner.kind: 'dask' needs prefect-dask (pip install 'synthface[dask]')"
        ) from None
    if runner.dask_address:
        return DaskTaskRunner(address=runner.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": runner.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        },
    )
