"""ONNX recognizers as differentiable torch modules.

ID³'s identity loss and guidance, and a trainer's teacher, need gradients through the
recognizer, which onnxruntime cannot give. ``onnx_to_torch(path)`` reads the graph with
``onnx`` and runs it node by node with ``torch.nn.functional``, the initializers held as
(frozen) parameters, so autograd sees every operation.

Why not onnx2torch: it depends on torchvision, and installing it here replaced the
project's CPU torch by a CUDA build of another version (torchvision pins torch exactly);
its last release is from 2024. Recognizers use a small operator set (convolutions,
batch norm, PReLU, residual adds, flatten, fully connected, the shape arithmetic of older
exporters, MXNet's in-graph normalisation), which is implemented here; anything else is
refused up front with an error that names every unsupported operator and its node.

:class:`OnnxRecognizer` wraps the graph in the project's backbone contract: NCHW RGB in
[-1, 1] of the model's fixed input size -> un-normalised ``N x D`` features. Where the
graph expects raw pixels (MXNet conversions that subtract and scale inside the graph,
detected exactly as insightface's ``ArcFaceONNX`` does), the wrapper maps [-1, 1] back to
0..255 first; otherwise the input goes in unchanged, so outputs match onnxruntime's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from synthface.pipeline.errors import InputError

Tensor = torch.Tensor


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(value: Tensor | Sequence[int]) -> list[int]:
    if isinstance(value, Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def _pair_pads(pads: Sequence[int], where: str) -> tuple[tuple[int, int], list[int]]:
    """ONNX ``[h_begin, w_begin, h_end, w_end]`` -> symmetric (h, w) or an F.pad list."""
    if len(pads) != 4:
        raise InputError(f"{where}: only 2-D spatial pads are supported, got {list(pads)}")
    hb, wb, he, we = pads
    if hb == he and wb == we:
        return (hb, wb), []
    return (0, 0), [wb, we, hb, he]


def _check_auto_pad(a: dict, where: str) -> None:
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID"):
        raise InputError(f"{where}: auto_pad {auto!r} is not supported (explicit pads only)")


def _conv(x: Tensor, w: Tensor, b: Tensor | None = None, *, a: dict, where: str) -> Tensor:
    _check_auto_pad(a, where)
    if x.dim() != 4:
        raise InputError(f"{where}: only 2-D convolutions are supported (input {x.dim()}-D)")
    pad, explicit = _pair_pads(a.get("pads", [0, 0, 0, 0]), where)
    if explicit:
        x = F.pad(x, explicit)
    return F.conv2d(
        x,
        w,
        b,
        stride=tuple(a.get("strides", [1, 1])),
        padding=pad,
        dilation=tuple(a.get("dilations", [1, 1])),
        groups=int(a.get("group", 1)),
    )


def _batch_norm(x, scale, bias, mean, var, *, a, where):
    return F.batch_norm(
        x, mean, var, scale, bias, training=False, eps=float(a.get("epsilon", 1e-5))
    )


def _prelu(x, slope, *, a, where):
    return torch.where(x >= 0, x, x * slope)


def _flatten(x, *, a, where):
    axis = int(a.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _reshape(x, shape, *, a, where):
    target = _ints(shape)
    if not a.get("allowzero", 0):
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def _gemm(x, w, c=None, *, a, where):
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = x @ w
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _axes(a: dict, axes_input: Tensor | None) -> list[int] | None:
    if axes_input is not None:
        return _ints(axes_input)
    return list(a["axes"]) if "axes" in a else None


def _unsqueeze(x, axes=None, *, a, where):
    for axis in sorted(_axes(a, axes) or []):
        x = x.unsqueeze(axis)
    return x


def _squeeze(x, axes=None, *, a, where):
    dims = _axes(a, axes)
    if dims is None:
        return x.squeeze()
    for axis in sorted((d + x.dim() if d < 0 else d for d in dims), reverse=True):
        x = x.squeeze(axis)
    return x


def _gather(x, index, *, a, where):
    axis = int(a.get("axis", 0))
    idx = index.long()
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :])


def _pool(kind: str):
    def run(x, *, a, where):
        _check_auto_pad(a, where)
        pad, explicit = _pair_pads(a.get("pads", [0, 0, 0, 0]), where)
        if explicit:
            raise InputError(f"{where}: asymmetric pooling pads are not supported")
        kernel = tuple(a["kernel_shape"])
        stride = tuple(a.get("strides", [1] * len(kernel)))
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            return F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil)
        return F.avg_pool2d(
            x,
            kernel,
            stride,
            pad,
            ceil_mode=ceil,
            count_include_pad=bool(a.get("count_include_pad", 0)),
        )

    return run


def _reduce_mean(x, axes=None, *, a, where):
    dims = _axes(a, axes)
    keep = bool(a.get("keepdims", 1))
    if dims is None:
        return x.mean(dim=tuple(range(x.dim())), keepdim=keep)
    return x.mean(dim=tuple(dims), keepdim=keep)


def _pad(x, pads, value=None, axes=None, *, a, where):
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant" or axes is not None:
        raise InputError(f"{where}: only constant padding over all axes is supported")
    p = _ints(pads)
    n = len(p) // 2
    flat: list[int] = []
    for i in reversed(range(n)):  # F.pad lists the last dimension first
        flat += [p[i], p[i + n]]
    fill = 0.0 if value is None or value.numel() == 0 else float(value.reshape(-1)[0])
    return F.pad(x, flat, value=fill)


def _clip(x, lo=None, hi=None, *, a, where):
    lo = lo if lo is not None else a.get("min")
    hi = hi if hi is not None else a.get("max")
    return torch.clamp(x, min=lo, max=hi)


def _cast(x, *, a, where):
    from onnx import TensorProto

    to = int(a["to"])
    dtypes = {
        TensorProto.FLOAT: torch.float32,
        TensorProto.DOUBLE: torch.float64,
        TensorProto.FLOAT16: torch.float16,
        TensorProto.INT64: torch.int64,
        TensorProto.INT32: torch.int32,
        TensorProto.BOOL: torch.bool,
    }
    if to not in dtypes:
        raise InputError(f"{where}: Cast to ONNX type {to} is not supported")
    return x.to(dtypes[to])


def _concat(*xs, a, where):
    return torch.cat(list(xs), dim=int(a["axis"]))


# op type -> function(*inputs, a=attributes, where=node description) -> output tensor
OPS: dict[str, Callable[..., Tensor]] = {
    "Add": lambda x, y, *, a, where: x + y,
    "Sub": lambda x, y, *, a, where: x - y,
    "Mul": lambda x, y, *, a, where: x * y,
    "Div": lambda x, y, *, a, where: x / y,
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "PRelu": _prelu,
    "Relu": lambda x, *, a, where: F.relu(x),
    "LeakyRelu": lambda x, *, a, where: F.leaky_relu(x, float(a.get("alpha", 0.01))),
    "Sigmoid": lambda x, *, a, where: torch.sigmoid(x),
    "Tanh": lambda x, *, a, where: torch.tanh(x),
    "Clip": _clip,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Gemm": _gemm,
    "MatMul": lambda x, y, *, a, where: torch.matmul(x, y),
    "Identity": lambda x, *, a, where: x,
    "Dropout": lambda x, *rest, a, where: x,
    "Transpose": lambda x, *, a, where: (
        x.permute(*a["perm"]) if "perm" in a else x.permute(*reversed(range(x.dim())))
    ),
    "Concat": _concat,
    "Shape": lambda x, *, a, where: torch.tensor(list(x.shape), dtype=torch.int64, device=x.device),
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "GlobalAveragePool": lambda x, *, a, where: x.mean(dim=(2, 3), keepdim=True),
    "AveragePool": _pool("avg"),
    "MaxPool": _pool("max"),
    "ReduceMean": _reduce_mean,
    "Pad": _pad,
    "Cast": _cast,
}
# Constant nodes are folded into buffers when the graph is read
HANDLED = frozenset({*OPS, "Constant"})
# the ops whose later outputs (e.g. Dropout's mask) are never used by recognizers
_FIRST_OUTPUT_ONLY = {"Dropout", "BatchNormalization"}


def _node_name(node, i: int) -> str:
    return f"node {i} {node.name!r} ({node.op_type})" if node.name else f"node {i} ({node.op_type})"


def check_supported(graph, source: str) -> None:
    """Refuse, naming each one, the operators this converter cannot run."""
    bad: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if op not in HANDLED and op not in bad:
            bad[op] = _node_name(node, i)
    if bad:
        listed = "; ".join(f"{op} (first at {where})" for op, where in bad.items())
        raise InputError(
            f"{source}: ONNX operator(s) not supported by the torch converter: {listed}. "
            f"Supported: {', '.join(sorted(HANDLED))}"
        )


class OnnxGraph(nn.Module):
    """The graph of an ONNX model run node by node with torch operations.

    Float initializers become frozen ``nn.Parameter``s (``requires_grad_(True)`` to
    fine-tune them); integer ones (shapes, indices) become buffers. ``forward`` takes the
    graph's inputs positionally and returns its first output.
    """

    def __init__(self, proto, source: str = "<onnx>") -> None:
        from onnx import numpy_helper

        super().__init__()
        graph = proto.graph
        check_supported(graph, source)
        self.source = source
        self.weights = nn.ParameterList()
        self._slots: dict[str, tuple[str, int]] = {}
        n_buffers = 0
        for init in graph.initializer:
            arr = np.array(numpy_helper.to_array(init))  # a writable copy
            tensor = torch.from_numpy(arr)
            if tensor.is_floating_point():
                self._slots[init.name] = ("p", len(self.weights))
                self.weights.append(nn.Parameter(tensor, requires_grad=False))
            else:
                self.register_buffer(f"const_{n_buffers}", tensor, persistent=True)
                self._slots[init.name] = ("b", n_buffers)
                n_buffers += 1
        initialized = set(self._slots)
        self.input_names = [i.name for i in graph.input if i.name not in initialized]
        self.output_names = [o.name for o in graph.output]
        self._nodes = []
        for i, node in enumerate(graph.node):
            attrs = _attrs(node)
            if node.op_type == "Constant":
                value = attrs.get("value")
                if value is None:
                    raise InputError(
                        f"{source}: {_node_name(node, i)}: only tensor-valued Constant nodes "
                        "are supported"
                    )
                arr = np.array(numpy_helper.to_array(value))
                tensor = torch.from_numpy(arr)
                self.register_buffer(f"const_{n_buffers}", tensor, persistent=True)
                self._slots[node.output[0]] = ("b", n_buffers)
                n_buffers += 1
                continue
            self._nodes.append(
                (node.op_type, list(node.input), list(node.output), attrs, _node_name(node, i))
            )

    def _value(self, name: str) -> Tensor:
        kind, index = self._slots[name]
        return self.weights[index] if kind == "p" else getattr(self, f"const_{index}")

    def forward(self, *inputs: Tensor) -> Tensor:
        if len(inputs) != len(self.input_names):
            raise InputError(
                f"{self.source}: graph takes {len(self.input_names)} input(s) "
                f"{self.input_names}, got {len(inputs)}"
            )
        env: dict[str, Tensor] = dict(zip(self.input_names, inputs))
        for op, ins, outs, attrs, where in self._nodes:
            args = [
                None if not name else env[name] if name in env else self._value(name)
                for name in ins
            ]
            while args and args[-1] is None:  # trailing optional inputs left out
                args.pop()
            try:
                out = OPS[op](*args, a=attrs, where=where)
            except InputError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
                raise InputError(f"{self.source}: {where} failed: {exc}") from None
            env[outs[0]] = out
            if op not in _FIRST_OUTPUT_ONLY and len(outs) > 1:
                raise InputError(f"{self.source}: {where}: multi-output nodes are not supported")
        return env[self.output_names[0]]


class OnnxRecognizer(nn.Module):
    """An ONNX recognizer behind the backbone contract (RGB in [-1, 1] -> N x D features).

    Attributes:
        input_size: ``(H, W)`` of the graph's fixed input.
        embedding_dim: feature size.
        input_channels: 3.
        input_mean, input_std: the normalisation insightface derives for the graph
            (127.5/127.5 when the graph takes [-1, 1]; 0/1 when it takes raw pixels).
        source: the file it came from.
    """

    input_channels = 3

    def __init__(self, graph: OnnxGraph, input_size, embedding_dim, mean, std, source) -> None:
        super().__init__()
        self.graph = graph
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.embedding_dim = int(embedding_dim)
        self.input_mean = float(mean)
        self.input_std = float(std)
        self.source = source
        # no registry spec: save_recognizer / export_onnx refuse it (the .onnx is the model)
        self.spec: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        if (self.input_mean, self.input_std) != (127.5, 127.5):
            x = (x * 127.5 + (127.5 - self.input_mean)) / self.input_std
        return self.graph(x)


def _recognizer_io(proto, source: str) -> tuple[tuple[int, int], int]:
    graph = proto.graph
    initialized = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialized]

    def dims(value_info) -> list:
        return [
            d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
            for d in value_info.type.tensor_type.shape.dim
        ]

    shape = dims(inputs[0]) if len(inputs) == 1 else []
    if len(shape) != 4 or shape[1] != 3:
        raise InputError(
            f"{source}: unexpected input {[(i.name, dims(i)) for i in inputs]}; a recognizer "
            "takes one N x 3 x H x W image tensor"
        )
    if not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        raise InputError(f"{source}: input height/width must be fixed, got shape {shape}")
    outputs = list(graph.output)
    out_shape = dims(outputs[0]) if len(outputs) == 1 else []
    if len(out_shape) != 2 or not (isinstance(out_shape[1], int) and out_shape[1] > 0):
        raise InputError(
            f"{source}: unexpected outputs {[(o.name, dims(o)) for o in outputs]}; a "
            "recognizer returns one N x D embedding of fixed D"
        )
    return (shape[2], shape[3]), out_shape[1]


def graph_normalisation(path: str) -> tuple[float, float]:
    """``(mean, std)`` as insightface's ``ArcFaceONNX`` derives it from the graph."""
    import onnxruntime
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    wrapper = ArcFaceONNX(model_file=path, session=session)
    return float(wrapper.input_mean), float(wrapper.input_std)


def onnx_to_torch(path: str | os.PathLike) -> OnnxRecognizer:
    """Load an insightface-style ``.onnx`` recognizer as a frozen, eval-mode torch module.

    Raises:
        InputError: no such file, not an ONNX model, not a recognizer's input/output
            signature, or an operator the converter does not support (all named).
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such ONNX file")
    try:
        proto = onnx.load(str(p))
    except Exception as exc:  # onnx raises DecodeError and others
        raise InputError(f"{p}: not a loadable ONNX model: {exc}") from None
    size, dim = _recognizer_io(proto, str(p))
    graph = OnnxGraph(proto, str(p))
    mean, std = graph_normalisation(str(p))
    return OnnxRecognizer(graph, size, dim, mean, std, str(p)).eval()


def load_recognizer_module(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> nn.Module:
    """A frozen, eval-mode torch recognizer from a checkpoint directory or an ``.onnx`` file.

    Both follow the backbone contract (RGB in [-1, 1], fixed ``input_size``, un-normalised
    features) and are differentiable with respect to their input: what the generators'
    identity encoder and the trainer's teacher need.
    """
    p = Path(path)
    if p.suffix == ".onnx":
        model = onnx_to_torch(p)
    else:
        from synthface.recognition.checkpoint import load_recognizer

        model = load_recognizer(p)
    return model.to(device).eval().requires_grad_(False)
