"""The flow against a real ``prefect server start``: served deployments, the Prefect CLI,
schedules, SIGKILL-and-resume, and the Dask task runner.

One server (temporary PREFECT_HOME, loopback only) is shared by the whole module: its
first start runs the database migrations, which is the slow part.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from synthface.generators.dataset import generate_dataset
from synthface.generators.dataset.config import GenerateConfig
from synthface.pipeline.shards import load_manifest
from tests.flows_helpers import PrefectServer, make_tiny_models, stop_group, tiny_config
from tests.test_flows_units import tree_hashes

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = PrefectServer(
        tmp_path_factory.mktemp("prefect-home"),
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
    )
    srv.start()
    yield {"url": srv.url, "env": srv.env, "home": srv.home}
    srv.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    return root


def _config_file(path: Path, cfg, kind: str = "generate") -> Path:
    path.write_text(yaml.safe_dump({"kind": kind, **cfg.model_dump(mode="json")}))
    return path


def _prefect(server, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "prefect", *args], env=server["env"], capture_output=True, text=True, timeout=timeout
    )


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}")
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def served(server, models, tmp_path_factory):
    """``synthface flows serve`` with a manual and a scheduled (every 10 s) deployment."""
    root = tmp_path_factory.mktemp("served")
    manual = _config_file(root / "tiny.yaml", tiny_config(models, root / "manual"))
    sched_cfg = tiny_config(
        models,
        root / "scheduled",
        identities={"count": 2, "samples_per_identity": 2},
        report={"enabled": False},
    ).model_copy(update={"name": "tiny-scheduled"})
    sched_cfg = sched_cfg.model_copy(
        update={"schedule": sched_cfg.schedule.model_copy(update={"interval_seconds": 10})}
    )
    scheduled = _config_file(root / "scheduled.yaml", sched_cfg)
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [BIN / "synthface", "flows", "serve", "--config", manual, "--config", scheduled],
        env=server["env"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=root,
    )

    def registered():
        r = httpx.get(server["url"] + "/deployments/name/generate-synthetic/tiny-scheduled")
        return r.status_code == 200

    _wait_for(registered, 120, "deployments to be registered", proc)
    yield {"root": root, "proc": proc}
    stop_group(proc)
    log.close()


def test_scheduled_run_executes(server, served):
    dep = httpx.get(server["url"] + "/deployments/name/generate-synthetic/tiny-scheduled").json()

    def runs(state: str):
        r = httpx.post(
            server["url"] + "/flow_runs/filter",
            json={
                "deployments": {"id": {"any_": [dep["id"]]}},
                "flow_runs": {"state": {"type": {"any_": [state]}}},
            },
        )
        return r.json() if r.status_code == 200 else []

    try:
        done = _wait_for(
            lambda: runs("COMPLETED"), 150, "a scheduled run to complete", served["proc"]
        )
    finally:
        # Stop the 10 s schedule so that it does not compete with the other tests for CPU.
        httpx.post(server["url"] + f"/deployments/{dep['id']}/pause_deployment")
        for run in runs("SCHEDULED"):
            httpx.delete(server["url"] + f"/flow_runs/{run['id']}")
    assert done[0]["auto_scheduled"] is True
    assert load_manifest(served["root"] / "scheduled")["splits"]["train"]["num_samples"] == 4


def test_deployment_run_through_the_prefect_cli(server, served):
    out = served["root"] / "cli-run"
    res = _prefect(
        server,
        "deployment",
        "run",
        "generate-synthetic/tiny",
        "--param",
        "identities=4",
        "--param",
        f"output_dir={out}",
        "--watch",
        "--watch-timeout",
        "240",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    split = load_manifest(out)["splits"]["train"]
    assert split["num_identities"] == 4 and split["num_samples"] == 12 and split["num_shards"] == 2
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "train-000000.tar",
        "train-000001.tar",
    ]
    keys = ["generate-progress", "generate-shards", "generate-qc-flags", "generate-summary"]
    arts = httpx.post(
        server["url"] + "/artifacts/filter", json={"artifacts": {"key": {"any_": keys}}}
    ).json()
    assert {a["key"] for a in arts} == set(keys)
    progress = [a for a in arts if a["key"] == "generate-progress"]
    assert all(float(a["data"]) == 100.0 for a in progress)  # updated as shards finished
    assert any(a["key"] == "generate-summary" and str(out) in a["data"] for a in arts)


def test_bad_parameter_fails_fast_naming_the_field(server, served):
    t0 = time.monotonic()
    res = _prefect(
        server, "deployment", "run", "generate-synthetic/tiny", "--param", "identities=-3"
    )
    assert res.returncode != 0
    assert "identities" in res.stdout + res.stderr
    assert time.monotonic() - t0 < 60


def _registered(server, full_name: str) -> dict | None:
    r = httpx.get(server["url"] + "/deployments/name/" + full_name)
    if r.status_code != 200:
        return None
    d = r.json()
    schedules = sorted(
        (
            s["schedule"].get("cron") or s["schedule"].get("interval"),
            s["schedule"].get("timezone"),
            s["active"],
        )
        for s in d["schedules"]
    )
    keys = ("entrypoint", "parameters", "tags", "description", "enforce_parameter_schema")
    return {k: d[k] for k in keys} | {"schedules": schedules}


def test_prefect_deploy_and_flows_serve_register_the_same_deployments(server, models, tmp_path):
    """One table: `prefect deploy --all` on the generated prefect.yaml and `flows serve`
    give the same names, entrypoints, parameters, schedules and time zones."""
    work = tmp_path / "project"
    (work / "configs").mkdir(parents=True)
    base = tiny_config(models, work / "out").model_dump(mode="json")
    paths = []
    for name, schedule in (
        ("nightly", {"cron": "0 3 * * *", "timezone": "Europe/Paris"}),
        ("weekly", {"interval_seconds": 604800, "timezone": "Asia/Tokyo"}),
    ):
        cfg = GenerateConfig.model_validate(base | {"name": name, "schedule": schedule})
        paths.append(_config_file(work / "configs" / f"{name}.yaml", cfg))
    recipe = work / "configs" / "tiny_rec.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "recognition", "data": {"train": "shards"}}))
    args = [a for p in [*paths, recipe] for a in ("--config", str(p))]
    res = subprocess.run(
        [BIN / "synthface", "flows", "deployments", *args, "--write-prefect-yaml", "--json"],
        cwd=work,
        env=server["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    table = yaml.safe_load(res.stdout)
    names = [row["deployment"] for row in table]
    assert sorted(names) == sorted(
        [
            "generate-synthetic/nightly",
            "generate-synthetic/weekly",
            "train-recognizer/tiny_rec",
            "frcsyn-benchmark/on-demand",
        ]
    )
    assert (
        _prefect(server, "work-pool", "create", "synthface-process", "--type", "process").returncode
        == 0
    )
    deployed = subprocess.run(
        [BIN / "prefect", "--no-prompt", "deploy", "--all"],
        cwd=work,
        env=server["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    by_deploy = {n: _registered(server, n) for n in names}
    assert all(by_deploy.values()), by_deploy
    assert by_deploy["generate-synthetic/nightly"]["schedules"] == [
        ("0 3 * * *", "Europe/Paris", True)
    ]
    assert by_deploy["generate-synthetic/weekly"]["schedules"] == [(604800.0, "Asia/Tokyo", True)]
    assert by_deploy["generate-synthetic/nightly"]["parameters"] == {
        "config_file": "configs/nightly.yaml"
    }
    for name in names:  # forget them, so that what follows is serve's registration
        dep = httpx.get(server["url"] + "/deployments/name/" + name).json()
        url = server["url"] + f"/deployments/{dep['id']}"
        _wait_for(lambda url=url: httpx.delete(url).status_code in (204, 404), 60, "a delete")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [BIN / "synthface", "flows", "serve", *args],
        cwd=work,
        env=server["env"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: all(_registered(server, n) for n in names), 120, "serve's deployments", proc
        )
        by_serve = {n: _registered(server, n) for n in names}
    finally:
        stop_group(proc)
        log.close()
    assert by_serve == by_deploy


def test_error_inside_a_flow_run_prints_one_line(server, models, tmp_path):
    """Prefect logs a failing task and flow with tracebacks; the CLI shows one line (the
    traceback only with --debug), and a --set value is blamed on the override."""
    config = _config_file(tmp_path / "ok.yaml", tiny_config(models, tmp_path / "ds"))
    missing = tmp_path / "no-such-generator"
    cmd = ["flows", "run", "generate", "--config", str(config)]
    bad = [*cmd, "--set", f"generator.checkpoint={missing}"]

    def run(*args):
        return subprocess.run(
            [BIN / "synthface", *args], env=server["env"], capture_output=True, text=True
        )

    res = run(*bad)
    assert res.returncode == 1
    mentions = [line for line in res.stderr.splitlines() if str(missing) in line]
    assert mentions == [
        f"synthface: error: generator.checkpoint: {missing}: not a generator checkpoint "
        "(no such directory); train one (`make demo` builds the demo's) or point "
        "generator.checkpoint at one"
    ], res.stderr
    assert "Traceback" not in res.stderr
    assert "Traceback" in run("--debug", *bad).stderr
    res = run(*cmd, "--set", "identities.count=0")
    assert res.stderr.strip() == (
        "synthface: error: --set identities.count=0: identities.count: must be >= 1 (got 0)"
    )


SECTIONS = {"identities": {"count": 10, "samples_per_identity": 3}}


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory) -> dict[str, str]:
    """File hashes of the dataset an uninterrupted, in-process, thread-runner run writes."""
    ref = tmp_path_factory.mktemp("reference") / "ds"
    generate_dataset(tiny_config(models, ref, **SECTIONS))
    return tree_hashes(ref)


def test_sigkill_at_random_points_then_resume_is_byte_identical(
    server, models, reference, tmp_path
):
    out = tmp_path / "run" / "ds"
    config = _config_file(tmp_path / "kill.yaml", tiny_config(models, out, **SECTIONS))
    cmd = [BIN / "synthface", "flows", "run", "generate", "--config", config]
    rng = random.Random(int(os.environ.get("SYNTHFACE_KILL_SEED", "0")))
    records = out / "records"

    def shards_done() -> int:
        return len(list(records.glob("train-0*.json"))) if records.is_dir() else 0

    total = 5  # 10 identities x 3 samples, 6 per shard

    # Kill points are events, not wall-clock delays, so a fast machine cannot outrun them:
    # "k shard records exist" (k random, up to all of them, i.e. inside finalize) plus a
    # short random delay. A kill counts only if the dataset was still unfinished after it.
    landed = 0
    for _ in range(8):
        if landed >= 2:
            break
        if (out / "dataset.json").exists():
            if landed:
                break  # a resumed run finished: the final run below is a no-op re-run
            shutil.rmtree(out)  # finished before any kill landed: start over
        target = rng.randint(min(shards_done() + 1, total), total)
        proc = subprocess.Popen(
            cmd,
            env=server["env"],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while shards_done() < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        landed += not (out / "dataset.json").exists()
    assert landed >= 1, "every run finished before it could be killed"
    res = subprocess.run(cmd, env=server["env"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert tree_hashes(out) == reference
    print(f"sigkill-resume: {landed} kills landed, {len(reference)} files byte-identical")


def test_dask_task_runner_with_two_local_workers(server, models, reference, tmp_path):
    pytest.importorskip("prefect_dask")
    out = tmp_path / "run" / "ds"
    cfg = tiny_config(models, out, runner={"kind": "dask", "dask_workers": 2}, **SECTIONS)
    config = _config_file(tmp_path / "dask.yaml", cfg)
    res = subprocess.run(
        [BIN / "synthface", "flows", "run", "generate", "--config", config],
        env=server["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "local_dask_cluster" in res.stdout + res.stderr  # the shard tasks ran on Dask workers
    assert tree_hashes(out) == reference


def test_frcsyn_benchmark_flow_scores_packages_and_validates(server, tmp_path):
    """The benchmarking flow wraps recognition.frcsyn: tiny untrained models, tiny trees."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from synthface.recognition import create_backbone, save_recognizer
    from synthface.recognition.frcsyn.comparisons import read_comparisons
    from tests.test_frcsyn import make_tree

    for name, seed in (("prop", 0), ("base", 1)):
        torch.manual_seed(seed)
        model = create_backbone("tiny", input_size=32, embedding_dim=8).eval()
        save_recognizer(model, tmp_path / name, {})
    rng = np.random.default_rng(0)
    for tree, ds in (("eval", "bupt"), ("cal", "hold")):
        root = make_tree(tmp_path / tree, [ds], subjects=2, per=2, prefix=tree, seed=len(tree))
        for rel in read_comparisons(root / "comparisons", ds).images():
            img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "images" / rel)
    args = {
        "proposed": str(tmp_path / "prop"),
        "baseline": str(tmp_path / "base"),
        "eval_tree": str(tmp_path / "eval"),
        "calibration_tree": str(tmp_path / "cal"),
        "out_dir": str(tmp_path / "run"),
        "subtask": "1.1",
        "datasets": ["bupt"],
    }
    code = (
        "import json, sys; from synthface.flows.training import frcsyn_benchmark; "
        "print('RESULT', json.dumps(frcsyn_benchmark(**json.loads(sys.argv[1]))))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        env=server["env"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.split("RESULT ", 1)[1])
    assert out["valid"] is True and out["zip"].endswith(".zip")
    assert "TO" in out["metrics"]["systems"]["proposed"]


def test_benchmark_flow_through_the_cli_runs_generation_as_a_subflow(server, tmp_path):
    """`synthface benchmark synthetic`: the flow, its stage tasks and the generate-synthetic
    subflow, on the smallest benchmark (one generator, one protocol, no FRCSyn/variation)."""
    import json

    from synthface.flows.deployments import build_table
    from tests.test_benchmark import tiny_config

    cfg = tiny_config(
        tmp_path / "bench",
        real={"protocols": {"names": ["lfw"], "folds": 2, "pairs_per_fold": 16}},
        evaluation={"frcsyn": False},
        variation={"enabled": False},
    )
    (tmp_path / "configs" / "benchmark").mkdir(parents=True)
    config = _config_file(tmp_path / "configs" / "benchmark" / "tiny.yaml", cfg, "benchmark")
    res = subprocess.run(
        [BIN / "synthface", "benchmark", "synthetic", "--config", str(config), "--json"],
        env={**server["env"], "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    logs = res.stdout + res.stderr
    assert "subflow run" in logs and "generate-synthetic" in logs
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert set(out["mean_accuracy"]) == {"real", "real-all", "plain", "real+plain"}
    assert "generator/plain" in out["stages"]["executed"]
    assert (tmp_path / "bench" / "report" / "benchmark.md").is_file()
    (row,) = build_table([config], flows=["benchmark-synthetic"], base=tmp_path)
    assert row.full_name == "benchmark-synthetic/tiny"
    assert row.parameters == {"config_file": "configs/benchmark/tiny.yaml"}


def test_privacy_benchmark_flow_then_the_cli_reuses_every_step(server, tmp_path):
    """`synthface flows run privacy-benchmark` trains, verifies and attacks each row (a
    reconstruction attack for the baseline, template attacks for SlerpFace) and writes the
    table; `synthface privacy benchmark` (no Prefect) on the same config then skips every
    step and writes the same table. Tiny world, a few optimiser steps: plumbing only."""
    import json

    from synthface.pipeline.world import make_protocol, make_world_dataset

    make_world_dataset(tmp_path / "train", identities=6, per_identity=4, size=32)
    make_world_dataset(tmp_path / "attacker", identities=6, per_identity=4, size=32,
                       split="eval")  # fmt: skip
    make_protocol(tmp_path / "pairs", "lfw", folds=2, pairs_per_fold=8, size=32)
    tiny = ["model.input_size=32", "model.embedding_dim=32",
            "model.params={widths: [8, 8, 16, 16]}", "train.max_steps=2", "data.batch_size=8",
            "data.num_workers=0", "data.shuffle_buffer=32", "checkpoint.every_steps=0",
            "logging.progress=false"]  # fmt: skip
    config = tmp_path / "privacy.yaml"
    config.write_text(yaml.safe_dump({
        "kind": "privacy", "name": "tiny", "output_dir": str(tmp_path / "run"),
        "recipe": str(Path(__file__).resolve().parents[1] / "configs/recognition/world_tiny.yaml"),
        "recipe_overrides": tiny, "train_data": "train", "protocols": ["pairs/lfw.bin"],
        "methods": [{"name": "unprotected"},
                    {"name": "slerpface", "protection": "slerpface", "params": {"group_size": 8}}],
        "attack": {"data": "attacker", "images": 16, "targets": "pairs/lfw.bin",
                   "target_pairs": 10, "inversion": {"steps": 2, "batch_size": 8, "widths": [8]}},
    }))  # fmt: skip
    env = {**server["env"], "OMP_NUM_THREADS": "1"}
    flow = subprocess.run(
        [BIN / "synthface", "flows", "run", "privacy-benchmark", str(config), "--json"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert flow.returncode == 0, flow.stderr[-3000:]
    table = (tmp_path / "run" / "table.md").read_bytes()
    rows = {
        r["method"]: r for r in json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    }
    assert set(rows) == {"unprotected", "slerpface"}
    assert rows["unprotected"]["goal_met"] is False and rows["slerpface"]["steps"] == 2
    assert b"Templates (slerpface)" in table and b"cross-key" in table
    assert rows["unprotected"]["chance"] == 10.0  # 1 / target_pairs
    cli = subprocess.run(
        [BIN / "synthface", "privacy", "benchmark", str(config), "--json"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stderr.count("skipped") == 3  # the judge and both rows' training
    # verification and attacks come from their records
    assert "reconstruction attack" not in cli.stderr and "template attacks" not in cli.stderr
    assert "cosine: accuracy" not in cli.stderr
    assert (tmp_path / "run" / "table.md").read_bytes() == table
    assert json.loads(cli.stdout)["rows"] == list(rows.values())
