"""The consumer examples at the end of docs/shards.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from synthface.pipeline.shards.folder import from_folder
from tests.test_shards_support import make_folder

DOC = Path(__file__).resolve().parents[1] / "docs" / "shards.md"


def _examples() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    tail = text[text.index("## Examples of other trainings") :]
    return re.findall(r"```python\n(.*?)```", tail, flags=re.S)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    src = make_folder(root / "src", names=("a", "b", "c", "d"), per_identity=4)
    for p in src.rglob("*.png"):  # HF needs one image format; keep the example plain JPEG
        p.unlink()
    from_folder(src, root / "faces", max_samples=4)
    return root / "faces"


def _run(code: str, dataset: Path) -> dict:
    assert 'DATASET = "out/faces"' in code
    code = code.replace('DATASET = "out/faces"', f"DATASET = {str(dataset)!r}")
    namespace: dict = {"__name__": "__docs_example__"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


def test_there_are_three_examples():
    codes = _examples()
    assert len(codes) == 3
    assert (
        "DataLoader" in codes[0]
        and "Accelerator" in codes[1]
        and "load_dataset(" in codes[2]
        and '"webdataset"' in codes[2]
    )


def test_plain_pytorch_example(dataset):
    ns = _run(_examples()[0], dataset)
    assert ns["seen"] == 8 and ns["num_classes"] == 4


def test_accelerate_example(dataset):
    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    try:
        ns = _run(_examples()[1], dataset)
        # 8 samples per epoch, 4 per DataLoader worker, each worker batches its own: 2 x 2
        assert ns["steps"] == 4
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_hugging_face_example(dataset, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    ns = _run(_examples()[2], dataset)
    assert ns["ds"].num_rows == 8 and ns["first"]["cls"] == 0
