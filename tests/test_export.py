"""ONNX export, insightface loading, embedders and the export / embed CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError
from synthface.recognition import create_backbone, export_onnx, load_embedder, save_recognizer

torch.set_num_threads(1)


def _warm(model, size):
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, size, size))
    return model.eval()


def _faces(n, size, seed=0):
    """Smooth face-like RGB crops (blobs on gradients) rather than white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.stack(
            [
                (rng.uniform(40, 200) + rng.uniform(-60, 60) * xx + rng.uniform(-60, 60) * yy)
                for _ in range(3)
            ],
            -1,
        )
        for _ in range(5):
            cy, cx = rng.uniform(0.2, 0.8, 2)
            r = rng.uniform(0.05, 0.15)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def tiny112(tmp_path_factory):
    torch.manual_seed(0)
    model = _warm(create_backbone("tiny", embedding_dim=128), 112)
    root = tmp_path_factory.mktemp("tiny112")
    ckpt = save_recognizer(model, root / "ckpt", {"note": "test"})
    info = export_onnx(ckpt, root / "tiny.onnx")
    return model, ckpt, root / "tiny.onnx", info


def _insightface_feats(onnx_path, rgb):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    rec = get_model(str(onnx_path), providers=["CPUExecutionProvider"])
    assert isinstance(rec, ArcFaceONNX)
    assert (rec.input_mean, rec.input_std, rec.input_size) == (127.5, 127.5, (112, 112))
    bgr = [np.ascontiguousarray(im[:, :, ::-1]) for im in rgb]  # insightface takes BGR crops
    feat = rec.get_feat(bgr)
    return feat / np.linalg.norm(feat, axis=1, keepdims=True)


def _torch_feats(model, rgb):
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        return torch.nn.functional.normalize(model(x)).numpy()


def test_insightface_loads_export_and_matches_torch(tiny112):
    model, _, onnx_path, info = tiny112
    assert info["max_abs_diff"] < 1e-4
    rgb = _faces(6, 112)
    diff = np.abs(_insightface_feats(onnx_path, rgb) - _torch_feats(model, rgb)).max()
    assert diff < 1e-4
    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == ["data"] and [o.name for o in graph.output] == ["fc1"]


def test_ir18_export_matches_torch(tmp_path):
    torch.manual_seed(1)
    model = _warm(create_backbone("ir18"), 112)
    export_onnx(model, tmp_path / "ir18.onnx")
    rgb = _faces(2, 112, seed=1)
    assert (
        np.abs(_insightface_feats(tmp_path / "ir18.onnx", rgb) - _torch_feats(model, rgb)).max()
        < 1e-4
    )


def test_onnx_and_torch_embedders_agree(tiny112):
    _, ckpt, onnx_path, _ = tiny112
    rgb = _faces(5, 112, seed=2)
    e_onnx = load_embedder(onnx_path).embed(rgb, flip=True)
    e_torch = load_embedder(ckpt).embed(rgb, flip=True)
    assert e_onnx.shape == (5, 128) and np.abs(e_onnx - e_torch).max() < 1e-4


def test_unsupported_exports_are_refused(tmp_path):
    with pytest.raises(InputError, match="input_channels=27"):
        export_onnx(create_backbone("tiny", input_channels=27), tmp_path / "a.onnx")
    with pytest.raises(InputError, match=r"64x64.*square input >= 112"):
        export_onnx(create_backbone("tiny", input_size=64), tmp_path / "b.onnx")
    with pytest.raises(InputError, match="only backbones built by create_backbone"):
        export_onnx(torch.nn.Conv2d(3, 4, 3), tmp_path / "c.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written
    # other sizes on request: not an insightface recognizer, still usable through onnxruntime
    model = _warm(create_backbone("tiny", input_size=64, embedding_dim=16), 64)
    export_onnx(model, tmp_path / "d.onnx", allow_any_size=True)
    rgb = _faces(3, 64, seed=3)
    assert (
        np.abs(load_embedder(tmp_path / "d.onnx").embed(rgb) - _torch_feats(model, rgb)).max()
        < 1e-4
    )


def _onnx_identity(path, shape):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, 1, 112, 112], "unexpected input"),
        ([1, 512], "unexpected input"),
        (["n", 3, "h", "w"], "must be fixed"),
        ([1, 3, 112, 112], "unexpected outputs"),
    ],
)
def test_onnx_with_unexpected_shapes_is_a_clear_error(tmp_path, shape, message):
    path = _onnx_identity(str(tmp_path / "odd.onnx"), shape)
    with pytest.raises(InputError, match=message):
        load_embedder(path)


def test_export_and_embed_cli(tiny112, tmp_path, capsys):
    _, ckpt, _, _ = tiny112
    out_onnx = tmp_path / "cli.onnx"
    assert main(["recognition", "export", str(ckpt), "--onnx", str(out_onnx)]) == 0
    assert out_onnx.is_file()
    images = tmp_path / "imgs"
    rgb = _faces(5, 112, seed=4)
    names = ["b/2.png", "a/1.png", "a/0.png", "c.png", "b/1.png"]
    for name, img in zip(names, rgb):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(images / name)
    order = [names.index(n) for n in sorted(names)]
    out = tmp_path / "E.npy"
    for m in (str(ckpt), str(out_onnx)):
        assert (
            main(
                [
                    "recognition",
                    "embed",
                    "--images",
                    str(images),
                    "--model",
                    m,
                    "--out",
                    str(out),
                    "--flip",
                ]
            )
            == 0
        )
        e = np.load(out)
        assert e.shape == (5, 128) and e.dtype == np.float32
        assert (tmp_path / "E.keys.txt").read_text().split() == sorted(names)
        ref = load_embedder(ckpt).embed(rgb[order], flip=True)
        assert np.abs(e - ref).max() < 1e-4
    assert not list(tmp_path.glob(".*tmp"))
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(_faces(1, 64)[0]).save(small / "x.jpg")
    capsys.readouterr()
    assert (
        main(
            [
                "recognition",
                "embed",
                "--images",
                str(small),
                "--model",
                str(ckpt),
                "--out",
                str(tmp_path / "S.npy"),
            ]
        )
        == 1
    )
    assert "x.jpg: image is 64x64, model takes 112x112" in capsys.readouterr().err
    assert not (tmp_path / "S.npy").exists()
    assert (
        main(
            [
                "recognition",
                "embed",
                "--images",
                str(small),
                "--model",
                str(ckpt),
                "--out",
                str(tmp_path / "S.npy"),
                "--resize",
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "S.npy").shape == (1, 128)
    assert (
        main(["recognition", "export", str(tmp_path / "nope"), "--onnx", str(tmp_path / "n.onnx")])
        == 1
    )
    assert "no such checkpoint directory" in capsys.readouterr().err


def test_embed_cli_on_shards(tiny112, tmp_path):
    from synthface.pipeline.shards import DatasetWriter, Sample, encode_image

    _, ckpt, _, _ = tiny112
    rgb = _faces(6, 112, seed=5)
    writer = DatasetWriter(tmp_path / "ds", config={"test": True})
    for i, img in enumerate(rgb):
        writer.add(Sample(identity=i // 2, index=i % 2, image=encode_image(img, "png"), ext="png"))
    writer.close()
    out = tmp_path / "S.npy"
    assert (
        main(
            [
                "recognition",
                "embed",
                "--shards",
                str(tmp_path / "ds"),
                "--model",
                str(ckpt),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "S.labels.npy").tolist() == [0, 0, 1, 1, 2, 2]
    assert (tmp_path / "S.keys.txt").read_text().split()[:2] == ["00000000/0000", "00000000/0001"]
    assert np.abs(np.load(out) - load_embedder(ckpt).embed(rgb)).max() < 1e-5


def test_mxnet_style_onnx_gets_raw_pixels(tmp_path):
    """A graph that normalises itself (Sub + Mul among the first nodes, like insightface's
    MXNet conversions) must receive raw pixel values, as insightface feeds it."""
    h = onnx.helper
    x = h.make_tensor_value_info("data", onnx.TensorProto.FLOAT, ["n", 3, 112, 112])
    y = h.make_tensor_value_info("fc1", onnx.TensorProto.FLOAT, ["n", 3])
    consts = [
        h.make_tensor("mean", onnx.TensorProto.FLOAT, [], [127.5]),
        h.make_tensor("scale", onnx.TensorProto.FLOAT, [], [0.0078125]),
    ]
    nodes = [
        h.make_node("Sub", ["data", "mean"], ["centred"], name="_minus0"),
        h.make_node("Mul", ["centred", "scale"], ["scaled"], name="_mul0"),
        h.make_node("ReduceMean", ["scaled"], ["fc1"], axes=[2, 3], keepdims=0, name="pool"),
    ]
    graph = h.make_graph(nodes, "mx", [x], [y], initializer=consts)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "mx.onnx")
    rgb = _faces(2, 112, seed=6)
    got = load_embedder(tmp_path / "mx.onnx").embed(rgb)
    raw = (rgb.astype(np.float64) - 127.5).mean(axis=(1, 2)) * 0.0078125
    assert np.abs(got - raw / np.linalg.norm(raw, axis=1, keepdims=True)).max() < 1e-5
