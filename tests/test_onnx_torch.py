"""ONNX recognizers as torch modules: parity with onnxruntime, gradients, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from synthface.pipeline.errors import InputError
from synthface.recognition import (
    create_backbone,
    export_onnx,
    load_embedder,
    load_recognizer,
    load_recognizer_module,
    onnx_to_torch,
)

DEMO = Path(__file__).resolve().parents[1] / "data/demo/models/recognizer/model"
TOL = 1e-5


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _ort(path, blob: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: blob})[0]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The shipped (trained) demo recognizer, 32x32, and a tiny iResNet at 112x112."""
    root = tmp_path_factory.mktemp("onnx")
    demo = load_recognizer(DEMO)
    export_onnx(demo, root / "demo.onnx", allow_any_size=True)
    torch.manual_seed(0)
    tiny = create_backbone("tiny", input_size=112, embedding_dim=64).eval()
    export_onnx(tiny, root / "tiny112.onnx")
    return {"demo": (demo, root / "demo.onnx"), "tiny112": (tiny, root / "tiny112.onnx")}


@pytest.mark.parametrize("name", ["demo", "tiny112"])
def test_converted_model_matches_onnxruntime_and_passes_gradients(exports, name):
    source, path = exports[name]
    model = onnx_to_torch(path)
    assert model.input_size == source.input_size and model.embedding_dim == source.embedding_dim
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, *model.input_size, generator=gen) * 2 - 1
    with torch.no_grad():
        got = model(x).numpy()
    ref = _ort(path, x.numpy())
    assert np.abs(_unit(got) - _unit(ref)).max() < TOL
    assert np.abs(got - ref).max() < TOL * max(1.0, float(np.abs(ref).max()))
    # the gradient of an identity loss is the source torch model's gradient
    target = torch.nn.functional.normalize(
        torch.randn(5, model.embedding_dim, generator=gen), dim=1
    )

    def grad(m):
        xi = x.clone().requires_grad_(True)
        loss = (1 - (torch.nn.functional.normalize(m(xi), dim=1) * target).sum(1)).sum()
        loss.backward()
        return xi.grad.flatten()

    g_onnx, g_torch = grad(model), grad(source.eval())
    assert float(g_onnx.abs().sum()) > 0
    assert float(torch.nn.functional.cosine_similarity(g_onnx, g_torch, dim=0)) > 0.9999
    # parameters are frozen, the input is what gets the gradient
    assert not any(p.requires_grad for p in load_recognizer_module(path).parameters())


def test_embeddings_equal_the_onnxruntime_embedder(exports):
    _, path = exports["tiny112"]
    images = np.random.default_rng(0).integers(0, 256, (6, 112, 112, 3), dtype=np.uint8)
    ref = load_embedder(path).embed(images)
    model = onnx_to_torch(path)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        got = _unit(model(x).numpy())
    assert np.abs(got - ref).max() < TOL


def _mxnet_style(src: Path, dst: Path) -> None:
    """Our export rewritten the way MXNet conversions look: raw pixels in, ``_minusscalar``
    and ``_mulscalar`` nodes first (the mean from a Constant node), and flatten done with
    Shape/Gather/Concat/Reshape."""
    proto = onnx.load(str(src))
    g = proto.graph
    old_input = g.input[0].name
    g.input[0].name = "raw"
    consts = [
        numpy_helper.from_array(np.array(1 / 128, np.float32), "scale"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    g.initializer.extend(consts)
    mean = numpy_helper.from_array(np.array(127.5, np.float32), "mean_value")
    head = [
        helper.make_node("Constant", [], ["mean"], name="mean0", value=mean),
        helper.make_node("Sub", ["raw", "mean"], ["centred"], name="_minusscalar0"),
        helper.make_node("Mul", ["centred", "scale"], [old_input], name="_mulscalar0"),
    ]
    nodes = []
    for node in g.node:
        if node.op_type == "Flatten":
            x, y = node.input[0], node.output[0]
            nodes += [
                helper.make_node("Shape", [x], ["shp"], name="shape0"),
                helper.make_node("Gather", ["shp", "zero"], ["batch"], name="gather0", axis=0),
                helper.make_node("Concat", ["batch", "minus_one"], ["target"], name="cat0", axis=0),
                helper.make_node("Reshape", [x, "target"], [y], name="reshape0"),
            ]
        else:
            nodes.append(node)
    del g.node[:]
    g.node.extend(head + nodes)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))


def test_mxnet_style_graph_takes_raw_pixels(exports, tmp_path):
    _, path = exports["tiny112"]
    mx = tmp_path / "mx.onnx"
    _mxnet_style(path, mx)
    model = onnx_to_torch(mx)
    assert (model.input_mean, model.input_std) == (0.0, 1.0)  # as insightface reads it
    images = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    ref = _ort(mx, images.transpose(0, 3, 1, 2).astype(np.float32))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        got = model(x).numpy()
        wide = model.double()(x.double()).numpy()  # dtype follows the module, shape ops too
    assert np.abs(_unit(got) - _unit(ref)).max() < TOL
    assert wide.dtype == np.float64 and np.abs(_unit(wide) - _unit(ref)).max() < TOL


def test_unsupported_operators_are_named(exports, tmp_path):
    _, path = exports["demo"]
    proto = onnx.load(str(path))
    g = proto.graph
    out = g.output[0].name
    g.node[-1].output[0] = "pre"
    g.node.extend(
        [
            helper.make_node("Erf", ["pre"], ["erf"], name="my_erf"),
            helper.make_node("Softplus", ["erf"], [out], name="my_softplus"),
        ]
    )
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(InputError) as err:
        onnx_to_torch(bad)
    msg = str(err.value)
    assert "Erf (first at node" in msg and "'my_erf'" in msg and "Softplus" in msg
    assert str(bad) in msg


def test_non_recognizer_signatures_are_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    proto = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    )
    path = tmp_path / "relu.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(InputError, match="N x 3 x H x W"):
        onnx_to_torch(path)
    with pytest.raises(InputError, match="no such ONNX file"):
        onnx_to_torch(tmp_path / "absent.onnx")
