"""The loaders fed files written by the third-party software itself, not by our writers.

* WebDataset sets written with webdataset's own ``TarWriter``/``ShardWriter`` (pax headers,
  float mtimes, identities cut across shards, flat ``sample000001`` keys, ``.txt``
  members), read by the streaming reader and converted by ``shards from-wds``; readers
  that need the manifest say what to run.
* ``.rec``/``.idx`` written by mxnet 1.9.1's ``MXIndexedRecordIO`` and ``.bin`` files pickled
  by Python 2.7 + numpy 1.16 and Python 3 + numpy 1.23 (``tests/data/thirdparty``, rebuilt by
  its ``make_fixtures.py`` with those programs), plus ``.bin`` variants pickled here.
* An insightface model pack laid out as ``model_zoo`` expects
  (``models/<pack>/det_10g.onnx`` ...), tiny graphs with the released models' input and
  output signatures, loaded by insightface itself and by the project's loaders.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.formats import recordio
from synthface.pipeline.formats.recordio import IndexedRecordIO, RecordIOWriter, unpack
from synthface.pipeline.formats.verification_bin import read_bin
from synthface.pipeline.shards import (
    ShardIndexDataset,
    encode_image,
    load_identity_array,
    make_webdataset,
)
from synthface.pipeline.shards.verify import verify_dataset

FIXTURES = Path(__file__).parent / "data" / "thirdparty"
IMAGES = sorted((FIXTURES / "images").iterdir())  # "<label>_<index>.<ext>"


def _label(path: Path) -> int:
    return int(path.name.split("_")[0])


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ----------------------------------------------------------------------- WebDataset


def _face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def wds_set(tmp_path_factory):
    """Written as users publish: ShardWriter shards of 4 samples (identity 2 spans two
    shards, samples of identity 0 come last), keys ``IIIIIIII/NNNN``, plus a flat
    TarWriter shard with ``sample000001`` keys, ``.jpeg`` images and ``.txt`` captions."""
    root = tmp_path_factory.mktemp("wds") / "published"
    root.mkdir()
    expected = {}  # key -> (label, image bytes, meta, embedding)
    order = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (0, 0), (0, 1)]
    with wds.ShardWriter(str(root / "faces-%06d.tar"), maxcount=4, verbose=0) as sink:
        for n, (ident, index) in enumerate(order):
            key = f"{ident + 10:08d}/{index:04d}"  # labels need not match key digits
            image = encode_image(_face(n), "png" if n % 3 == 0 else "jpg")
            ext = "png" if n % 3 == 0 else "jpg"
            emb = np.random.default_rng(n).standard_normal(8).astype(np.float32)
            meta = {"identity": ident + 10, "photographer": "x"}
            sink.write({"__key__": key, ext: image, "cls": ident, "json": meta, "npy": emb})
            expected[key] = (ident, image, meta, emb)
    with wds.TarWriter(str(root / "flat-000000.tar")) as sink:
        for k in range(3):
            key = f"sample{k:06d}"
            image = encode_image(_face(100 + k), "jpg")
            sink.write({"__key__": key, "jpeg": image, "cls": 3, "txt": f"caption {k}"})
            expected[key] = (3, image, {}, None)
    return root, expected


def test_webdataset_writers_really_write_pax_tars(wds_set):
    """What makes these tars foreign: tarfile's PAX format with float mtimes (an extended
    header before every member), owner names, identities cut across shards."""
    root, _ = wds_set
    with tarfile.open(root / "faces-000000.tar") as tar:
        first = tar.getmembers()[0]
        assert tar.format == tarfile.PAX_FORMAT and first.uname == "bigdata"
        assert isinstance(first.mtime, float) and "mtime" in first.pax_headers
    assert sorted(p.name for p in root.iterdir()) == [
        "faces-000000.tar",
        "faces-000001.tar",
        "flat-000000.tar",
    ]


def test_streaming_reader_reads_webdataset_written_shards(wds_set):
    root, expected = wds_set
    brace = str(root / "faces-{000000..000001}.tar")
    streamed = [s["__key__"] for s in make_webdataset(brace, buffer=0, shuffle_shards=False)]
    assert streamed == [k for k in expected if not k.startswith("sample")]  # tar order
    urls = [str(p) for p in sorted(root.glob("*.tar"))]
    got = {s["__key__"]: s for s in make_webdataset(urls, buffer=0, shuffle_shards=False)}
    assert set(got) == set(expected)
    for key, sample in got.items():
        label, image, meta, emb = expected[key]
        assert sample["label"] == label and sample["meta"] == meta
        np.testing.assert_array_equal(sample["image"], _pixels(image))
        if emb is None:
            assert sample["embedding"] is None
        else:
            np.testing.assert_array_equal(sample["embedding"], emb)


def test_manifest_readers_name_the_command_for_a_plain_webdataset_folder(wds_set, capsys):
    root, _ = wds_set
    hint = f"convert them with `synthface shards from-wds {root} OUT`"
    for read in (
        lambda: make_webdataset(root),
        lambda: ShardIndexDataset(root),
    ):
        with pytest.raises(ShardError, match="not a finished synthface dataset") as err:
            read()
        assert hint in str(err.value) and "\n" not in str(err.value)
    report = verify_dataset(root)
    assert not report["ok"] and hint in report["problems"][0]
    for command in ("verify", "inspect"):
        assert main(["shards", command, str(root)]) == 1
        captured = capsys.readouterr()
        assert hint in captured.out + captured.err
    from synthface.recognition.config import DataConfig
    from synthface.recognition.training.data import inspect_dataset

    with pytest.raises(ShardError, match="from-wds"):
        inspect_dataset(DataConfig(train=str(root)))


def test_from_wds_converts_a_published_set_for_every_reader(wds_set, tmp_path, capsys, monkeypatch):
    from synthface.pipeline.shards import wds_ingest

    monkeypatch.setattr(wds_ingest, "MAX_OPEN_SHARDS", 1)  # label order jumps between shards
    root, expected = wds_set
    out = tmp_path / "faces"
    assert main(["shards", "from-wds", str(root), str(out), "--max-samples", "4"]) == 0
    assert "4 identities, 10 images" in capsys.readouterr().out
    report = verify_dataset(out)
    assert report["ok"], report["problems"]
    ds = ShardIndexDataset(out, decode=False)
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # grouped, identity order
    for i in range(len(ds)):
        sample = ds[i]
        key = sample["meta"]["source_key"]
        label, image, meta, emb = expected[key]
        assert sample["label"] == label  # source labels 0..3 are already contiguous
        assert sample["image"] == image  # bytes copied, never re-encoded
        assert sample["meta"]["source_label"] == label
        assert sample["meta"].get("source_meta", {}) == meta
        if emb is not None:
            np.testing.assert_array_equal(sample["embedding"], emb)
    assert load_identity_array(out, "source_labels").tolist() == [0, 1, 2, 3]
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["splits"]["train"]["extra"]["dropped_members"] == {"txt": 3}

    # ... and the recognizer trainer's data stream takes the converted set
    from synthface.recognition.config import DataConfig
    from synthface.recognition.training.data import inspect_dataset, open_batches

    cfg = DataConfig(train=str(out), batch_size=4, num_workers=0, shuffle_buffer=4)
    info = inspect_dataset(cfg)
    assert (info.num_classes, info.num_samples) == (4, 10)
    batch = next(open_batches(info, cfg, num_batches=1, seed=0))
    assert batch.images.shape == (4, 16, 16, 3) and int(batch.labels.min()) >= 0


def test_samples_without_cls_are_named_by_every_reader(tmp_path, capsys):
    """A set whose labels are .txt members: one line naming the sample and the .cls rule."""
    shard = tmp_path / "src" / "captions-000000.tar"
    shard.parent.mkdir()
    with wds.TarWriter(str(shard)) as sink:
        sink.write({"__key__": "img_0001", "jpg": encode_image(_face(0)), "txt": "7"})
    with pytest.raises(
        ShardError, match=r"sample 'img_0001': no \.cls label member \(has \.jpg, \.txt\)"
    ):
        list(make_webdataset([str(shard)], buffer=0))
    assert main(["shards", "from-wds", str(shard.parent), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sample 'img_0001': no .cls label member (has .jpg, .txt)" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- RecordIO

REC = FIXTURES / "casia_rec"


def test_mxnet_written_rec_is_read_record_by_record():
    """mxnet 1.9.1 wrote header 0 (N+1, N+1+C), 9 images, 3 identity records; the JPEG of
    record 8 holds the magic at an aligned offset, so mxnet split it into parts."""
    with IndexedRecordIO(REC / "train.rec", REC / "train.idx") as rec:
        assert rec.keys == list(range(13))
        head = rec.read_header(0)
        assert head.flag == 2 and head.label == (10.0, 13.0)
        for key, path in enumerate(IMAGES, start=1):
            header, payload = unpack(rec.read_idx(key))
            assert (header.flag, header.label, header.id) == (0, float(_label(path)), key)
            assert payload == path.read_bytes()
            assert rec.read_header(key).label == float(_label(path))
        ranges = [tuple(int(v) for v in rec.read_header(k).label) for k in (10, 11, 12)]
        assert ranges == [(1, 4), (4, 7), (7, 10)]
        raw = (REC / "train.rec").read_bytes()
        assert struct.unpack_from("<I", raw, rec.offsets[8] + 4)[0] >> 29 == 1  # first part


def test_from_rec_on_mxnet_output(tmp_path):
    out = tmp_path / "casia"
    assert main(["shards", "from-rec", str(REC), str(out)]) == 0
    assert verify_dataset(out)["ok"]
    ds = ShardIndexDataset(out, decode=False)
    assert ds.labels.tolist() == [_label(p) for p in IMAGES]
    assert [ds[i]["image"] for i in range(len(ds))] == [p.read_bytes() for p in IMAGES]


def _spec_records():
    """The fixture's records, rebuilt from the images and the layout in the spec."""
    n, classes = len(IMAGES), 3
    records = [(0, ([n + 1.0, n + 1.0 + classes], b"", 0))]
    records += [(k, (float(_label(p)), p.read_bytes(), k)) for k, p in enumerate(IMAGES, 1)]
    for c in range(classes):
        keys = [k for k, p in enumerate(IMAGES, 1) if _label(p) == c]
        records.append((n + 1 + c, ([float(keys[0]), keys[-1] + 1.0], b"", n + 1 + c)))
    return records


def test_independent_writer_and_project_writer_reproduce_mxnet_bytes():
    """The test helper writer (written from the format description, importing nothing of
    the project's RecordIO code) and the project's writer both give mxnet's exact bytes."""
    support = Path(__file__).with_name("test_shards_support.py")
    imported = {
        node.module
        for node in ast.walk(ast.parse(support.read_text()))
        if isinstance(node, ast.ImportFrom)
    }
    assert not any("recordio" in m or m.endswith("shards.rec") for m in imported), imported
    from tests.test_shards_support import _record_parts, ir_record

    want_rec, want_idx = (REC / "train.rec").read_bytes(), (REC / "train.idx").read_text()
    helper_rec, helper_idx = bytearray(), []
    project_rec, project_idx = io.BytesIO(), io.StringIO()
    writer = RecordIOWriter(project_rec, project_idx)
    for key, (label, payload, id1) in _spec_records():
        helper_idx.append(f"{key}\t{len(helper_rec)}\n")
        helper_rec += _record_parts(ir_record(label, payload, id1))
        writer.write(key, recordio.pack(label, payload, id1))
    assert bytes(helper_rec) == want_rec and "".join(helper_idx) == want_idx
    assert project_rec.getvalue() == want_rec and project_idx.getvalue() == want_idx


# --------------------------------------------------------------------- insightface .bin

BIN_IMAGES = [p.read_bytes() for p in IMAGES[:8]]
ISSAME = [True, False, True, False]


@pytest.mark.parametrize(
    "name",
    [
        "lfw_py2_list.bin",  # Python 2.7, protocol 2, list of bools (insightface's lfw2pack)
        "lfw_py2_npbool.bin",  # Python 2.7 + numpy 1.16, list of numpy.bool_
        "lfw_py2_ndarray.bin",  # Python 2.7 + numpy 1.16, a numpy bool array
        "lfw_np1_p4_ndarray.bin",  # numpy 1.23, protocol 4 (_reconstruct)
        "lfw_np1_p5_ndarray.bin",  # numpy 1.23, protocol 5 (_frombuffer)
    ],
)
def test_bin_files_written_by_python2_and_numpy1_load(name):
    images, issame = read_bin(FIXTURES / name)
    assert images == BIN_IMAGES and issame.dtype == bool and issame.tolist() == ISSAME


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize(
    "labels",
    [
        lambda: list(ISSAME),
        lambda: np.array(ISSAME),
        lambda: [np.bool_(v) for v in ISSAME],
    ],
    ids=["list", "ndarray", "numpy_bools"],
)
def test_bin_pickled_by_this_numpy_loads(tmp_path, protocol, labels):
    # images as bytes, and as uint8 buffers (what cv2.imencode returns, N x 1)
    for bins in (BIN_IMAGES, [np.frombuffer(b, np.uint8).reshape(-1, 1) for b in BIN_IMAGES]):
        (tmp_path / "x.bin").write_bytes(pickle.dumps((bins, labels()), protocol=protocol))
        images, issame = read_bin(tmp_path / "x.bin")
        assert images == BIN_IMAGES and issame.tolist() == ISSAME


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ArrayWithState:
    """Pickles like an ndarray, with a chosen state for the array or its dtype."""

    def __init__(self, state=None, dtype_state=None, dtype="b1"):
        self.state, self.dtype_state, self.dtype = state, dtype_state, dtype

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        dtype = _Dtype(self.dtype, self.dtype_state)
        state = self.state or (1, (4,), dtype, False, b"\x01\x00\x01\x00")
        return (_reconstruct, (np.ndarray, (0,), b"b"), state)


class _Dtype:
    def __init__(self, name, state):
        self.name, self.state = name, state

    def __reduce__(self):
        plain = (3, "|", None, None, None, -1, -1, 0)
        return (np.dtype, (self.name, False, True), self.state or plain)


@pytest.mark.parametrize(
    "labels,refusal",
    [
        (lambda m: np.array([_System(m)] * 4, dtype=object), "numpy dtype 'O8'"),
        (
            lambda m: _ArrayWithState(dtype_state=(3, "|", None, None, None, -1, -1, 63)),
            "non-plain",
        ),
        (
            lambda m: _ArrayWithState(state=(1, (1 << 40,), _Dtype("b1", None), False, b"\x01")),
            "data bytes",
        ),
        (
            lambda m: _ArrayWithState(state=(1, (4,), _System(m), False, b"\x01" * 4)),
            "global posix.system",
        ),
        (lambda m: [True, _System(m), False, True], "global posix.system"),
    ],
    ids=["object_array", "dtype_flags", "shape_vs_bytes", "system_in_state", "system_in_list"],
)
def test_malicious_bin_refused_without_side_effect(tmp_path, labels, refusal):
    marker = tmp_path / "PWNED"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps((BIN_IMAGES, labels(marker)), protocol=2))
    with pytest.raises(InputError, match="refused to load") as err:
        read_bin(tmp_path / "evil.bin")
    assert refusal in str(err.value) and not marker.exists()


# ------------------------------------------------------------- insightface model pack


class _TinySCRFD(torch.nn.Module):
    """det_10g's signature: ``input.1`` 1 x 3 x H x W (H, W free), nine 2-D outputs:
    scores (cells*2, 1), box distances (cells*2, 4), keypoints (cells*2, 10) for strides
    8, 16, 32. A stride-8 cell scores high where the image is bright, so a white 8x8
    square is one face; boxes and keypoints are fixed offsets from the anchor."""

    KPS = torch.tensor([[-0.8, -0.6], [0.8, -0.6], [0.0, 0.2], [-0.6, 0.9], [0.6, 0.9]])

    def forward(self, x):
        scores, boxes, kps = [], [], []
        for stride in (8, 16, 32):
            pooled = torch.nn.functional.avg_pool2d(x[:, :1], stride).reshape(-1, 1)
            score = torch.sigmoid(10.0 * pooled - (0.0 if stride == 8 else 100.0))
            score = score.repeat_interleave(2, dim=0)
            scores.append(score)
            boxes.append(score * 0 + torch.full((1, 4), 4.0))
            kps.append(score * 0 + self.KPS.reshape(1, 10))
        return (*scores, *boxes, *kps)


class _Head(torch.nn.Module):
    """A conv net with one N x ``out`` output; its input side is fixed at export."""

    def __init__(self, out):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=4)
        self.fc = torch.nn.Linear(8 * 4 * 4, out)

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc(pooled.flatten(1))


def _export(model, path, side, input_name, output_name, dynamic_hw=False):
    axes = {0: "batch", 2: "h", 3: "w"} if dynamic_hw else {0: "batch"}
    torch.onnx.export(
        model.eval(),
        (torch.zeros(1, 3, side, side),),
        str(path),
        input_names=[input_name],
        output_names=["out"] if output_name else None,
        dynamic_axes={input_name: axes},
        opset_version=17,
        dynamo=False,
    )
    if output_name and output_name.isdigit():  # the released file's name; torch refuses it
        import onnx

        proto = onnx.load(str(path))
        old = proto.graph.output[0].name
        for node in proto.graph.node:
            node.output[:] = [output_name if o == old else o for o in node.output]
        proto.graph.output[0].name = output_name
        onnx.save(proto, str(path))


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """``ROOT/models/buffalo_tiny/`` with buffalo_l's file names and I/O signatures."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("insightface")
    folder = root / "models" / "buffalo_tiny"
    folder.mkdir(parents=True)
    _export(_TinySCRFD(), folder / "det_10g.onnx", 128, "input.1", None, dynamic_hw=True)
    _export(_Head(512), folder / "w600k_r50.onnx", 112, "input.1", "683")
    _export(_Head(3309), folder / "1k3d68.onnx", 192, "data", "fc1")
    _export(_Head(212), folder / "2d106det.onnx", 192, "data", "fc1")
    _export(_Head(3), folder / "genderage.onnx", 96, "data", "fc1")
    return root, folder


def _square_image():
    """256 x 128 (W x H) black image with a white 16x16 square: letterboxed into 128 x 128
    at scale 0.5 it fills the stride-8 cell (row 5, col 6) exactly."""
    img = np.zeros((128, 256, 3), np.uint8)
    img[80:96, 96:112] = 255
    anchor = np.array([6 * 8, 5 * 8], np.float64)
    kps = (anchor + _TinySCRFD.KPS.numpy() * 8) / 0.5
    return img, kps


def test_insightface_routes_every_model_of_the_tiny_pack(pack):
    from insightface.app import FaceAnalysis

    root, _ = pack
    app = FaceAnalysis(name="buffalo_tiny", root=str(root), providers=["CPUExecutionProvider"])
    assert sorted(app.models) == [
        "detection",
        "genderage",
        "landmark_2d_106",
        "landmark_3d_68",
        "recognition",
    ]


def test_project_detector_loads_det_10g_with_free_input_size(pack):
    from synthface.pipeline.faces.detect import FaceDetector

    _, folder = pack
    img, kps = _square_image()
    faces = FaceDetector(folder / "det_10g.onnx", det_size=128).detect(img)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].landmarks, kps, atol=1e-3)


def test_eval_verify_runs_on_a_python2_bin_with_the_pack_recognizer(pack, capsys):
    _, folder = pack
    argv = ["eval", "verify", "--bin", str(FIXTURES / "lfw_py2_ndarray.bin"), "--nfolds", "2"]
    assert main([*argv, "--model", str(folder / "w600k_r50.onnx"), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    (result,) = next(v for v in report.values() if isinstance(v, list))
    assert (result["num_pairs"], result["num_genuine"]) == (4, 2)


def test_load_embedder_takes_the_pack_recognizer_and_refuses_the_others(pack):
    from insightface.model_zoo import get_model

    from synthface.recognition import load_embedder

    _, folder = pack
    emb = load_embedder(folder / "w600k_r50.onnx")
    assert (emb.input_size, emb.dim) == ((112, 112), 512)
    rgb = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    ours = emb.embed(rgb)
    theirs = get_model(str(folder / "w600k_r50.onnx"), providers=["CPUExecutionProvider"])
    feat = theirs.get_feat([np.ascontiguousarray(im[:, :, ::-1]) for im in rgb])
    np.testing.assert_allclose(ours, feat / np.linalg.norm(feat, axis=1, keepdims=True), atol=1e-5)
    for name, what in (
        ("1k3d68.onnx", "1k3d68 landmark model"),
        ("2d106det.onnx", "2d106det landmark model"),
        ("genderage.onnx", "genderage attribute model"),
        ("det_10g.onnx", "face detector"),
    ):
        with pytest.raises(InputError, match=what):
            load_embedder(folder / name)


def test_insightface_pack_with_the_project_export_embeds_like_load_embedder(pack, tmp_path):
    """``synthface recognition export`` dropped into the pack as w600k_r50.onnx: insightface's
    FaceAnalysis detects, aligns and embeds with it exactly as our loaders do."""
    from insightface.app import FaceAnalysis
    from insightface.utils import face_align

    from synthface.recognition import create_backbone, load_embedder, save_recognizer

    _, folder = pack
    mine = tmp_path / "models" / "mine"
    mine.mkdir(parents=True)
    (mine / "det_10g.onnx").write_bytes((folder / "det_10g.onnx").read_bytes())
    torch.manual_seed(1)
    model = create_backbone("tiny", embedding_dim=128)
    model.train()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        model(torch.randn(8, 3, 112, 112))
    ckpt = save_recognizer(model.eval(), tmp_path / "ckpt", {"note": "test"})
    assert main(["recognition", "export", str(ckpt), "--onnx", str(mine / "w600k_r50.onnx")]) == 0
    app = FaceAnalysis(name="mine", root=str(tmp_path), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(128, 128))
    img, kps = _square_image()
    (face,) = app.get(np.ascontiguousarray(img[:, :, ::-1]))  # insightface takes BGR
    np.testing.assert_allclose(face.kps, kps, atol=1e-3)
    crop = face_align.norm_crop(img, landmark=face.kps, image_size=112)  # RGB crop
    ours = load_embedder(mine / "w600k_r50.onnx").embed(crop)[0]
    np.testing.assert_allclose(ours, face.normed_embedding, atol=1e-5)
