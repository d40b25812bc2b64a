"""arcface_torch ``backbone.pth`` import: strict keys, same function, export like any model.

The state dicts are written here in arcface_torch's key layout (``backbones/iresnet.py``:
stem ``conv1 bn1 prelu``; blocks ``layerS.B.{bn1 conv1 bn2 prelu conv2 bn3}`` with
``layerS.0.downsample.{0,1}``; head ``bn2 fc features``), from that description and not
from our model, and their function is recomputed here with plain ``torch.nn.functional``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError
from synthface.recognition import export_onnx, load_embedder, load_recognizer
from synthface.recognition.arcface_torch import import_arcface_torch


def _bn(prefix: str, c: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + 0.1 * torch.randn(c, generator=gen),
        f"{prefix}.bias": 0.1 * torch.randn(c, generator=gen),
        f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=gen),
        f"{prefix}.running_var": 0.5 + torch.rand(c, generator=gen),
        f"{prefix}.num_batches_tracked": torch.tensor(1000),
    }


def arcface_state(layers, widths=(64, 128, 256, 512), dim=512, cells=49, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def conv(cout, cin, k):
        return torch.randn(cout, cin, k, k, generator=gen) * (2 / (cin * k * k)) ** 0.5

    s = {"conv1.weight": conv(widths[0], 3, 3), **_bn("bn1", widths[0], gen)}
    s["prelu.weight"] = torch.full((widths[0],), 0.25)
    cin = widths[0]
    for stage, (n, cout) in enumerate(zip(layers, widths), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            s.update(_bn(f"{p}.bn1", cin, gen))
            s[f"{p}.conv1.weight"] = conv(cout, cin, 3)
            s.update(_bn(f"{p}.bn2", cout, gen))
            s[f"{p}.prelu.weight"] = 0.25 + 0.05 * torch.randn(cout, generator=gen)
            s[f"{p}.conv2.weight"] = conv(cout, cout, 3)
            s.update(_bn(f"{p}.bn3", cout, gen))
            if b == 0:
                s[f"{p}.downsample.0.weight"] = conv(cout, cin, 1)
                s.update(_bn(f"{p}.downsample.1", cout, gen))
            cin = cout
    s.update(_bn("bn2", widths[-1], gen))
    s["fc.weight"] = torch.randn(dim, widths[-1] * cells, generator=gen) * 0.01
    s["fc.bias"] = torch.zeros(dim)
    s.update(_bn("features", dim, gen))
    s["features.weight"] = torch.ones(dim)  # frozen at 1 in arcface_torch
    return s


def reference_forward(s, layers, x):
    """arcface_torch's iResNet forward, written out with functional ops."""

    def bn(p, t):
        return F.batch_norm(
            t, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
            training=False, eps=1e-5,
        )  # fmt: skip

    def prelu(p, t):
        return F.prelu(t, s[f"{p}.weight"])

    x = prelu("prelu", bn("bn1", F.conv2d(x, s["conv1.weight"], padding=1)))
    for stage, n in enumerate(layers, start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            stride = 2 if b == 0 else 1
            out = F.conv2d(bn(f"{p}.bn1", x), s[f"{p}.conv1.weight"], padding=1)
            out = prelu(f"{p}.prelu", bn(f"{p}.bn2", out))
            out = bn(f"{p}.bn3", F.conv2d(out, s[f"{p}.conv2.weight"], stride=stride, padding=1))
            short = x
            if b == 0:
                short = bn(
                    f"{p}.downsample.1", F.conv2d(x, s[f"{p}.downsample.0.weight"], stride=2)
                )
            x = out + short
    x = torch.flatten(bn("bn2", x), 1)
    return bn("features", F.linear(x, s["fc.weight"], s["fc.bias"]))


def test_r18_backbone_pth_loads_strictly_and_computes_the_same_function(tmp_path):
    layers = (2, 2, 2, 2)
    state = arcface_state(layers)
    pth = tmp_path / "backbone.pth"
    torch.save(state, pth)
    info = import_arcface_torch(pth, tmp_path / "r18", arch="r18")
    assert (info["backbone"], info["input_size"], info["embedding_dim"]) == ("ir18", 112, 512)
    assert info["tensors"] == len(state)
    model = load_recognizer(tmp_path / "r18")
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        ours, ref = model(x), reference_forward(state, layers, x)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    with pytest.raises(InputError, match=r"stages \[2, 2, 2, 2\].*not r50"):
        import_arcface_torch(pth, tmp_path / "x", arch="r50")


def test_one_renamed_key_is_refused_by_name(tmp_path):
    state = arcface_state((1, 1, 1, 1), widths=(8, 16, 16, 32), dim=32)
    state["layer2.0.downsample.1.running_variance"] = state.pop("layer2.0.downsample.1.running_var")
    pth = tmp_path / "backbone.pth"
    torch.save(state, pth)
    with pytest.raises(InputError) as err:
        import_arcface_torch(pth, tmp_path / "out")
    msg = str(err.value)
    assert "missing keys: layer2.0.downsample.1.running_var" in msg
    assert "unexpected keys: layer2.0.downsample.1.running_variance" in msg
    assert not (tmp_path / "out" / "config.json").exists()
    state["layer2.0.downsample.1.running_var"] = state.pop("layer2.0.downsample.1.running_variance")
    state["fc.weight"] = state["fc.weight"][:, :-32]  # a 6x6+... map: not square
    torch.save(state, pth)
    with pytest.raises(InputError, match="not a square feature map"):
        import_arcface_torch(pth, tmp_path / "out")


def test_pickled_objects_are_never_loaded(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    pth = tmp_path / "evil.pth"
    with open(pth, "wb") as f:
        pickle.dump({"conv1.weight": Payload()}, f, protocol=2)
    with pytest.raises(InputError, match="not a plain tensor state dict"):
        import_arcface_torch(pth, tmp_path / "out")
    assert "unpickled!" not in capsys.readouterr().out


def test_imported_model_exports_to_onnx_via_the_cli(tmp_path, capsys):
    layers, widths = (1, 1, 1, 1), (16, 32, 32, 64)
    state = arcface_state(layers, widths, dim=64)
    pth = tmp_path / "backbone.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pth)  # DDP-saved
    ckpt, onnx_path = tmp_path / "ckpt", tmp_path / "model.onnx"
    assert main(["recognition", "import-arcface", str(pth), "--out", str(ckpt)]) == 0
    assert "tiny (stages [1, 1, 1, 1]), 64-d, 112x112" in capsys.readouterr().out
    export_onnx(ckpt, onnx_path)
    images = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        ref = F.normalize(reference_forward(state, layers, x), dim=1).numpy()
    got = load_embedder(onnx_path).embed(images)
    assert np.abs(got - ref).max() < 1e-4
