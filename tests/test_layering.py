"""The import contract: ``pipeline`` < ``recognition`` < ``generators`` < ``flows``.

Each package may import only the ones below it (docs/architecture.md). The check reads
every module's source, so a lazy import inside a function counts as much as one at the
top: the layering is about what a package depends on, not about when the import runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipeline", "recognition", "generators", "flows")
# Package data, importable from any layer (found through importlib.resources).
DATA_PACKAGES = {"configs", "data"}


def synthface_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` for every ``synthface.X`` a module imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "synthface":
                names = [f"synthface.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "synthface" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def violations(layer: str) -> list[str]:
    allowed = set(LAYERS[: LAYERS.index(layer) + 1]) | DATA_PACKAGES
    out = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, package in synthface_imports(path):
            if package not in allowed:
                out.append(f"{path.relative_to(ROOT)}:{line} imports synthface.{package}")
    return out


@pytest.mark.parametrize("layer", LAYERS)
def test_each_package_imports_only_the_layers_below_it(layer):
    assert violations(layer) == []


def test_the_contract_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from synthface.flows import cli\n    import synthface.generators.base\n"
    )
    assert synthface_imports(module) == [(2, "flows"), (3, "generators")]
