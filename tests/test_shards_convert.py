"""Folder converters: lossless round trip and every bad input of issue 2 §5 for folders."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.shards import ShardIndexDataset, completed_shards, load_manifest
from synthface.pipeline.shards.folder import from_folder, to_folder
from synthface.pipeline.shards.verify import verify_dataset
from tests.test_shards_support import jpeg_file_bytes, make_folder, tiny_image


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_folder_round_trip_keeps_bytes(tmp_path):
    src = make_folder(tmp_path / "src", names=("alice", "bob", "carol", "dave"), per_identity=3)
    assert (
        main(["shards", "from-folder", str(src), str(tmp_path / "ds"), "--max-samples", "5"]) == 0
    )
    manifest = load_manifest(tmp_path / "ds")["splits"]["train"]
    assert (manifest["num_identities"], manifest["num_samples"], manifest["num_shards"]) == (
        4,
        12,
        4,
    )
    assert manifest["members"] == ["cls", "jpg", "json", "png"]
    assert verify_dataset(tmp_path / "ds")["ok"]
    assert np.load(tmp_path / "ds" / "names.npy").tolist() == ["alice", "bob", "carol", "dave"]
    assert main(["shards", "to-folder", str(tmp_path / "ds"), str(tmp_path / "back")]) == 0
    assert _files(tmp_path / "back") == _files(src)
    # resumable / idempotent: a second export finds every file already identical
    assert to_folder(tmp_path / "ds", tmp_path / "back") == {
        "written": 0,
        "unchanged": 12,
        "out": str(tmp_path / "back"),
    }
    # and a re-conversion writes byte-identical shards
    from_folder(src, tmp_path / "ds2", max_samples=5)
    shards = sorted((tmp_path / "ds").glob("shards/*.tar"))
    assert [p.read_bytes() for p in shards] == [
        p.read_bytes() for p in sorted((tmp_path / "ds2").glob("shards/*.tar"))
    ]


def test_other_formats_become_png_and_names_with_dots_and_unicode(tmp_path):
    src = tmp_path / "src"
    for name in ("josé.garcía", "李雷", "x.y.z"):
        (src / name).mkdir(parents=True)
        buf = io.BytesIO()
        Image.fromarray(tiny_image(len(name))).save(buf, "BMP")
        (src / name / "face.bmp").write_bytes(buf.getvalue())
        (src / name / "b.v2.jpg").write_bytes(jpeg_file_bytes(len(name)))
    from_folder(src, tmp_path / "ds")
    ds = ShardIndexDataset(tmp_path / "ds")
    names = [ds[i]["meta"]["identity_name"] for i in range(len(ds))]
    assert names == ["josé.garcía"] * 2 + ["x.y.z"] * 2 + ["李雷"] * 2  # sorted by code point
    assert all("." not in ds[i]["__key__"] for i in range(len(ds)))
    bmp = ds[1]
    assert bmp["meta"]["converted_from"] == "bmp" and bmp["meta"]["source"].endswith("face.png")
    assert np.array_equal(bmp["image"], tiny_image(len("josé.garcía")))  # lossless
    to_folder(tmp_path / "ds", tmp_path / "back")
    back = _files(tmp_path / "back")
    assert back["李雷/b.v2.jpg"] == (src / "李雷" / "b.v2.jpg").read_bytes()
    assert "李雷/face.png" in back


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda s: s.mkdir(), "empty source: no identity sub-folders"),
        (lambda s: (s / "a").mkdir(parents=True), "identity folder holds no images"),
        (
            lambda s: _with(s, "a/x.jpg", b"\xff\xd8\xff\xe0 truncated"),
            "a/x.jpg: cannot decode image",
        ),
        (lambda s: _with(s, "a/x.jpg", b"GIF89a not really"), "a/x.jpg: corrupt image"),
        (lambda s: _with(s, "a/notes.txt", b"hello"), "a/notes.txt: not an image file"),
        (lambda s: _with(s, "a/sub/x.jpg", jpeg_file_bytes(1)), "a/sub: nested folder"),
        (lambda s: _with(s, "readme.md", b"#"), "readme.md: a file at the top of SRC"),
        (lambda s: _with(s, "a/x.jpg", b""), "a/x.jpg: empty file"),
    ],
)
def test_bad_sources(tmp_path, setup, match):
    src = tmp_path / "src"
    setup(src)
    with pytest.raises(InputError, match=match) as err:
        from_folder(src, tmp_path / "ds")
    assert "\n" not in str(err.value)
    assert completed_shards(tmp_path / "ds") == {}
    assert not (tmp_path / "ds" / "dataset.json").exists()


def _with(src, rel, data):
    path = src / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_bad_file_after_complete_shards_leaves_them_but_no_manifest(tmp_path, capsys):
    src = make_folder(tmp_path / "src", names=("a", "b", "c"), per_identity=2)
    (src / "c" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert (
        main(["shards", "from-folder", str(src), str(tmp_path / "ds"), "--max-samples", "2"]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "c/zz.png: cannot decode image" in err
    # shard 0 (identity a) was closed; shard 1 (b) was still open when c failed: dropped
    assert sorted(completed_shards(tmp_path / "ds")) == [0]
    assert not (tmp_path / "ds" / "dataset.json").exists()
    assert not list((tmp_path / "ds" / "shards").glob(".*"))


def test_skip_non_images_and_non_utf8_names(tmp_path):
    src = make_folder(tmp_path / "src", names=("a",), per_identity=1)
    (src / "a" / "notes.txt").write_text("x")
    (src / ".DS_Store").write_bytes(b"junk")  # hidden: always ignored
    assert (
        from_folder(src, tmp_path / "ds", skip_non_images=True)["splits"]["train"]["num_samples"]
        == 1
    )
    bad = tmp_path / "src2"
    (bad / "ok").mkdir(parents=True)
    import os

    os.mkdir(os.fsencode(bad) + b"/\xff\xfe")
    with pytest.raises(InputError, match="not valid UTF-8"):
        from_folder(bad, tmp_path / "ds2")


def test_from_folder_refuses_a_directory_with_another_dataset(tmp_path):
    src1 = make_folder(tmp_path / "one", names=("a",), per_identity=1)
    src2 = make_folder(tmp_path / "two", names=("b",), per_identity=1)
    from_folder(src1, tmp_path / "ds")
    with pytest.raises(ShardError, match="already holds a different 'train' dataset"):
        from_folder(src2, tmp_path / "ds")


def _hostile_dataset(tmp_path, source, name=None):
    src = make_folder(tmp_path / "src", names=("a",), per_identity=1)
    from_folder(src, tmp_path / "ds")
    shard = tmp_path / "ds" / "shards" / "train-000000.tar"
    buf = io.BytesIO()
    with tarfile.open(shard) as old, tarfile.open(fileobj=buf, mode="w") as new:
        for info in old.getmembers():
            data = old.extractfile(info).read()
            if info.name.endswith(".json"):
                meta = json.loads(data)
                meta["source"] = source
                if source is None:
                    del meta["source"]
                    meta["identity_name"] = name
                data = json.dumps(meta).encode()
                info.size = len(data)
            new.addfile(info, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())
    return tmp_path / "ds"


@pytest.mark.parametrize(
    "source", ["../../evil.jpg", "/etc/evil.jpg", "a/../../evil.jpg", "a//x.jpg"]
)
def test_to_folder_refuses_names_escaping_out(tmp_path, source):
    ds = _hostile_dataset(tmp_path, source)
    with pytest.raises(ShardError, match="would escape OUT"):
        to_folder(ds, tmp_path / "out" / "inner")
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "out" / "evil.jpg").exists()


@pytest.mark.parametrize("name", ["../up", "a/b", "..", "x\\y"])
def test_to_folder_refuses_identity_names_with_separators(tmp_path, name):
    ds = _hostile_dataset(tmp_path, None, name)
    with pytest.raises(ShardError, match=r"path separator|would escape OUT"):
        to_folder(ds, tmp_path / "out")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_to_folder_refuses_symlink_escape_and_overwrites(tmp_path):
    src = make_folder(tmp_path / "src", names=("a",), per_identity=1)
    from_folder(src, tmp_path / "ds")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "a").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ShardError, match="escape OUT"):
        to_folder(tmp_path / "ds", out)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    (out / "a").unlink()
    (out / "a").mkdir()
    (out / "a" / "img0.jpg").write_bytes(b"other")
    with pytest.raises(ShardError, match="exists with different content"):
        to_folder(tmp_path / "ds", out)
