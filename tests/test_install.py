"""The set-up: `make install` re-runs on a change of its settings, and no documented install
leaves both onnxruntime builds (they share one module; with both, CUDA is lost).

The Makefile runs for real in a scratch folder, against a stand-in `python` that records
each pip command instead of running it; an install is then replayed on a set of
distribution names.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORT = {"onnxruntime", "onnxruntime-gpu"}
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "Makefile"]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9_.-]+)", requirement).group(1)).lower()


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _requires_ort(dist: str) -> set[str]:
    """The onnxruntime builds that an installed dependency requires by itself."""
    try:
        reqs = requires(dist) or []
    except PackageNotFoundError:
        return set()
    return {_name(r) for r in reqs if "extra ==" not in r} & ORT


def _installed_by(project: dict, extras: list[str]) -> set[str]:
    """onnxruntime builds that `pip install .[extras]` brings: ours, and our dependencies'."""
    opt = project["optional-dependencies"]
    unknown = [e for e in extras if e not in opt]
    assert not unknown, f"extras {unknown} are not defined in pyproject.toml"
    ours = [*project["dependencies"], *(r for e in extras for r in opt[e])]
    found = {_name(r) for r in ours} & ORT
    for r in project["dependencies"]:
        found |= _requires_ort(_name(r))
    return found


def replay(commands: list[list[str]], project: dict) -> set[str]:
    """The onnxruntime builds left after these pip command lines."""
    have: set[str] = set()
    for words in commands:
        if "pip" not in words:
            continue
        words = [w for w in words[words.index("pip") + 1 :] if not w.startswith("-")]
        verb, args = words[0], words[1:]
        if verb == "uninstall":
            have -= {_name(a) for a in args}
        elif verb == "install":
            for a in args:
                m = re.match(r"^(?:\.|[\w.-]*synthface)\[([^\]]*)\]$", a)
                if m:
                    have |= _installed_by(project, [e for e in m.group(1).split(",") if e])
                elif _name(a) in ORT:
                    have.add(_name(a))
    return have


# --- the Makefile -----------------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path) -> Path:
    """Makefile + pyproject.toml in a folder whose .venv/bin/python logs instead of runs."""
    if shutil.which("make") is None:
        pytest.skip("no make here")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "pip.log"}\n')
    fake.chmod(0o755)
    return tmp_path


def make_install(folder: Path, *settings: str) -> list[list[str]]:
    """Run `make install` there; the pip commands it ran (split in words)."""
    log = folder / "pip.log"
    log.unlink(missing_ok=True)
    run = subprocess.run(
        ["make", "-C", str(folder), *settings, "install"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def test_changing_torch_or_extras_reruns_the_install(scratch):
    first = make_install(scratch)
    assert ["-m", "pip", "--disable-pip-version-check", "install", "-q", "torch==2.13.0"] in first
    assert make_install(scratch) == []  # nothing changed: nothing to do
    again = make_install(scratch, "TORCH=torch")
    assert ["-m", "pip", "--disable-pip-version-check", "install", "-q", "torch"] in again
    assert make_install(scratch, "TORCH=torch") == []
    assert any(
        ".[gpu,dev]" in words for words in make_install(scratch, "TORCH=torch", "EXTRAS=gpu,dev")
    )
    assert make_install(scratch) != []  # back to the defaults is a change too


def test_every_make_install_leaves_one_onnxruntime(scratch, project):
    for extras in ("cpu,dev", "gpu,dev", "gpu,dev,dask"):
        commands = make_install(scratch, f"EXTRAS={extras}")
        left = replay(commands, project)
        want = "onnxruntime-gpu" if "gpu" in extras else "onnxruntime"
        assert left == {want}, f"make EXTRAS={extras} install leaves {sorted(left)}"


def test_switching_extras_removes_the_other_build_before_installing(scratch, project):
    """gpu -> cpu: onnxruntime-gpu must go before onnxruntime is installed (shared files)."""
    make_install(scratch, "EXTRAS=gpu,dev")
    commands = make_install(scratch, "EXTRAS=cpu,dev")
    pip = [[x for x in w[w.index("pip") + 1 :] if not x.startswith("-")] for w in commands]
    drop = next(i for i, w in enumerate(pip) if w[0] == "uninstall" and "onnxruntime-gpu" in w)
    add = next(i for i, w in enumerate(pip) if w[0] == "install" and ".[cpu,dev]" in w)
    assert drop < add


# --- pyproject extras and the documented installs ----------------------------------------


def test_extras_name_one_onnxruntime_each(project):
    base = {_name(r) for r in project["dependencies"]}
    assert not base & ORT, "a base dependency on onnxruntime makes the gpu extra install both"
    opt = project["optional-dependencies"]
    assert {_name(r) for r in opt["cpu"]} & ORT == {"onnxruntime"}
    assert {_name(r) for r in opt["gpu"]} & ORT == {"onnxruntime-gpu"}
    for name, reqs in opt.items():
        assert len({_name(r) for r in reqs} & ORT) <= 1, f"extra {name} names both builds"


def _documented_installs() -> list[tuple[str, list[list[str]]]]:
    """Each fenced block's pip/make install lines, as command word lists, with where."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        blocks = re.findall(r"```[\w-]*\n(.*?)```", text, flags=re.S) if path.suffix else [text]
        for block in blocks:
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip().lstrip("#").strip()
                for part in re.split(r"\s*&&\s*", line):
                    words = part.replace("'", "").replace('"', "").split()
                    if "pip" in words and {"install", "uninstall"} & set(words):
                        found.append((f"{path.name}: {line}", words))
    return found


def test_no_documented_install_leaves_both_onnxruntime_builds(project, scratch):
    lines = _documented_installs()
    assert any("[gpu]" in " ".join(w) for _, w in lines), "the docs show no gpu install"
    by_line: dict[str, list[list[str]]] = {}
    for where, words in lines:
        by_line.setdefault(where, []).append(words)
    for where, commands in by_line.items():
        left = replay(commands, project)
        assert len(left) <= 1, f"{where}: leaves {sorted(left)}"
    # the documented make lines: every EXTRAS= a doc shows
    for path in DOCS[:-1]:
        for extras in re.findall(r"make [^\n`]*EXTRAS=\"?([\w,]+)", path.read_text()):
            left = replay(make_install(scratch, f"EXTRAS={extras}"), project)
            assert len(left) == 1, f"{path.name}: make EXTRAS={extras} install leaves {left}"


def test_both_builds_installed_is_one_line_naming_the_fix(monkeypatch):
    import onnxruntime

    from synthface.pipeline.errors import InputError
    from synthface.recognition import embedder

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the conflict cannot be staged here")
    monkeypatch.setattr(
        embedder, "onnxruntime_distributions", lambda: ["onnxruntime 1.0", "onnxruntime-gpu 1.0"]
    )
    with pytest.raises(InputError) as err:
        embedder._providers("cuda")
    msg = str(err.value)
    assert "\n" not in msg and "both installed" in msg and "pip uninstall -y onnxruntime" in msg
    monkeypatch.setattr(embedder, "onnxruntime_distributions", lambda: ["onnxruntime 1.0"])
    with pytest.raises(InputError, match="install the 'gpu' extra"):
        embedder._providers("cuda")
