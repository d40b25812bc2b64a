"""The distribution claims only the ``synthface`` import name and lists every package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("pipeline", "generators", "recognition", "flows")


def test_pyproject_lists_every_package_folder():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {
        "synthface." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert on_disk <= listed, f"missing from pyproject.toml: {sorted(on_disk - listed)}"
    mapped = project["tool"]["setuptools"]["package-dir"]
    assert {mapped[f"synthface.{f}"] for f in FOLDERS} == set(FOLDERS)


def test_generic_names_stay_free(tmp_path):
    """Run outside the checkout: only ``synthface.*`` is importable, not ``pipeline``."""
    code = (
        "import importlib.util as u, synthface.pipeline, synthface.flows;"
        "print([n for n in ('pipeline','generators','recognition','flows') if u.find_spec(n)])"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
