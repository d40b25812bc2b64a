"""``verify`` catches what the issue lists; ``inspect`` summarises; both CLI forms work."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

from synthface.pipeline.cli import main
from synthface.pipeline.shards.verify import verify_dataset
from tests.test_shards_support import make_dataset


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    make_dataset(root, identities=6, per_identity=3, max_samples=6)  # 3 shards of 6
    return root


@pytest.fixture
def ds(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "ds")
    return tmp_path / "ds"


def _shard(ds, i=1):
    return ds / "shards" / f"train-{i:06d}.tar"


def _rewrite_without(path, member):
    """Rebuild a tar with one member dropped (a valid tar, just incomplete)."""
    buf = io.BytesIO()
    with (
        tarfile.open(path) as src,
        tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for info in src.getmembers():
            if info.name != member:
                dst.addfile(info, src.extractfile(info))
    path.write_bytes(buf.getvalue())


def test_clean_dataset_verifies(pristine, capsys):
    report = verify_dataset(pristine)
    assert report == {"ok": True, "problems": [], "shards": 3, "samples": 18}
    assert main(["shards", "verify", str(pristine)]) == 0
    assert "ok:" in capsys.readouterr().out


def test_truncation(ds):
    path = _shard(ds)
    path.write_bytes(path.read_bytes()[:3000])
    problems = verify_dataset(ds)["problems"]
    assert any("size 3000 != " in p for p in problems)
    assert any("truncated or corrupt tar" in p or "holds 1 samples" in p for p in problems)
    assert all(str(path) in p for p in problems if "size" in p)


def test_flipped_byte(ds):
    path = _shard(ds, 2)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_dataset(ds)["problems"]
    assert any("train-000002.tar: sha256 differs from the manifest" in p for p in problems)


def test_missing_member(ds):
    _rewrite_without(_shard(ds, 0), "00000001/0002.json")
    problems = verify_dataset(ds)["problems"]
    assert any("sample 00000001/0002: missing .json member" in p for p in problems)
    assert any("sha256 differs" in p for p in problems)


def test_wrong_count_and_lists_every_problem(ds, capsys):
    manifest = json.loads((ds / "dataset.json").read_text())
    manifest["splits"]["train"]["shards"][1]["num_samples"] = 7
    (ds / "dataset.json").write_text(json.dumps(manifest))
    _rewrite_without(_shard(ds, 2), "00000005/0000.cls")  # a second, unrelated problem
    (ds / "shards" / "train-000009.tar").write_bytes(b"")  # and a third
    problems = verify_dataset(ds)["problems"]
    assert any("train-000001.tar: holds 6 samples, manifest says 7" in p for p in problems)
    assert any("00000005/0000: missing .cls member" in p for p in problems)
    assert any("train-000009.tar: shard file not listed in the manifest" in p for p in problems)
    assert main(["shards", "verify", str(ds), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and len(out["problems"]) == len(problems)


def test_identity_split_across_shards_and_label_range(ds):
    # move identity 1's last sample into shard 1 (as a wrong producer would)
    buf = io.BytesIO()
    with tarfile.open(_shard(ds, 0)) as src:
        moved = [
            (i, src.extractfile(i).read())
            for i in src.getmembers()
            if i.name.startswith("00000001/0002")
        ]
    with tarfile.open(_shard(ds, 1)) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for info, data in moved:
            dst.addfile(info, io.BytesIO(data))
        for info in src.getmembers():
            dst.addfile(info, src.extractfile(info))
    _shard(ds, 1).write_bytes(buf.getvalue())
    problems = verify_dataset(ds)["problems"]
    assert any("identity 1 is split across shards" in p for p in problems)
    assert any("identity 1 outside the shard's range 2..3" in p for p in problems)


def test_manifest_problems(ds, tmp_path):
    assert verify_dataset(tmp_path / "nowhere")["problems"][0].endswith(
        "no manifest (not a finished synthface dataset)"
    )
    (ds / "identities.npy").write_bytes(b"junk")
    (ds / "train-wids.json").write_text("{}")
    problems = verify_dataset(ds)["problems"]
    assert any("identities.npy: sha256 differs" in p for p in problems)
    assert any("train-wids.json: wids index unreadable or malformed" in p for p in problems)


def test_inspect(pristine, capsys):
    assert main(["shards", "inspect", str(pristine), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert (info["identities"], info["images"], info["shards"]) == (6, 18, 3)
    assert info["images_per_identity"]["histogram"] == {"3": 6}
    assert main(["shards", "inspect", str(pristine)]) == 0
    text = capsys.readouterr().out
    assert "6 identities, 18 images, 3 shards" in text and "3 images:        6 identities" in text


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["shards", "inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("synthface: error:")
        and "dataset.json: no manifest" in err
        and "\n" not in err
    )
