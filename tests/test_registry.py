"""Registries that know their built-ins: no caller has to import the modules that fill them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from synthface.pipeline.errors import ConfigError
from synthface.pipeline.registry import Registry


def _module(tmp_path, monkeypatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_builtin_module_is_imported_on_first_get_only(tmp_path, monkeypatch):
    reg: Registry[int] = Registry("widget", builtins={"lazy_one": "reg_lazy_one"})
    monkeypatch.setitem(sys.modules, "reg_under_test", reg)  # what the module registers into
    _module(tmp_path, monkeypatch, "reg_lazy_one", """
        import sys

        @sys.modules["reg_under_test"].register("lazy_one")
        def lazy_one():
            return 1
    """)  # fmt: skip
    assert reg.names() == ["lazy_one"] and "lazy_one" in reg
    assert "reg_lazy_one" not in sys.modules  # listing and membership import nothing
    assert reg.create("lazy_one") == 1
    assert "reg_lazy_one" in sys.modules
    with pytest.raises(ConfigError, match=r"^unknown widget 'two' \(known: lazy_one\)$"):
        reg.get("two")


def test_builtin_module_that_does_not_register_its_name_is_named(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "reg_silent", "VALUE = 1\n")
    reg: Registry[int] = Registry("widget", builtins={"silent": "reg_silent"})
    with pytest.raises(RuntimeError, match="reg_silent was imported but did not register"):
        reg.get("silent")


def test_another_module_cannot_take_a_builtin_name():
    reg: Registry[int] = Registry("widget", builtins={"taken": "somewhere.else"})

    def taken() -> int:
        return 0

    with pytest.raises(ValueError, match=r"'taken' is a built-in name \(of somewhere\.else\)"):
        reg.register("taken")(taken)
    with pytest.raises(ValueError, match="snake_case"):
        Registry("widget", builtins={"Bad Name": "m"})


_FRESH = """
import sys
from synthface.generators.base import GENERATORS
from synthface.recognition.training.objectives import OBJECTIVES, build_objectives

builtin = ("id3", "plain", "uiface", "morphface")
loaded = [m for m in sys.modules if m.endswith((".id3.generator", ".plain", ".uiface.generator"))]
assert loaded == [], loaded  # importing the base imports no subclass module
assert GENERATORS.names() == sorted(builtin), GENERATORS.names()
assert GENERATORS.get("uiface").__name__ == "UIFaceGenerator"
assert all(GENERATORS.get(n).name == n for n in builtin)
assert OBJECTIVES.names() == ["adversarial", "ddl", "distill", "ekd"], OBJECTIVES.names()
assert OBJECTIVES.get("ekd").__name__ == "EKDObjective", OBJECTIVES.get("ekd")

from synthface.generators.id3.generator import ID3Generator

@GENERATORS.register("mine")
class Mine(ID3Generator):
    name = "mine"

assert GENERATORS.get("mine") is Mine and "mine" in GENERATORS.names()
print("ok")
"""


def test_fresh_interpreter_finds_every_builtin_without_a_private_call():
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
