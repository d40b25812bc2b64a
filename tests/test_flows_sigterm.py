"""``kill PID`` (SIGTERM) on a flow command stops the temporary Prefect server it started.

Python's default SIGTERM action skips ``atexit``, where Prefect stops the temporary server
it runs for a flow without ``PREFECT_API_URL``; before ``exit_on_sigterm`` that server
outlived the flow as an orphan.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil
import pytest

from tests.flows_helpers import cmdline, start_flow_on_temporary_server, tiny_config


@pytest.mark.slow
def test_sigterm_to_a_flow_run_leaves_no_prefect_server_behind(tmp_path):
    out = tmp_path / "ds"
    cfg = tiny_config(tmp_path / "models", out, identities={"count": 200}, generator={"steps": 50})
    proc = start_flow_on_temporary_server(cfg, tmp_path)
    log = tmp_path / "run.log"
    root = psutil.Process(proc.pid)
    started: dict[int, float] = {}
    server = False
    deadline = time.monotonic() + 240
    try:
        # SIGTERM once the server runs and the flow is inside its shards
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                for p in [root, *root.children(recursive=True)]:
                    started.setdefault(p.pid, p.create_time())
                    server = server or "uvicorn" in cmdline(p)
            if server and list(out.glob("shards/*.tar")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert server, "no temporary Prefect server was started"
        os.kill(proc.pid, signal.SIGTERM)  # the flow process only, as `kill PID` does
        code = proc.wait(90)
        time.sleep(1)
        alive = []
        for pid, created in started.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {cmdline(p)[:80]}")
        assert not alive, f"left running after SIGTERM: {alive}"
        assert code == 128 + signal.SIGTERM  # unwound through SystemExit, not killed
    finally:  # whatever the outcome, nothing of the test's outlives it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "dataset.json").exists()  # stopped, not finished
