"""Content-addressed stages: a moved or copied store reads its own files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from synthface.pipeline.stages import StageStore


def _work(d):
    (d / "data.txt").write_text("payload")
    return {"path": str(d / "data.txt"), "files": [str(d / "data.txt")], "n": 3, "note": "x"}


def test_a_moved_store_skips_finished_stages_and_reads_its_own_files(tmp_path):
    first = StageStore(tmp_path / "a")
    made = first.run("data", "one", {"size": 1}, _work)
    assert made["path"].startswith(str(tmp_path / "a")) and first.executed == ["data/one"]
    marker = json.loads((tmp_path / "a" / "data").glob("one-*/stage.json").__next__().read_text())
    assert marker["result"]["path"].startswith("@root/data/one-")  # no machine path stored

    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = StageStore(tmp_path / "b")
    again = moved.run("data", "one", {"size": 1}, _work)
    assert moved.skipped == ["data/one"] and moved.executed == []
    assert again["path"].startswith(str(tmp_path / "b"))
    assert Path(again["path"]).read_text() == "payload" and again["files"] == [again["path"]]
    assert (again["n"], again["note"]) == (3, "x")


def test_the_same_inputs_under_another_name_run_once(tmp_path):
    """The benchmark's conditioning encoder is the real-all row's seed-0 recognizer: the
    same recipe on the same data, trained once."""
    store = StageStore(tmp_path)
    calls = []

    def work(d):
        calls.append(d.name)
        return _work(d)

    a = store.run("recognizer", "encoder", {"recipe": "r", "data": "k"}, work)
    b = store.run("recognizer", "real-all-seed0", {"recipe": "r", "data": "k"}, work)
    c = store.run("recognizer", "real-all-seed1", {"recipe": "r", "data": "k", "seed": 1}, work)
    assert len(calls) == 2 and b["path"] == a["path"] and b["key"] == a["key"]
    assert store.skipped == ["recognizer/real-all-seed0"] and c["path"] != a["path"]
