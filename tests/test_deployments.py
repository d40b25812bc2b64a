"""The deployment table: one source for `flows serve` and prefect.yaml (no server here;
tests/test_flows.py registers both ways against a real one and compares)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthface.flows.deployments import FLOWS, build_table, prefect_yaml
from synthface.pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SYNTHFACE = Path(sys.executable).parent / "synthface"


def test_the_repository_prefect_yaml_is_generated_from_the_table():
    expected = prefect_yaml(build_table(base=ROOT))
    assert (ROOT / "prefect.yaml").read_text() == expected, (
        "prefect.yaml is stale: run `synthface flows deployments --write-prefect-yaml`"
    )


def test_every_flow_is_deployable_and_its_parameters_validate():
    rows = build_table(base=ROOT)
    assert {r.entry.flow for r in rows} == {e.flow for e in FLOWS}
    assert "generate-synthetic/default" in {r.full_name for r in rows}
    for row in rows:
        flow = row.entry.load()
        assert flow.name == row.entry.flow
        if row.parameters:
            flow.validate_parameters(row.parameters)
    # config_file is what a run loads: the shipped default resolves to the demo models
    from synthface.flows.generate import resolve_config

    cfg = resolve_config(None, config_file="synthface:generate/default.yaml")
    assert (Path(cfg.generator.checkpoint) / "config.json").is_file()


def _config(path: Path, name: str, schedule: dict | None = None) -> Path:
    data = {"kind": "generate", "name": name, "generator": {"checkpoint": "m"}}
    if schedule:
        data["schedule"] = schedule
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_table_rows_carry_schedules_and_relative_config_refs(tmp_path):
    a = _config(
        tmp_path / "cfg" / "a.yaml", "nightly", {"cron": "0 2 * * *", "timezone": "Asia/Tokyo"}
    )
    b = _config(tmp_path / "cfg" / "b.yaml", "hourly", {"interval_seconds": 3600})
    rows = build_table([a, b], flows=["generate-synthetic"], base=tmp_path)
    by_name = {r.full_name: r for r in rows}
    assert set(by_name) == {"generate-synthetic/nightly", "generate-synthetic/hourly"}
    nightly = by_name["generate-synthetic/nightly"]
    assert nightly.parameters == {"config_file": "cfg/a.yaml"}
    assert (nightly.schedule.cron, nightly.schedule.timezone) == ("0 2 * * *", "Asia/Tokyo")
    doc = yaml.safe_load(prefect_yaml(rows))
    specs = {d["name"]: d.get("schedules") for d in doc["deployments"]}
    assert specs["nightly"] == [{"cron": "0 2 * * *", "timezone": "Asia/Tokyo"}]
    assert specs["hourly"] == [{"interval": 3600, "timezone": "UTC"}]
    with pytest.raises(ConfigError, match=r"deployment generate-synthetic/nightly is also defined"):
        build_table([a, _config(tmp_path / "c.yaml", "nightly")], base=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown flow\(s\) nope"):
        build_table([a], flows=["nope"])


def test_deployments_cli_lists_schedules_and_writes_prefect_yaml(tmp_path):
    a = _config(tmp_path / "a.yaml", "nightly", {"cron": "0 2 * * *", "timezone": "Europe/Paris"})
    res = subprocess.run(
        [SYNTHFACE, "flows", "deployments", "--config", a, "--json", "--write-prefect-yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    rows = {r["deployment"]: r for r in yaml.safe_load(res.stdout.split("\nwrote")[0])}
    assert rows["generate-synthetic/nightly"]["schedule"] == "0 2 * * *"
    assert rows["generate-synthetic/nightly"]["timezone"] == "Europe/Paris"
    assert "frcsyn-benchmark/on-demand" in rows
    doc = yaml.safe_load((tmp_path / "prefect.yaml").read_text())
    assert [d["name"] for d in doc["deployments"]] == ["nightly", "on-demand"]
    assert doc["deployments"][0]["parameters"] == {"config_file": "a.yaml"}


def test_empty_output_dir_is_a_usage_error(tmp_path):
    res = subprocess.run(
        [SYNTHFACE, "flows", "run", "generate", "--output-dir", ""],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "--output-dir: must not be empty" in res.stderr
    assert list(tmp_path.iterdir()) == []
