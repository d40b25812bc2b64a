"""The distribution claims only the ``synthface`` import name and lists every package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

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


# What a wheel needs from the checkout; everything else (tests, bench, docs) stays out.
SOURCES = ("pyproject.toml", "README.md", *FOLDERS, "configs", "data")


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


@pytest.mark.slow
def test_wheel_installs_anywhere_and_runs_the_embedded_default_where_the_user_is(tmp_path):
    """Build the wheel, install it into a fresh venv, run `flows run generate` from an
    empty directory: the demo models come from the wheel, every write lands in that
    directory (dataset and .prefect/), nothing in the install location or $HOME."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("synthface-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "synthface/configs/generate/default.yaml" in names
    assert "synthface/data/demo/models/generator/final/model.safetensors" in names
    assert "synthface/data/demo/models/recognizer/model/model.safetensors" in names
    assert not {n.split("/")[0] for n in names} & set(FOLDERS)  # no generic top-level names

    # A fresh venv that sees this environment's dependencies (torch, prefect, ...) through
    # a .pth line instead of reinstalling them; only the wheel is installed into it.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "_synthface_test_deps.pth").write_text(f"{deps}\n")
    install = subprocess.run(
        [*pip, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    installed = _tree(venv)

    run, home = tmp_path / "run", tmp_path / "home"
    run.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SYNTHFACE_"))}
    # matplotlib's font cache is the user's, not ours: keep it out of the checked $HOME.
    env.update(
        HOME=str(home),
        MPLCONFIGDIR=str(tmp_path / "mpl"),
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
    )
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import synthface.flows; print(synthface.flows.__file__)"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    overrides = [
        "identities.count=2",
        "identities.samples_per_identity=2",
        "generator.steps=2",
        "report.contact_identities=2",
        "report.contact_samples=2",
    ]
    res = subprocess.run(
        [venv / "bin" / "synthface", "flows", "run", "generate", "--json"]
        + [a for o in overrides for a in ("--set", o)],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert Path(summary["dataset_dir"]) == run / "out" / "demo" / "dataset"
    assert summary["num_samples"] == 4
    assert (run / "out" / "demo" / "dataset" / "report" / "contact_sheet.png").is_file()
    assert sorted(p.name for p in run.iterdir()) == [".prefect", "out"]
    assert _tree(venv) == installed  # the install location is untouched
    assert list(home.iterdir()) == []  # nothing in ~/.prefect or elsewhere in $HOME
