"""Configs, registry and the CLI's error contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from synthface.pipeline.config import (
    StrictModel,
    apply_overrides,
    config_hash,
    load_config,
)
from synthface.pipeline.errors import ConfigError
from synthface.pipeline.registry import Registry


class _Generator(StrictModel):
    name: str = "id3"
    steps: int = Field(50, gt=0)


class _Root(StrictModel):
    generator: _Generator = _Generator()
    seed: int = 0


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "generate" / "x.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_error_names_file_field_expected_and_actual(tmp_path):
    path = _write(tmp_path, "generator:\n  steps: -3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, _Root)
    assert str(err.value) == f"{path}: line 2: generator.steps: must be > 0 (got -3)"


def test_unknown_key_is_an_error(tmp_path):
    path = _write(tmp_path, "generator:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"generator\.stepz: unknown key \(got 3\)"):
        load_config(path, _Root)


def test_defaults_fill_in_and_hash_is_stable(tmp_path):
    a = load_config(_write(tmp_path, "seed: 1\n"), _Root)
    assert a.generator.steps == 50
    b = _Root(seed=1)
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(_Root(seed=2))


def test_invalid_yaml_is_one_line(tmp_path):
    path = _write(tmp_path, "generator: [1,\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, _Root)
    assert "\n" not in str(err.value) and "invalid YAML" in str(err.value)


def test_overrides_parse_values_as_yaml():
    data = apply_overrides({"generator": {"steps": 5}}, ["generator.steps=7", "seed=3"])
    assert data == {"generator": {"steps": 7}, "seed": 3}
    with pytest.raises(ConfigError):
        apply_overrides({}, ["noequals"])


def test_registry_rejects_duplicates_and_names_known_entries():
    reg: Registry[int] = Registry("widget")

    @reg.register("one")
    def one(scale: int = 1) -> int:
        return scale

    with pytest.raises(ValueError):
        reg.register("one")(one)
    assert reg.create("one", scale=None) == 1  # None drops to the default
    with pytest.raises(ConfigError, match=r"unknown widget 'two' \(known: one\)"):
        reg.create("two")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synthface.pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_exit_codes_and_one_line_errors(tmp_path):
    assert _cli("--help").returncode == 0
    assert _cli("no-such-group").returncode == 2
    missing = _cli("config", "validate", str(tmp_path / "nope" / "x.yaml"), "--kind", "nope")
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
