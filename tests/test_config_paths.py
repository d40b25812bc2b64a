"""Configs: where relative paths point, the kind from the file, schedules checked at validate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthface.generators.dataset.config import GenerateConfig
from synthface.pipeline.config import infer_kind, load_any_config, load_config
from synthface.pipeline.errors import ConfigError
from synthface.recognition.config import TrainConfig

SYNTHFACE = Path(sys.executable).parent / "synthface"


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args, cwd=None, env=None):
    return subprocess.run(
        [SYNTHFACE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_relative_inputs_resolve_next_to_the_config_outputs_where_the_user_is(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("SYNTHFACE_HOME", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = _write(
        tmp_path / "project" / "cfgs" / "gen.yaml",
        {
            "kind": "generate",
            "generator": {"checkpoint": "../models/gen", "encoder": "~/enc"},
            "qc": {"gallery": "${SYNTHFACE_HOME}/gallery.npy"},
            "output": {"dir": "datasets/one"},
        },
    )
    cfg = load_config(path, GenerateConfig)
    assert cfg.generator.checkpoint == str(tmp_path / "project" / "models" / "gen")
    assert cfg.generator.encoder == str(Path.home() / "enc")
    assert cfg.qc.gallery == str(work / "gallery.npy")
    assert cfg.output.dir == str(work / "datasets" / "one")
    # an override given on the command line is relative to where the user is
    cfg = load_config(path, GenerateConfig, ["generator.checkpoint=mine", "output.dir=/abs/out"])
    assert cfg.generator.checkpoint == str(work / "mine") and cfg.output.dir == "/abs/out"
    monkeypatch.setenv("SYNTHFACE_HOME", str(tmp_path / "home"))
    cfg = load_config(path, GenerateConfig)
    assert cfg.output.dir == str(tmp_path / "home" / "datasets" / "one")
    assert cfg.qc.gallery == str(tmp_path / "home" / "gallery.npy")
    assert cfg.generator.checkpoint == str(tmp_path / "project" / "models" / "gen")


def test_every_config_kind_follows_the_path_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHFACE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    rec = _write(
        tmp_path / "a" / "rec.yaml",
        {
            "data": {"train": "shards"},
            "validation": {"sets": ["lfw.bin", "/abs/cfp.bin"]},
            "train": {"output_dir": "runs/r1"},
        },
    )
    cfg = load_any_config(rec, "recognition")
    assert cfg.data.train == str(tmp_path / "a" / "shards")
    assert cfg.validation.sets == [str(tmp_path / "a" / "lfw.bin"), "/abs/cfp.bin"]
    assert cfg.train.output_dir == str(tmp_path / "runs" / "r1")
    gen = _write(
        tmp_path / "b" / "gen.yaml",
        {
            "kind": "generators",
            "encoder": {"path": "enc"},
            "data": {"path": "data"},
            "train": {"output_dir": "g"},
        },
    )
    cfg = load_any_config(gen)
    assert cfg.encoder.path == str(tmp_path / "b" / "enc")
    assert cfg.data.path == str(tmp_path / "b" / "data")
    assert cfg.train.output_dir == str(tmp_path / "g")


def test_benchmark_and_privacy_configs_follow_the_path_rule(tmp_path, monkeypatch):
    """Path fields inside lists of sections (a benchmark's generators) resolve too; a
    shipped config reference stays a reference."""
    monkeypatch.delenv("SYNTHFACE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    bench = _write(
        tmp_path / "c" / "bench.yaml",
        {
            "kind": "benchmark",
            "output_dir": "runs/bench",
            "generators": [{"name": "id3", "config": "../gens/id3.yaml"}],
            "recognition": {"recipe": "synthface:recognition/world_tiny.yaml"},
        },
    )
    cfg = load_any_config(bench)
    assert cfg.generators[0].config == str(tmp_path / "gens" / "id3.yaml")
    assert cfg.recognition.recipe == "synthface:recognition/world_tiny.yaml"
    assert cfg.output_dir == str(tmp_path / "runs" / "bench")
    priv = _write(
        tmp_path / "d" / "priv.yaml",
        {
            "kind": "privacy",
            "recipe": "rec.yaml",
            "train_data": "shards",
            "protocols": ["lfw.bin"],
            "methods": [{"name": "unprotected"}],
            "attack": {"data": "attacker", "targets": "lfw.bin"},
        },
    )
    cfg = load_any_config(priv)
    assert cfg.train_data == str(tmp_path / "d" / "shards")
    assert cfg.protocols == [str(tmp_path / "d" / "lfw.bin")]
    assert cfg.attack.data == str(tmp_path / "d" / "attacker")


def test_required_and_empty_paths_are_clear_errors(tmp_path):
    path = _write(tmp_path / "g.yaml", {"kind": "generate", "identities": {"count": 2}})
    with pytest.raises(ConfigError, match=r"g\.yaml: generator: required key is missing"):
        load_config(path, GenerateConfig)
    path = _write(tmp_path / "g.yaml", {"generator": {"checkpoint": "x"}, "output": {"dir": ""}})
    with pytest.raises(ConfigError, match=r"output\.dir: must not be empty"):
        load_config(path, GenerateConfig)
    # the deployment's parameter schema advertises no default checkpoint
    schema = GenerateConfig.model_json_schema()
    section = schema["$defs"]["GeneratorSection"]
    assert "checkpoint" in section["required"]
    assert "default" not in section["properties"]["checkpoint"]


def test_kind_from_the_file_folder_only_as_fallback(tmp_path):
    odd = _write(tmp_path / "anywhere" / "r.yaml", {"kind": "recognition", "data": {"train": "x"}})
    assert infer_kind(odd) == "recognition"
    assert isinstance(load_any_config(odd), TrainConfig)
    folder = _write(tmp_path / "generate" / "g.yaml", {"generator": {"checkpoint": "x"}})
    assert infer_kind(folder) == "generate"
    lost = _write(tmp_path / "anywhere" / "g.yaml", {"generator": {"checkpoint": "x"}})
    with pytest.raises(ConfigError, match=r"no kind: key and folder 'anywhere'.*--kind"):
        infer_kind(lost)
    with pytest.raises(
        ConfigError, match=r"kind: 'recognition', but this command reads 'generate'"
    ):
        load_config(odd, GenerateConfig)
    bad = _write(tmp_path / "b.yaml", {"kind": "nope"})
    with pytest.raises(ConfigError, match=r"unknown config kind 'nope'"):
        infer_kind(bad)


def test_config_show_writes_the_kind_and_its_output_validates_anywhere(tmp_path):
    src = _write(
        tmp_path / "generate" / "g.yaml", {"generator": {"checkpoint": "m"}, "name": "mine"}
    )
    shown = _cli("config", "show", src, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("kind: generate\n")
    copy = tmp_path / "elsewhere" / "copy.yaml"
    copy.parent.mkdir()
    copy.write_text(shown.stdout)
    ok = _cli("config", "validate", copy, cwd=tmp_path)
    assert ok.returncode == 0 and "(generate," in ok.stdout
    assert load_config(copy, GenerateConfig).generator.checkpoint == str(tmp_path / "generate/m")


def test_bad_schedules_are_refused_at_validate(tmp_path):
    cases = [
        ({"cron": "61 * * * *"}, r"schedule\.cron: not a valid cron expression"),
        ({"cron": "0 2 * *"}, r"schedule\.cron: not a valid cron expression"),
        ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, r"schedule\.timezone: unknown time"),
        ({"cron": "0 2 * * *", "interval_seconds": 60}, r"schedule: set cron or interval"),
    ]
    for schedule, message in cases:
        path = _write(
            tmp_path / "g.yaml",
            {"kind": "generate", "generator": {"checkpoint": "x"}, "schedule": schedule},
        )
        with pytest.raises(ConfigError, match=message):
            load_any_config(path)
    res = _cli("config", "validate", path)  # the CLI: one line, no traceback
    assert res.returncode == 1
    assert "schedule: set cron or interval_seconds, not both" in res.stderr
    assert res.stderr.count("\n") == 1


def test_good_schedule_validates():
    cfg = GenerateConfig.model_validate(
        {
            "generator": {"checkpoint": "x"},
            "schedule": {"cron": "30 1 * * 1-5", "timezone": "Europe/Paris"},
        }
    )
    assert cfg.schedule.describe() == "30 1 * * 1-5 (Europe/Paris)"


def test_shipped_config_references(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_any_config("synthface:generate/default.yaml"), GenerateConfig)
    with pytest.raises(ConfigError, match=r"no such shipped config.*synthface:generate/default"):
        load_any_config("synthface:generate/nope.yaml")
