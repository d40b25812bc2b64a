"""``synthface shards annotate``: real-style folders -> shards -> embeddings + pose/age ->
generator training.

World faces written as a folder of identity sub-folders stand in for a real aligned set.
The recognizer is the project's demo model exported to ONNX; the insightface-pack models
are tiny ONNX graphs with insightface's input/output names and shapes whose outputs are
known functions of the image, so insightface's own classes and ours can be compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError
from synthface.pipeline.shards import iter_samples, split_manifest
from synthface.recognition.attributes import annotate as annotate_mod
from synthface.recognition.attributes.pose import mean_shape

ROOT = Path(__file__).resolve().parents[1]
DEMO_RECOGNIZER = ROOT / "data" / "demo" / "models" / "recognizer" / "model"
IDENTITIES, PER_IDENTITY, SIZE = 6, 4, 32


def _run(*argv: str) -> None:
    assert main(["--quiet", *map(str, argv)]) == 0


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


class TinyLandmark(nn.Module):
    """insightface 1k3d68 layout: 'data' N x 3 x 192 x 192 -> 'fc1' N x 3309. The last 68
    points are insightface's mean face turned by a yaw that is a function of the image."""

    def __init__(self) -> None:
        super().__init__()
        m = mean_shape()
        m = (m - m.mean(0)) / np.abs(m).max() * 0.6
        self.register_buffer("face", torch.tensor(m, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        yaw = x.mean(dim=(1, 2, 3)) * 1.5  # radians
        c, s = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
        fx, fy, fz = self.face[:, 0], self.face[:, 1], self.face[:, 2]
        # rotation about the vertical axis; image y points down, z towards the viewer
        pts = torch.stack([c * fx + s * fz, fy.expand_as(c * fx), -s * fx + c * fz], -1)
        pad = torch.zeros(x.shape[0], 3309 // 3 - 68, 3) + 0 * yaw[:, None, None]
        return torch.cat([pad, pts], 1).reshape(x.shape[0], 3309)


class TinyGenderAge(nn.Module):
    """insightface genderage layout: 'data' N x 3 x 96 x 96 -> 'fc1' N x 3 (female, male,
    age / 100); age follows the image's brightness, gender its red-green balance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red, green = x[:, 0].mean(dim=(1, 2)), x[:, 1].mean(dim=(1, 2))
        return torch.stack([green, red, 0.3 + 0.2 * x.mean(dim=(1, 2, 3))], 1)


def _export(model: nn.Module, side: int, path: Path) -> Path:
    torch.onnx.export(
        model.eval(),
        (torch.zeros(2, 3, side, side),),
        str(path),
        input_names=["data"],
        output_names=["fc1"],
        dynamic_axes={"data": {0: "None"}, "fc1": {0: "None"}},
        opset_version=17,
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of identity sub-folders, its shards, the ONNX recognizer and pack models."""
    from synthface.pipeline.world.dataset import render_images

    root = tmp_path_factory.mktemp("annotate")
    folder = root / "faces"
    jobs = [(i, j, None) for i in range(IDENTITIES) for j in range(PER_IDENTITY)]
    for i, j, image, _ in render_images(jobs, seed=3, split="train", size=SIZE):
        (folder / f"person{i:02d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"person{i:02d}" / f"img{j}.png")
    shards = root / "real-shards"
    _run("shards", "from-folder", folder, shards, "--max-samples", 8)  # 3 shards
    onnx = root / "recognizer.onnx"
    _run("recognition", "export", DEMO_RECOGNIZER, "--onnx", onnx, "--any-size")
    pack = root / "buffalo_tiny"
    pack.mkdir()
    landmark = _export(TinyLandmark(), 192, pack / "1k3d68.onnx")
    genderage = _export(TinyGenderAge(), 96, pack / "genderage.onnx")
    return {
        "root": root,
        "shards": shards,
        "onnx": onnx,
        "landmark": landmark,
        "genderage": genderage,
    }


@pytest.fixture(scope="module")
def annotated(setup):
    out = setup["root"] / "annotated"
    _run(
        "shards", "annotate", setup["shards"], "--out", out, "--recognizer", setup["onnx"],
        "--landmark-model", setup["landmark"], "--genderage-model", setup["genderage"],
        "--batch-size", 3,
    )  # fmt: skip
    return out


def test_annotate_adds_embeddings_and_insightface_pose_age(setup, annotated):
    from insightface.app.common import Face
    from insightface.model_zoo import get_model

    from synthface.recognition import load_embedder

    src = list(iter_samples(setup["shards"]))
    out = list(iter_samples(annotated))
    assert [s["__key__"] for s in out] == [s["__key__"] for s in src]
    assert [s["label"] for s in out] == [s["label"] for s in src]
    images = np.stack([s["image"] for s in src])
    assert np.array_equal(np.stack([s["image"] for s in out]), images)  # bytes kept
    expected = load_embedder(setup["onnx"]).embed(images)
    got = np.stack([s["embedding"] for s in out])
    assert got.shape == (len(src), 128) and np.abs(got - expected).max() < 1e-5

    # insightface's own classes on the same crops: the box is the central 2/3 of the crop
    lmk = get_model(str(setup["landmark"]), providers=["CPUExecutionProvider"])
    att = get_model(str(setup["genderage"]), providers=["CPUExecutionProvider"])
    assert lmk.taskname == "landmark_3d_68" and att.taskname == "genderage"
    yaws = []
    for s in out:
        bgr = np.ascontiguousarray(s["image"][:, :, ::-1])
        face = Face(bbox=np.array([SIZE / 6, SIZE / 6, SIZE * 5 / 6, SIZE * 5 / 6]))
        lmk.get(bgr, face)
        gender, age = att.get(bgr, face)
        a = s["meta"]["attributes"]
        pitch_if, yaw_if, roll_if = face["pose"]
        # one rotation about the vertical axis: insightface's yaw is ours
        assert abs(a["yaw"] - yaw_if) < 0.2 and abs(a["pitch"]) < 0.2 and abs(a["roll"]) < 0.2
        assert abs(pitch_if) < 0.2 and abs(roll_if) < 0.2
        assert abs(a["age"] - age) <= 0.6 and a["gender"] == gender
        yaws.append(a["yaw"])
    assert np.std(yaws) > 2.0  # per-image values, not one constant

    entry = split_manifest(annotated)
    assert entry["num_identities"] == IDENTITIES and entry["num_shards"] == 3
    assert "npy" in entry["members"]
    assert entry["extra"]["annotate"]["provides"] == {
        "yaw": "1k3d68.onnx", "pitch": "1k3d68.onnx", "roll": "1k3d68.onnx",
        "age": "genderage.onnx", "gender": "genderage.onnx",
    }  # fmt: skip
    assert main(["shards", "verify", str(annotated)]) == 0


def test_annotated_set_is_plain_webdataset(annotated):
    import webdataset as wds

    urls = [str(annotated / "shards" / s["name"]) for s in split_manifest(annotated)["shards"]]
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        assert {"cls", "png", "json", "npy"} <= set(sample)
        meta = sample["json"]
        assert {"yaw", "pitch", "roll", "age"} <= set(meta["attributes"])
        assert sample["npy"].shape == (128,)
        n += 1
    assert n == IDENTITIES * PER_IDENTITY


def test_world_estimator_trains_and_annotates(setup, tmp_path):
    model = tmp_path / "world-attributes"
    _run(
        "recognition", "train-attributes", model, "--identities", 12, "--per-identity", 4,
        "--eval-identities", 4, "--steps", 40, "--input-size", 32, "--threads", 1,
    )  # fmt: skip
    info = json.loads((model / "attributes.json").read_text())
    assert info["training"]["last_loss"] < info["training"]["first_loss"]
    assert set(info["eval"]["mae"]) == {"yaw", "pitch", "roll", "age"}
    out = tmp_path / "annotated"
    _run(
        "shards", "annotate", setup["shards"], "--out", out, "--recognizer", DEMO_RECOGNIZER,
        "--attribute-model", model,
    )  # fmt: skip
    metas = [s["meta"] for s in iter_samples(out, decode=False)]
    assert all({"yaw", "pitch", "roll", "age"} <= set(m["attributes"]) for m in metas)
    assert len({m["attributes"]["yaw"] for m in metas}) > 1
    provides = split_manifest(out)["extra"]["annotate"]["provides"]
    assert set(provides.values()) == {"world estimator world-attributes"}

    # an altered weights file is refused in one line
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(InputError, match="sha256 differs"):
        annotate_mod.load_annotators(DEMO_RECOGNIZER, attribute_model=model)


def test_annotate_refusals(setup, tmp_path):
    with pytest.raises(InputError, match="no pose/age source"):
        annotate_mod.load_annotators(setup["onnx"])
    with pytest.raises(InputError, match="no source for age"):
        annotate_mod.load_annotators(setup["onnx"], landmark_model=setup["landmark"])
    with pytest.raises(InputError, match="not an insightface 3-D 68-landmark"):
        annotate_mod.load_annotators(setup["onnx"], landmark_model=setup["genderage"])
    # a recognizer of another input size: refused naming the sample, the claim given up
    from synthface.recognition import create_backbone, export_onnx

    torch.manual_seed(0)
    other = tmp_path / "r48.onnx"
    export_onnx(create_backbone("tiny", input_size=48), other, allow_any_size=True)
    with pytest.raises(InputError, match=r"train-000000.tar: 00000000/0000: .*--resize"):
        annotate_mod.annotate_dataset(
            setup["shards"], tmp_path / "x", recognizer=other, attributes=False
        )
    assert not (tmp_path / "x").exists()
    out = tmp_path / "resized"
    annotate_mod.annotate_dataset(
        setup["shards"], out, recognizer=other, attributes=False, resize=True
    )
    assert split_manifest(out)["extra"]["annotate"]["provides"] == {}


KILLER = """
import os, signal, sys
from synthface.recognition.attributes import annotate
calls, real = [0], annotate.Annotators.__call__
def dying(self, images, keys):
    calls[0] += 1
    if calls[0] == 6:  # shard 0 is 4 batches of 2: killed inside shard 1
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, images, keys)
annotate.Annotators.__call__ = dying
from synthface.pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_annotate_killed_then_rerun_gives_identical_bytes(setup, tmp_path):
    import subprocess
    import sys

    def argv(out):
        return [
            "--quiet", "shards", "annotate", str(setup["shards"]), "--out", str(out),
            "--recognizer", str(setup["onnx"]), "--landmark-model", str(setup["landmark"]),
            "--genderage-model", str(setup["genderage"]), "--batch-size", "2",
        ]  # fmt: skip

    full = tmp_path / "a" / "annotated"  # _info.json names the directory
    assert main(argv(full)) == 0
    part = tmp_path / "b" / "annotated"
    killed = subprocess.run([sys.executable, "-c", KILLER, *argv(part)], cwd=ROOT, timeout=300)
    assert killed.returncode == -9
    assert list((part / "shards").glob(".train-000001.tar.tmp-*"))  # what a kill leaves
    assert sorted(p.name for p in (part / "shards").glob("*.tar")) == ["train-000000.tar"]
    assert not (part / "dataset.json").exists()
    first = (part / "shards" / "train-000000.tar").stat().st_ino

    assert main(argv(part)) == 0  # takes over the dead process's claim
    assert (part / "shards" / "train-000000.tar").stat().st_ino == first  # kept, not redone
    assert _files(part) == _files(full)
    assert main(["shards", "verify", str(part)]) == 0  # the killed writer's temp file is gone


# ------------------------------------------------------------------ generators on the set


def _tiny_vq(path: Path) -> Path:
    from diffusers import VQModel

    torch.manual_seed(0)
    VQModel(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=3,
        norm_num_groups=4,
        num_vq_embeddings=64,
        vq_embed_dim=3,
        scaling_factor=1.0,
    ).save_pretrained(path, safe_serialization=True)
    return path


TINY_UNET = [
    "unet.block_out_channels=[8,16]", "unet.cross_attention_levels=[false,true]",
    "unet.layers_per_block=1", "unet.attention_head_dim=2", "unet.norm_num_groups=4",
    "unet.cross_attention_dim=16", "conditioning.identity_tokens=2", "conditioning.mlp_hidden=[16]",
]  # fmt: skip
TINY_UIFACE = [
    "uiface.unet.base_channels=8", "uiface.unet.channel_mult=[1,2]",
    "uiface.unet.attention_levels=[false,true]", "uiface.unet.num_res_blocks=1",
    "uiface.unet.head_channels=8", "uiface.unet.context_dim=16", "uiface.unet.context_tokens=2",
    "uiface.unet.norm_num_groups=4",
]  # fmt: skip


def _style_files(annotated: Path, root: Path) -> list[str]:
    """MorphFace's external style source: per-key fits (here the annotated pose, as a
    user's 3DMM fitter would give) and maps."""
    fits, maps = root / "fits", root / "maps"
    for s in iter_samples(annotated, decode=False):
        a = s["meta"]["attributes"]
        for d in (fits, maps):
            (d / s["__key__"]).parent.mkdir(parents=True, exist_ok=True)
        np.savez(fits / f"{s['__key__']}.npz", pose=np.array([a["yaw"], a["pitch"], a["roll"]]))
        tilt = np.full((8, 8, 3), a["yaw"] / 90.0, dtype=np.float32)
        np.savez(
            maps / f"{s['__key__']}.npz", normal=tilt, albedo=tilt * 0 + 0.5, shading=tilt * 0 + 1
        )
    return [
        f"morphface.external.fits={fits}", f"morphface.external.maps={maps}",
        "morphface.external.layout=[{name: pose, key: pose, size: 3}]",
        "morphface.map_size=8", "morphface.style_grid=2", "morphface.style_channels=[8]",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["id3", "uiface", "morphface"])
def test_128_configs_train_from_annotated_set(name, setup, annotated, tmp_path):
    from synthface.generators.base import load_generator

    vq = _tiny_vq(tmp_path / "vq")
    sets = [
        "image_size=32", "conditioning.identity_dim=128",
        f"autoencoder.path={vq}", "autoencoder.block_out_channels=[8,16]",
        f"encoder.path={setup['onnx']}", f"data.path={annotated}", "data.shuffle_buffer=8",
        "train.steps=2", "train.batch_size=4", "train.checkpoint_every=2", "train.log_every=1",
        "train.mixed_precision='no'", f"train.output_dir={tmp_path / 'run'}",
        "sampler.steps=2", "sampler.batch_size=4",
    ]  # fmt: skip
    sets += TINY_UIFACE if name == "uiface" else TINY_UNET
    if name == "morphface":
        sets += _style_files(annotated, tmp_path)
    config = ROOT / "configs" / "generators" / f"{name}_128.yaml"
    _run("generator", "train", config, "--threads", 1, *[a for s in sets for a in ("--set", s)])
    from synthface.generators.encoder import load_identity_encoder

    encoder = load_identity_encoder(setup["onnx"])  # ID³'s identity guidance
    gen = load_generator(tmp_path / "run" / "final", encoder=encoder)
    assert gen.config.autoencoder.latent_channels == 3
    if name == "morphface":
        return  # sampling new styles needs the user's fitter's renderer
    samples = [s for s in iter_samples(annotated, decode=False)][:2]
    ident = np.stack([s["embedding"] for s in samples])
    attrs = None
    if name == "id3":  # conditions in the config's order: age, yaw, pitch, roll
        names = [a.name for a in gen.config.conditioning.attributes]
        assert names == ["age", "yaw", "pitch", "roll"]
        attrs = np.array([[s["meta"]["attributes"][n] for n in names] for s in samples])
    images = gen.generate(ident, attrs, [0, 1])
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
