"""Backbones, margin heads and recognizer checkpoints (recognition.backbones/heads/checkpoint)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthface.pipeline.errors import ConfigError, InputError
from synthface.recognition import create_backbone, create_head, load_recognizer, save_recognizer
from synthface.recognition.backbones import list_backbones
from synthface.recognition.checkpoint import load_weights
from synthface.recognition.embedder import load_embedder
from synthface.recognition.heads import list_heads, sample_classes

torch.set_num_threads(1)

CHEAP = ["tiny", "mobilefacenet", "ir18"]


def _warm(model: torch.nn.Module, size=(112, 112), channels=3) -> torch.nn.Module:
    """Give the BatchNorm layers non-trivial running statistics, then switch to eval."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, channels, *size))
    return model.eval()


# ----------------------------------------------------------------------------- backbones


def test_registry_lists_every_architecture():
    assert set(list_backbones()) >= {"ir18", "ir34", "ir50", "ir100", "mobilefacenet", "tiny"}


@pytest.mark.parametrize("name", CHEAP)
@pytest.mark.parametrize(("size", "channels"), [(112, 3), ((96, 80), 3), (100, 27)])
def test_cheap_backbones_forward_shapes(name, size, channels):
    model = create_backbone(
        name, input_size=size, input_channels=channels, embedding_dim=128
    ).eval()
    hw = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        out = model(torch.randn(2, channels, *hw))
    assert out.shape == (2, 128)
    assert torch.isfinite(out).all()
    assert model.spec["input_size"] == list(hw) and model.spec["input_channels"] == channels


@pytest.mark.parametrize("size", [17, 33, 64, 100, 113, 112])
def test_fc_input_matches_feature_map_for_any_size(size):
    model = create_backbone("tiny", input_size=size, embedding_dim=8).eval()
    with torch.no_grad():
        fmap = model.forward_features(torch.zeros(1, 3, size, size))
    c, h, w = fmap.shape[1:]
    assert (c, h, w) == model.feature_map
    assert model.fc.in_features == c * h * w
    assert h == math.ceil(size / 16)


@pytest.mark.parametrize(
    ("name", "params_m"), [("ir34", 34.14), ("ir50", 43.59), ("ir100", 65.16), ("ir200", 118.83)]
)
def test_deep_iresnets_match_arcface_torch_sizes(name, params_m):
    """Built on the meta device (no memory, no compute): parameter counts equal
    arcface_torch's r34/r50/r100/r200 at 112x112, 512-d, and the FC sees 512x7x7."""
    with torch.device("meta"):
        model = create_backbone(name)
        dct = create_backbone(name, input_size=96, input_channels=192)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)
    assert model.fc.in_features == 512 * 7 * 7
    assert dct.fc.in_features == 512 * 6 * 6 and dct.conv1.in_channels == 192


def test_ir50_real_forward_and_arcface_torch_key_names():
    model = create_backbone("ir50", input_channels=27).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 27, 112, 112))
    assert out.shape == (1, 512) and torch.isfinite(out).all()
    keys = model.state_dict()
    # names of arcface_torch's iresnet.py, so its backbone.pth files load
    for k in (
        "conv1.weight",
        "prelu.weight",
        "layer3.13.conv2.weight",
        "layer1.0.downsample.1.running_var",
        "bn2.weight",
        "features.running_mean",
    ):
        assert k in keys
    assert keys["fc.weight"].shape == (512, 25088)
    assert not model.features.weight.requires_grad  # embedding BN scale frozen at 1


def test_ir100_real_forward_small_input():
    model = create_backbone("ir100", input_size=32, embedding_dim=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 64)


def test_iresnet_initialisation_follows_arcface_torch_unless_asked():
    """arcface_torch: conv weights N(0, 0.1), BN (1, 0), embedding BN scale frozen at 1."""
    deep = create_backbone("ir18", input_size=32, embedding_dim=8)
    convs = torch.cat(
        [m.weight.detach().flatten() for m in deep.modules() if isinstance(m, torch.nn.Conv2d)]
    )
    assert float(convs.mean()) == pytest.approx(0.0, abs=2e-3)
    assert float(convs.std()) == pytest.approx(0.1, rel=0.02)
    assert not deep.features.weight.requires_grad
    tiny = create_backbone("tiny", input_size=32, embedding_dim=8)  # this project's CPU model
    fan_out = tiny.layer4[0].conv1.weight.detach()
    expected = math.sqrt(2.0 / (fan_out.shape[0] * 9))
    assert float(fan_out.std()) == pytest.approx(expected, rel=0.1)
    assert create_backbone("tiny", input_size=32, embedding_dim=8, init="arcface_torch")
    with pytest.raises(ConfigError):
        create_backbone("tiny", input_size=32, init="xavier")


def test_backbone_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown backbone 'ir51'.*ir50"):
        create_backbone("ir51")
    with pytest.raises(ConfigError, match="no_such_arg"):
        create_backbone("tiny", no_such_arg=1)
    with pytest.raises(ConfigError, match="input_size"):
        create_backbone("tiny", input_size=8)
    with pytest.raises(ConfigError, match="dropout"):
        create_backbone("ir18", dropout=1.5)


# ----------------------------------------------------------------------------- heads


def _head_with_angles(name, angles, **kw):
    """2-d head whose class centres sit at the given angles (radians)."""
    head = create_head(name, embedding_dim=2, num_classes=len(angles), **kw)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[math.cos(a), math.sin(a)] for a in angles]))
    return head


def _emb(angle, norm=3.0):
    return torch.tensor([[norm * math.cos(angle), norm * math.sin(angle)]])


def test_arcface_changes_only_the_target_logit():
    head = _head_with_angles("arcface", [0.0, 1.0, 2.0])  # s=64, m=0.5
    x, y = _emb(0.3), torch.tensor([0])
    out = head(x, y)
    expected = 64 * torch.tensor([[math.cos(0.3 + 0.5), math.cos(0.7), math.cos(1.7)]])
    assert torch.allclose(out.logits, expected, atol=1e-4)
    assert out.loss.item() == pytest.approx(F.cross_entropy(expected, y).item(), rel=1e-5)
    assert out.targets.tolist() == [0] and out.class_index is None


def test_arcface_threshold_fallback_and_no_nan_at_the_poles():
    m = 0.5
    head = _head_with_angles("arcface", [0.0, 1.0], formulation="threshold")
    theta = math.pi - 0.2  # beyond pi - m: linear fallback cos(theta) - m*sin(pi - m)
    out = head(_emb(theta), torch.tensor([0]))
    fallback = math.cos(theta) - m * math.sin(math.pi - m)
    assert out.logits[0, 0].item() == pytest.approx(64 * fallback, abs=1e-3)
    for angle in (0.0, math.pi):  # cos = +1 / -1 exactly: sqrt/acos gradients must stay finite
        for name, kw in [
            ("arcface", {}),
            ("arcface", {"formulation": "threshold"}),
            ("combined", {"m1": 1.2}),
            ("curricularface", {}),
        ]:
            h = _head_with_angles(name, [0.0, 2.0], **kw)
            x = _emb(angle).requires_grad_(True)
            res = h(x, torch.tensor([0]))
            res.loss.backward()
            assert torch.isfinite(res.loss) and torch.isfinite(x.grad).all(), (name, angle)
            assert torch.isfinite(h.weight.grad).all()


def test_arcface_torch_formulation_no_threshold_straight_through_gradient():
    """arcface_torch: cos(theta + m) at every angle; d loss / d c as if the logit were s*c."""
    m, s = 0.5, 64.0
    for theta in (0.3, math.pi - 0.2):  # below and beyond the old threshold
        head = _head_with_angles("arcface", [0.0, 1.0])
        assert head.formulation == "arcface_torch"
        x = _emb(theta).requires_grad_(True)
        out = head(x, torch.tensor([0]))
        assert out.logits[0, 0].item() == pytest.approx(s * math.cos(theta + m), abs=1e-3)
        out.loss.backward()
        # reference: the same softmax, but the gradient flows through s*c unchanged
        ref_head = _head_with_angles("cosface", [0.0, 1.0], margin=0.0)
        x2 = _emb(theta).requires_grad_(True)
        cos = F.linear(F.normalize(x2, dim=1), F.normalize(ref_head.weight, dim=1))
        shift = torch.tensor([[math.cos(theta + m) - math.cos(theta), 0.0]])
        F.cross_entropy(s * (cos + shift), torch.tensor([0])).backward()
        assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    with pytest.raises(ConfigError, match="formulation"):
        create_head("arcface", embedding_dim=2, num_classes=2, formulation="paper")


def test_easy_margin_leaves_obtuse_targets_alone():
    head = _head_with_angles("arcface", [0.0, 1.0], easy_margin=True, formulation="threshold")
    out = head(_emb(2.0), torch.tensor([0]))  # cos < 0
    assert out.logits[0, 0].item() == pytest.approx(64 * math.cos(2.0), abs=1e-4)


def test_cosface_and_combined_margins():
    cos = _head_with_angles("cosface", [0.0, 1.0], margin=0.4)(_emb(0.3), torch.tensor([0]))
    assert cos.logits[0].tolist() == pytest.approx(
        [64 * (math.cos(0.3) - 0.4), 64 * math.cos(0.7)], abs=1e-3
    )
    comb = _head_with_angles("combined", [0.0, 1.0], m1=1.2, m2=0.3, m3=0.2)
    out = comb(_emb(0.3), torch.tensor([0]))
    assert out.logits[0, 0].item() == pytest.approx(
        64 * (math.cos(1.2 * 0.3 + 0.3) - 0.2), abs=1e-3
    )
    # (1, 0.5, 0) is exactly ArcFace, (1, 0, 0.35) exactly CosFace
    a = _head_with_angles("combined", [0.0, 1.0], m1=1.0, m2=0.5, m3=0.0)(
        _emb(2.9), torch.tensor([0])
    )
    b = _head_with_angles("arcface", [0.0, 1.0], formulation="threshold")(
        _emb(2.9), torch.tensor([0])
    )
    assert torch.allclose(a.logits, b.logits)


def test_curricularface_t_update_and_hard_negative_modulation():
    alpha = 0.01
    head = _head_with_angles("curricularface", [0.0, 0.2, 2.0])  # default alpha 0.01
    assert head.alpha == alpha and head.t.item() == 0.0
    theta = 0.4  # target at 0.4 rad: after the margin cos(0.9) < cos(0.2) -> class 1 is hard
    out = head(_emb(theta), torch.tensor([0]))
    t1 = alpha * math.cos(theta)
    assert head.t.item() == pytest.approx(t1, rel=1e-5)
    c1, c2 = math.cos(theta - 0.2), math.cos(2.0 - theta)
    assert out.logits[0].tolist() == pytest.approx(
        [64 * math.cos(theta + 0.5), 64 * c1 * (t1 + c1), 64 * c2], abs=1e-3
    )
    head(_emb(theta), torch.tensor([0]))
    assert head.t.item() == pytest.approx((1 - alpha) * t1 + alpha * math.cos(theta), rel=1e-5)
    head.eval()
    head(_emb(theta), torch.tensor([0]))  # evaluation never moves t
    assert head.t.item() == pytest.approx((1 - alpha) * t1 + alpha * math.cos(theta), rel=1e-5)
    assert "t" in head.state_dict()  # resumes exactly


def test_curricularface_hard_negatives_are_judged_against_cos_theta_plus_m():
    """Beyond theta_y > pi - m the target uses the fallback, but a negative is hard only if
    it beats cos(theta_y + m) (paper, released code), not the (higher) fallback value."""
    m = 0.5
    theta = 2.9  # target angle: cos(3.4) = -0.967, fallback cos(2.9) - m sin(pi - m) = -1.21
    head = _head_with_angles("curricularface", [0.0, theta + 3.0, theta + 1.0])
    out = head(_emb(theta), torch.tensor([0]))
    t = head.t.item()
    c1, c2 = math.cos(3.0), math.cos(1.0)  # -0.990: between the two; 0.540: hard either way
    assert math.cos(theta) - m * math.sin(math.pi - m) < c1 < math.cos(theta + m) < c2
    assert out.logits[0, 0].item() == pytest.approx(
        64 * (math.cos(theta) - m * math.sin(math.pi - m)), abs=1e-3
    )
    assert out.logits[0, 1].item() == pytest.approx(64 * c1, abs=1e-3)  # not hard
    assert out.logits[0, 2].item() == pytest.approx(64 * c2 * (t + c2), abs=1e-3)  # hard


def test_cifp_penalises_only_instance_false_positives():
    # 4 classes on the unit circle; FAR = 1/3 -> k = ceil(1/3 * 2 * 3) = 2, so T_u is the
    # 2nd largest non-target cosine of the batch and only the largest one is penalised.
    angles = [0.0, 0.6, 1.6, 3.0]
    head = _head_with_angles("cifp", angles)  # s=64, m=0.35
    emb = torch.cat([_emb(0.1), _emb(1.7)])
    labels = torch.tensor([0, 2])
    cos = np.cos(np.subtract.outer([0.1, 1.7], angles))
    # row 0 non-targets: cos(0.5)=.878, cos(1.5)=.071, cos(2.9)=-.971
    # row 1 non-targets: cos(1.7)=-.129, cos(1.1)=.454, cos(1.3)=.268
    # largest = row 0 / class 1 (0.878); second = 0.454 -> T_u; H = {(0, 1)}
    assert cos[0, 1] > cos[1, 1] > max(cos[0, 2], cos[1, 3])
    out = head(emb, labels)
    c0 = cos[0, 0]
    # c_01 = 0.878 < c_00 - m = 0.645? no -> the detached centre is used (same value)
    p0 = cos[0, 1] ** 2
    assert out.logits[0, 0].item() == pytest.approx(64 * (c0 - 0.35 - (1 + c0) * p0), abs=1e-3)
    assert out.logits[1, 2].item() == pytest.approx(64 * (cos[1, 2] - 0.35), abs=1e-3)
    off_target = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 3)]
    for i, j in off_target:
        assert out.logits[i, j].item() == pytest.approx(64 * cos[i, j], abs=1e-3)


def test_partial_fc_keeps_every_positive():
    torch.manual_seed(0)
    labels = torch.tensor([3, 97, 3, 50, 12, 61])
    index, targets = sample_classes(labels, 100, 30)
    assert index.numel() == 30 and torch.all(index[1:] > index[:-1])
    assert torch.equal(index[targets], labels)
    index, targets = sample_classes(labels, 100, 2)  # fewer slots than positives: keep them all
    assert index.tolist() == [3, 12, 50, 61, 97] and torch.equal(index[targets], labels)
    head = create_head("cosface", embedding_dim=8, num_classes=100, sample_rate=0.3)
    out = head(torch.randn(6, 8), labels)
    assert out.logits.shape == (6, 30) and torch.equal(out.class_index[out.targets], labels)
    head.eval()
    assert head(torch.randn(6, 8), labels).logits.shape == (6, 100)


@pytest.mark.parametrize("name", ["arcface", "cosface", "combined", "curricularface", "cifp"])
def test_every_head_learns_and_handles_bf16(name):
    """Fixed class-clustered embeddings: 30 SGD steps on the centres cut the loss."""
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(10, 16), dim=1)
    labels = torch.arange(10).repeat(4)
    emb = centres[labels] + 0.1 * torch.randn(40, 16)
    head = create_head(name, embedding_dim=16, num_classes=10, sample_rate=0.8)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    first = None
    for _ in range(30):
        loss = head(emb, labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(emb.bfloat16(), labels)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_head_errors():
    head = create_head("arcface", embedding_dim=4, num_classes=5)
    with pytest.raises(InputError, match="label out of range"):
        head(torch.randn(2, 4), torch.tensor([0, 5]))
    with pytest.raises(InputError, match="N x 4"):
        head(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="unknown head 'arc'"):
        create_head("arc", embedding_dim=4, num_classes=5)
    with pytest.raises(ConfigError, match="sample_rate"):
        create_head("arcface", embedding_dim=4, num_classes=5, sample_rate=0.0)
    with pytest.raises(ConfigError, match=r"head 'cosface'.*m2"):
        create_head("cosface", embedding_dim=4, num_classes=5, m2=0.1)
    assert set(list_heads()) == {"arcface", "cosface", "combined", "curricularface", "cifp"}


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _warm(create_backbone("tiny", input_size=64, embedding_dim=32), (64, 64))
    out = save_recognizer(model, tmp_path / "ckpt", {"run": "unit-test", "steps": 3})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["backbone"]["name"] == "tiny" and meta["config"]["steps"] == 3
    loaded = load_recognizer(out)
    assert not loaded.training
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    emb = load_embedder(out)
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    e = emb.embed(images)
    assert e.shape == (5, 32) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        ref = F.normalize(model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1))
    assert np.abs(e - ref.numpy()).max() < 1e-5
    # flip-sum is mirror-symmetric
    assert np.allclose(
        emb.embed(images, flip=True), emb.embed(images[:, :, ::-1], flip=True), atol=1e-5
    )
    with pytest.raises(InputError, match="64x64"):
        emb.embed(np.zeros((1, 32, 32, 3), np.uint8))


def test_loading_into_another_architecture_names_the_keys(tmp_path):
    model = create_backbone("tiny", input_size=64, embedding_dim=32)
    ckpt = save_recognizer(model, tmp_path / "ckpt")
    meta = json.loads((ckpt / "config.json").read_text())
    meta["backbone"]["name"] = "mobilefacenet"
    (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        InputError,
        match=r"does not fit backbone 'mobilefacenet': missing keys: body\.0.*unexpected keys: bn1\.bias.*shape mismatch",
    ):
        load_recognizer(ckpt)
    other = create_backbone("tiny", input_size=112, embedding_dim=32)  # FC input differs
    with pytest.raises(
        InputError, match=r"shape mismatch .*fc\.weight \(32, 2048\) vs \(32, 6272\)"
    ):
        load_weights(other, ckpt / "model.safetensors")


def test_pt_weights_load_safely(tmp_path):
    model = create_backbone("tiny", input_size=64, embedding_dim=16)
    pt = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, pt)  # DDP-style keys
    fresh = load_weights(create_backbone("tiny", input_size=64, embedding_dim=16), pt)
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values())
    )
    evil = tmp_path / "evil.pt"
    torch.save({"payload": np.dtype}, evil)  # arbitrary global: refused by weights_only
    with pytest.raises(InputError, match="not a plain tensor state dict"):
        load_weights(model, evil)


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    model = create_backbone("tiny", input_size=64, embedding_dim=16)
    ckpt = save_recognizer(model, tmp_path / "ckpt")
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 differs"):
        load_recognizer(ckpt)
    with pytest.raises(InputError, match=r"no config\.json"):
        load_recognizer(tmp_path)
    with pytest.raises(InputError, match="not built by create_backbone"):
        save_recognizer(torch.nn.Linear(2, 2), tmp_path / "x")


def test_wrapped_models_save_plain_keys(tmp_path):
    """torch.compile / DDP wrappers prefix state-dict keys; the checkpoint must not."""
    model = create_backbone("tiny", input_size=32, embedding_dim=8)
    wrapper = torch.nn.Module()
    wrapper.module = model  # what DistributedDataParallel looks like from outside
    compiled = torch.nn.Module()
    compiled._orig_mod = wrapper  # what torch.compile's OptimizedModule looks like
    ckpt = save_recognizer(compiled, tmp_path / "ckpt")
    assert load_recognizer(ckpt).state_dict().keys() == model.state_dict().keys()
