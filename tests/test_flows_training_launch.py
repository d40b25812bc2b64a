"""``train-recognizer`` launching its own processes: the command, the flow on 2 CPU
processes (gloo) against a hand-typed ``accelerate launch``, a killed rank, and every
deployable flow under ``synthface flows run``.

The training runs reuse the two-process Partial FC test's tiny set-up
(``tests/dist_recognition_train.py``: 6 identities, 4 steps, a checkpoint every 2, class
centres sharded over the ranks); the flows run in this process against a temporary
Prefect database (one start for the module).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from synthface.pipeline.cli import main as cli_main
from synthface.pipeline.errors import ConfigError
from synthface.recognition.training.launch import (
    ENTRY_MODULE,
    LaunchFailed,
    Topology,
    _segments,
    default_processes,
    error_line,
    launch_command,
)
from tests.dist_recognition_train import config as tiny_config
from tests.test_partial_fc_sharded import _tiny_grid_dataset

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Test-only fault: rank KILL_RANK SIGKILLs itself right after step KILL_AT_STEP (once:
# the marker file stops the retry from dying too). Loaded by every Python process through
# PYTHONPATH; it does nothing in the launcher, which has no RANK.
KILL_HOOK = textwrap.dedent(
    """
    import os
    if os.environ.get("KILL_RANK") and os.environ.get("RANK") == os.environ["KILL_RANK"]:
        import signal
        from pathlib import Path
        import synthface.recognition.training.callbacks as cb

        marker, at = Path(os.environ["KILL_MARKER"]), int(os.environ["KILL_AT_STEP"])
        original = cb.Checkpointer.__call__

        def call(self, step, run):
            original(self, step, run)
            if step == at and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        cb.Checkpointer.__call__ = call
    """
)


# --------------------------------------------------------------------------- no processes
def test_launch_command_single_multi_process_and_multi_node():
    one = launch_command("c.yaml", Topology(1), result_file="r.json")
    assert one[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" not in one
    assert one[one.index("--num_processes") + 1] == "1"
    assert one[-7:] == [
        "-m",
        ENTRY_MODULE,
        "c.yaml",
        "--resume",
        "latest",
        "--result-file",
        "r.json",
    ]
    two = launch_command("c.yaml", Topology(2))
    assert "--multi_gpu" in two and two[two.index("--num_processes") + 1] == "2"
    assert "--main_process_ip" not in two and int(two[two.index("--main_process_port") + 1]) > 0
    multi = launch_command("c.yaml", Topology(8, nodes=2, machine_rank=1, main_process_ip="h0"))
    flags = {
        f: multi[multi.index(f) + 1] for f in multi if f.startswith("--") and f != "--multi_gpu"
    }
    assert flags["--num_processes"] == "16"  # accelerate counts every node's processes
    assert flags["--num_machines"] == "2" and flags["--machine_rank"] == "1"
    assert flags["--main_process_ip"] == "h0" and flags["--main_process_port"] == "29500"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"processes": 0}, "processes"),
        ({"processes": 1, "nodes": 2}, "main_process_ip"),
        ({"processes": 1, "nodes": 2, "machine_rank": 2, "main_process_ip": "h"}, "machine_rank"),
        ({"processes": 1, "main_process_port": 70000}, "main_process_port"),
    ],
)
def test_bad_topology_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        Topology(**kwargs)


def test_default_is_one_process_on_cpu():
    assert default_processes("cpu") == 1


def test_error_line_prefers_the_entry_points_line_then_a_killed_rank():
    traceback = ["Traceback (most recent call last):", '  File "x"', "ValueError: bad thing"]
    launcher = ["subprocess.CalledProcessError: Command '[...]' returned non-zero exit status 1."]
    assert error_line(traceback + launcher) == "ValueError: bad thing"
    ours = ["[rank1]: synthface: error: data.train: no dataset.json"]
    assert error_line(ours + traceback + launcher) == "data.train: no dataset.json"
    elastic = [
        "RuntimeError: [gloo] Read error: Connection reset by peer",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
        "Root Cause (first observed failure):",
        "[0]:",
        "  rank      : 1 (local_rank: 1)",
        "  exitcode  : -9 (pid: 42)  (SIGKILL)",
        "  traceback : Signal 9 (SIGKILL) received by PID 42",
    ]
    assert (
        error_line(elastic) == "rank 1 (local_rank: 1) died: Signal 9 (SIGKILL) received by PID 42"
    )
    assert error_line(["nothing useful"]) is None


def test_only_crashes_are_retried_and_the_failure_survives_pickling():
    import pickle
    from types import SimpleNamespace

    from synthface.flows.training import _retry_crashes

    crash = pickle.loads(
        pickle.dumps(LaunchFailed("training launch failed: rank 1 died", -9, True))
    )
    assert (crash.returncode, crash.crashed, str(crash)) == (
        -9,
        True,
        "training launch failed: rank 1 died",
    )
    error = LaunchFailed("training launch failed: data.train: no such directory", 1, False)
    assert _retry_crashes(None, None, SimpleNamespace(data=crash)) is True
    assert _retry_crashes(None, None, SimpleNamespace(data=error)) is False
    assert _retry_crashes(None, None, SimpleNamespace(data=ValueError("x"))) is False


def test_progress_redraws_are_separated_from_lines():
    class Stream(io.BytesIO):
        def fileno(self):  # _segments reads with os.read, as from a pipe
            r, w = os.pipe()
            os.write(w, self.getvalue())
            os.close(w)
            return r

    data = "first\r\n 10%|#\r 50%|##\rresumed from x\nlast ünicode".encode()
    assert list(_segments(Stream(data), chunk=3)) == [
        ("first", False),
        (" 10%|#", True),
        (" 50%|##", True),
        ("resumed from x", False),
        ("last ünicode", False),
    ]


def test_sigterm_to_the_launching_process_stops_every_process_it_started():
    """How Prefect cancels a run: SIGTERM to the flow's process. The launch sits in its own
    session, so the launcher must pass it on; here its "rank" is a grandchild."""
    import psutil

    rank = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); print(p.pid, flush=True); time.sleep(120)"
    code = (
        "import sys; from synthface.recognition.training.launch import stream_process; "
        f"stream_process([sys.executable, '-c', {rank!r}], lambda line: print(line, flush=True))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    grandchild = psutil.Process(int(proc.stdout.readline()))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == -signal.SIGTERM  # then it ended as SIGTERM would have ended it
    proc.stdout.close()
    gone, _ = psutil.wait_procs([grandchild], timeout=30)
    assert gone or grandchild.status() == psutil.STATUS_ZOMBIE


def test_every_deployable_flow_runs_under_flows_run(capsys):
    from synthface.flows.deployments import FLOWS

    for entry in FLOWS:
        with pytest.raises(SystemExit) as exit_:
            cli_main(["flows", "run", entry.flow, "--help"])
        assert exit_.value.code == 0, entry.flow
        assert entry.flow in capsys.readouterr().out


def test_flows_run_hands_each_flow_its_arguments(tmp_path, monkeypatch, capsys):
    """The CLI wiring of the flows added to `flows run`, with the flows replaced by probes."""
    import synthface.flows.benchmark as benchmark
    import synthface.flows.training as training

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    calls = {}

    def probe(name, result):
        def flow(**kwargs):
            calls[name] = kwargs
            return result

        return flow

    monkeypatch.setattr(training, "train_recognizer", probe("rec", {"model_dir": None}))
    monkeypatch.setattr(training, "train_generator", probe("gen", {"final": "f"}))
    monkeypatch.setattr(training, "frcsyn_benchmark", probe("frcsyn", {"zip": "p.zip"}))
    stages = {"executed": [], "skipped": []}
    bench = {"stages": stages, "mean_accuracy": {}, "gap_to_real": {}, "report": {"markdown": "r"}}
    monkeypatch.setattr(benchmark, "benchmark_synthetic", probe("bench", bench))
    rec = tmp_path / "rec.yaml"
    rec.write_text(yaml.safe_dump({"kind": "recognition", "data": {"train": str(tmp_path)}}))
    launch = ["--processes", "3", "--nodes", "2", "--machine-rank", "1"]
    launch += ["--main-process-ip", "h0", "--main-process-port", "1234"]
    assert (
        cli_main(["flows", "run", "train-recognizer", str(rec), "--set", "train.seed=7", *launch])
        == 0
    )
    assert calls["rec"]["config"].train.seed == 7
    assert {k: v for k, v in calls["rec"].items() if k != "config"} == {
        "processes": 3, "nodes": 2, "machine_rank": 1, "main_process_ip": "h0",
        "main_process_port": 1234,
    }  # fmt: skip
    assert "node 0 reports the model" in capsys.readouterr().out
    gen = str(ROOT / "configs/generators/id3_world.yaml")
    assert cli_main(["flows", "run", "train-generator", gen, "--set", "train.steps=3"]) == 0
    assert calls["gen"]["config"].train.steps == 3
    assert (
        cli_main(["flows", "run", "benchmark-synthetic", str(ROOT / "configs/benchmark/cpu.yaml")])
        == 0
    )
    assert calls["bench"]["config"].name == "cpu"
    trees = ["--eval-tree", "e", "--calibration-tree", "c", "--out-dir", "o"]
    argv = ["--proposed", "p", "--baseline", "b", *trees, "--subtask", "1.1", "--dataset", "bupt"]
    assert cli_main(["flows", "run", "frcsyn-benchmark", *argv]) == 0
    assert calls["frcsyn"] == {
        "proposed": "p", "baseline": "b", "eval_tree": "e", "calibration_tree": "c",
        "out_dir": "o", "subtask": "1.1", "edition": "cvpr2024", "datasets": ["bupt"],
        "device": "cpu", "group_map": None,
    }  # fmt: skip


def test_bad_launch_arguments_fail_before_prefect_starts(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "recognition", "data": {"train": str(tmp_path)}}))
    code = cli_main(["flows", "run", "train-recognizer", str(cfg), "--nodes", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "main_process_ip: required with nodes > 1" in err
    assert not (tmp_path / ".prefect").exists()


# --------------------------------------------------------------------------- processes
@pytest.fixture(scope="module")
def prefect_db():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """The tiny dataset, its config file and the reference: the CLI's accelerate launch."""
    root = tmp_path_factory.mktemp("launch")
    data = _tiny_grid_dataset(root / "data")
    config = root / "tiny.yaml"
    cfg = tiny_config(data, root / "cli").model_dump(mode="json")
    config.write_text(yaml.safe_dump({"kind": "recognition", **cfg}))
    cmd = [
        str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", ENTRY_MODULE, str(config),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "data": data, "config": config, "reference": root / "cli" / "model"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def _run_logs(state) -> str:
    """What the flow run logged, as the Prefect API (UI, `prefect flow-run logs`) has it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # logs travel to the API in batches
    run_id = state.state_details.flow_run_id
    only = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        while batch := client.read_logs(only, limit=200, offset=len(lines)):
            lines += [log.message for log in batch]
    return "\n".join(lines)


@pytest.mark.slow
def test_flow_on_two_cpu_processes_trains_the_cli_launchs_model(
    prefect_db, setup, tmp_path, monkeypatch
):
    from synthface.flows.training import train_recognizer

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "flow"
    state = train_recognizer(
        config_file=str(setup["config"]),
        overrides=[f"train.output_dir={out}"],
        processes=2,
        return_state=True,
    )
    summary = state.result()
    assert summary["processes"] == 2 and summary["completed"] is True
    assert summary["global_step"] == 4 and summary["model_dir"] == str(out / "model")
    _same_weights(out / "model", setup["reference"])
    ckpt = out / "checkpoints" / "step-00000004"  # each rank wrote its own class centres
    assert {p.name for p in ckpt.glob("head_shard_*")} == {
        "head_shard_0.safetensors",
        "head_shard_1.safetensors",
    }
    logs = _run_logs(state)
    assert "launching 2 process(es) x 1 node(s)" in logs  # streamed from the launch
    assert f"recognizer saved to {out / 'model'}" in logs


@pytest.mark.slow
def test_a_killed_rank_is_retried_from_the_last_checkpoint(
    prefect_db, setup, tmp_path, monkeypatch
):
    """Rank 1 dies by SIGKILL after step 3 (checkpoint at 2): the task fails with that
    line, Prefect retries it, the retry resumes at step 2 and ends with the weights of the
    uninterrupted run."""
    from synthface.flows.training import train_recognizer
    from synthface.pipeline.config import load_config
    from synthface.recognition.config import TrainConfig

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    marker = tmp_path / "killed"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), str(ROOT)]))
    for key, value in (("KILL_RANK", "1"), ("KILL_AT_STEP", "3"), ("KILL_MARKER", str(marker))):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "flow"
    overrides = [f"train.output_dir={out}", "logging.progress=true"]  # "resumed from" line
    cfg = load_config(setup["config"], TrainConfig, overrides)
    state = train_recognizer(config=cfg, processes=2, return_state=True)
    summary = state.result()
    assert marker.is_file()  # the hook did kill rank 1
    logs = _run_logs(state)
    assert "training launch failed: rank 1 (local_rank: 1) died: Signal 9 (SIGKILL)" in logs
    assert f"resumed from {out / 'checkpoints' / 'step-00000002'} at step 2" in logs
    assert summary["global_step"] == 4 and summary["completed"] is True
    _same_weights(out / "model", setup["reference"])


@pytest.mark.slow
def test_a_failing_launch_fails_the_flow_with_its_error_line_without_retrying(
    prefect_db, setup, tmp_path
):
    from synthface.flows.training import train_recognizer
    from synthface.pipeline.config import load_config
    from synthface.recognition.config import TrainConfig

    (tmp_path / "empty").mkdir()
    overrides = [f"train.output_dir={tmp_path / 'out'}", f"data.train={tmp_path / 'empty'}"]
    cfg = load_config(setup["config"], TrainConfig, overrides)
    state = train_recognizer(config=cfg, processes=1, return_state=True)
    assert state.is_failed()
    with pytest.raises(
        LaunchFailed, match=r"^training launch failed: \S+/empty/dataset.json: "
    ) as exc:
        state.result()
    assert exc.value.crashed is False
    logs = _run_logs(state)
    assert logs.count("launching 1 process(es)") == 1  # not retried: it would only repeat
    assert "synthface: error: " in logs  # the processes' own lines reached the run's log
