"""Progress bars on long work (only on a terminal, never with --quiet), and the contact sheet."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthface.pipeline.progress import QUIET_ENV
from tests.flows_helpers import make_tiny_models, tiny_config


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    return root


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 40 * i % 255, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_generation_embedding_evaluation_and_scoring_show_progress_on_a_terminal(
    models, tmp_path, monkeypatch
):
    from synthface.generators.dataset import generate_dataset
    from synthface.pipeline.formats.verification_bin import write_bin
    from synthface.recognition import load_embedder
    from synthface.recognition.embed_files import embed_to_npy
    from synthface.recognition.evaluation.embed import embed_bin
    from synthface.recognition.frcsyn.scoring import embed_tree_images

    monkeypatch.delenv(QUIET_ENV, raising=False)
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    ds = tmp_path / "ds"
    generate_dataset(tiny_config(models, ds))  # 6 identities x 3 samples
    embed_to_npy(models / "recognizer", tmp_path / "e.npy", shards=ds, batch_size=4)
    write_bin(tmp_path / "v.bin", [_png(i) for i in range(8)], [True, False, True, False])
    emb = load_embedder(models / "recognizer")
    embed_bin(tmp_path / "v.bin", emb, batch_size=4)
    tree = tmp_path / "tree" / "images"
    tree.mkdir(parents=True)
    for i in range(5):
        (tree / f"{i}.png").write_bytes(_png(i))
    embed_tree_images(tree, [f"{i}.png" for i in range(5)], emb, batch_size=2)
    text = err.getvalue()
    for expected in ("generating", "18/18", "embedding", "evaluating v.bin", "8/8", "scoring"):
        assert expected in text, text[-2000:]

    quiet = _Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    monkeypatch.setenv(QUIET_ENV, "1")
    embed_tree_images(tree, ["0.png"], emb)
    monkeypatch.delenv(QUIET_ENV)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: no bar either
    embed_tree_images(tree, ["0.png"], emb)
    assert quiet.getvalue() == "" and "scoring" not in sys.stderr.getvalue()


def test_quiet_flag_reaches_child_processes(monkeypatch, capsys):
    from synthface.pipeline.cli import main

    monkeypatch.setenv(QUIET_ENV, "0")  # restored after the test
    assert main(["config", "validate", "--quiet", "synthface:generate/default.yaml"]) == 0
    assert os.environ[QUIET_ENV] == "1"


def test_contact_sheet_has_labelled_rows_and_no_empty_columns(models, tmp_path):
    from synthface.generators.dataset import generate_dataset

    ds = tmp_path / "ds"
    cfg = tiny_config(models, ds, report={"contact_identities": 2, "contact_samples": 8})
    generate_dataset(cfg)  # 3 samples per identity, 8 asked for
    sheet = np.asarray(Image.open(ds / "report" / "contact_sheet.png").convert("L"))
    tile = 16 * 4 + 2  # 16 px images enlarged to 64 px, 2 px gap
    label_w = sheet.shape[1] - 3 * tile
    assert sheet.shape[0] == 2 * tile and 0 < label_w < tile  # 3 columns, not 8
    for row in range(2):
        label = sheet[row * tile : (row + 1) * tile - 2, :label_w]
        assert (label < 128).any(), "identity label missing"
        last = sheet[row * tile : (row + 1) * tile - 2, label_w + 2 * tile : label_w + 3 * tile - 2]
        assert last.std() > 0 or last.mean() < 250  # the last column holds an image
    md = (ds / "report" / "report.md").read_text()
    assert "columns: their first 3 samples" in md and "labelled" in md
