"""Faults on the Prefect side: the server dies mid-run and comes back, and shard tasks do
not retry a bad config.

Resume never asks Prefect what happened: each shard task asks the dataset directory
whether its tar and sidecar are complete. So after the server is SIGKILLed and the flow
fails, a rerun against the restarted server (same database, where the first run is left
unfinished) writes only the missing shards, and the dataset is byte-identical to an
undisturbed run without Prefect.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from synthface.generators.dataset import generate_dataset
from synthface.pipeline.errors import ConfigError, InputError
from synthface.pipeline.shards import completed_shards
from tests.flows_helpers import PrefectServer, make_tiny_models, stop_group, tiny_config
from tests.test_flows_units import tree_hashes

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# 32 identities x 3 samples, 2 identities per shard: 16 shards of about 0.7 s each, so
# that the flow is still producing when it notices, seconds later, that the server died
# after the first one.
SECTIONS = {
    "identities": {"count": 32, "samples_per_identity": 3},
    "generator": {"steps": 30},
    "report": {"enabled": False},
}
TOTAL = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = PrefectServer(tmp_path_factory.mktemp("prefect-home"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    return root


def test_shard_retries_skip_config_and_input_errors(server):
    """The condition the flow gives shard tasks, under Prefect's own retry machinery: a bad
    config or input fails at once, an I/O error is retried."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from synthface.flows.runners import retry_unless_bad_input

    errors = {
        "config": lambda: ConfigError("generator.steps: must be >= 1 (got 0)"),
        "input": lambda: InputError("generator.checkpoint: /nowhere: no such directory"),
        "io": lambda: OSError(5, "Input/output error"),
    }
    attempts: list[str] = []

    @task(
        retries=2,
        retry_delay_seconds=0,
        retry_condition_fn=retry_unless_bad_input,
        cache_policy=NO_CACHE,
    )
    def failing(kind: str):
        attempts.append(kind)
        raise errors[kind]()

    @flow
    def each():
        return [failing(kind, return_state=True) for kind in errors]

    with temporary_settings({PREFECT_API_URL: server.url}):
        states = each()
    assert [s.type.value for s in states] == ["FAILED"] * 3
    assert attempts == ["config", "input", "io", "io", "io"]


def test_retry_condition_reads_the_failed_state():
    """Prefect hands the condition a ``Failed`` state: an exception in it, or nothing
    readable (then retry: an unknown failure is not evidence of bad input)."""
    from prefect.states import Failed

    from synthface.flows.runners import retry_unless_bad_input

    def retried(state):
        return retry_unless_bad_input(None, None, state)

    assert not retried(Failed(data=ConfigError("runner.retries: bad")))
    assert not retried(Failed(data=InputError("generator.checkpoint: missing")))
    assert retried(Failed(data=OSError(28, "No space left on device")))
    assert retried(Failed(data=RuntimeError("CUDA error: an illegal memory access")))
    assert retried(Failed(message="crashed, no result"))


def _poll(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _generate_runs(server) -> list[str]:
    runs = httpx.post(
        server.url + "/flow_runs/filter",
        json={"flows": {"name": {"any_": ["generate-synthetic"]}}},
    ).json()
    return sorted(r["state_type"] for r in runs)


def test_server_killed_mid_run_then_restarted_the_rerun_resumes(server, models, tmp_path):
    out = tmp_path / "run" / "ds"
    config = tmp_path / "tiny.yaml"
    cfg = tiny_config(models, out, **SECTIONS)
    config.write_text(yaml.safe_dump({"kind": "generate", **cfg.model_dump(mode="json")}))
    cmd = [BIN / "synthface", "flows", "run", "generate", "--config", str(config)]
    records = out / "records"

    def shards_done() -> int:
        return len(list(records.glob("train-0*.json"))) if records.is_dir() else 0

    # The client gives up at once instead of retrying each call for about a minute first
    # (PREFECT_CLIENT_MAX_RETRIES): the same failure as a server that stays down longer.
    first_log = tmp_path / "first.log"
    with open(first_log, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env={**server.env, "PREFECT_CLIENT_MAX_RETRIES": "0"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    t0 = time.monotonic()
    try:
        if not _poll(lambda: shards_done() >= 1 or proc.poll() is not None, 180):
            pytest.fail("no shard within 180 s")
        server.kill()
        t_kill = time.monotonic()
        # The flow fails at its next API call and says so in one line; Prefect then spends
        # seconds per event trying to flush its events to the dead server. Killed after
        # that, or after a bounded wait if it hangs instead.
        failed = _poll(
            lambda: (
                proc.poll() is not None
                or "synthface: error:" in first_log.read_text(errors="replace")
            ),
            120,
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            stop_group(proc)  # anything it started
    text = first_log.read_text(errors="replace")
    assert proc.returncode != 0, text[-3000:]
    if not failed:
        print("server-restart: the first run hung after the server died; killed it")
    done = sorted(completed_shards(out))
    # (under load, a first run that died before its first shard, e.g. an API call timing
    # out with retries off, lands here too: its log says which)
    assert 0 < len(done) < TOTAL, (
        f"first run left {done}: the kill did not land mid-run\n{text[-2000:]}"
    )
    provenance = out / "provenance"
    kept = {p.name: p.read_bytes() for p in provenance.glob("*.json")}
    # One per complete shard (written just after it; a killed run may miss its last).
    assert len(done) - (not failed) <= len(kept) <= len(done), (done, sorted(kept))

    t_failed = time.monotonic()
    server.start()
    t_up = time.monotonic()
    res = subprocess.run(cmd, env=server.env, capture_output=True, text=True, timeout=300)
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs[-3000:]
    for i in range(TOTAL):
        verb = "skipped (complete)" if i in done else "written"
        assert f"shard {i} {verb}:" in logs, (i, logs[-3000:])
    # The shards of the first run are not redone: their provenance is untouched.
    assert {name: (provenance / name).read_bytes() for name in kept} == kept
    # Prefect still holds the first run as unfinished; it did not matter to the rerun.
    states = _generate_runs(server)
    assert len(states) == 2 and states.count("COMPLETED") == 1, states

    ref = tmp_path / "reference" / "ds"
    generate_dataset(tiny_config(models, ref, **SECTIONS))
    assert tree_hashes(out) == tree_hashes(ref)
    print(
        f"server-restart: first run {t_kill - t0:.1f}s to the kill, failed after "
        f"{t_failed - t_kill:.1f}s with {len(done)}/{TOTAL} shards; restart "
        f"{t_up - t_failed:.1f}s; rerun {time.monotonic() - t_up:.1f}s (with the reference)"
    )
