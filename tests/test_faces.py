"""Face alignment on the procedural world: landmarks, the ArcFace warp, from-folder --align.

The world knows where its landmarks are, so alignment is checked against ground truth.
No real face detector exists on this machine: the detector path runs insightface's SCRFD
wrapper on a stand-in graph with SCRFD's outputs (``pipeline/faces/scrfd_stub.py``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from insightface.utils import face_align
from PIL import Image

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError
from synthface.pipeline.faces.align import ARCFACE_DST, align_face
from synthface.pipeline.faces.scrfd_stub import write_fixed_scrfd
from synthface.pipeline.shards import ShardIndexDataset, load_manifest
from synthface.pipeline.shards.verify import verify_dataset
from synthface.pipeline.world.coefficients import (
    IDENTITY_FIELDS,
    STYLE_FIELDS,
    StyleConditions,
    sample_identity,
    sample_style,
    stack,
)
from synthface.pipeline.world.render import render

# the template's proportions in head units (eye half-distance 0.29): nose tip 1.143 and
# mouth corners 2.309 eye half-distances below the eyes, mouth half-width 0.828 of it
TEMPLATE_FACE = {"eye_sep": 0.29, "nose_len": 0.3915, "mouth_gap": 0.2782, "mouth_w": 0.2401}


def _faces(n, *, seed=0, yaw=(0, 30), **fixed):
    ids, styles = [], []
    for i in range(n):
        idc = sample_identity(seed, i)
        st = dict(sample_style(seed, i, 0, idc, conditions=StyleConditions(yaw_abs=yaw)))
        st.update(fixed)
        ids.append(idc)
        styles.append(st)
    return ids, styles


def _render(ids, styles, size, degrade=False):
    return render(stack(ids, IDENTITY_FIELDS), stack(styles, STYLE_FIELDS), size, degrade=degrade)


def test_world_eye_landmarks_sit_on_the_painted_pupils():
    ids, styles = _faces(12, gaze_x=0.0, gaze_y=0.0, blink=0.0, glasses=0.0, mask=0.0)
    out = _render(ids, styles, 160)
    assert out.landmarks.shape == (12, 5, 2) and out.landmarks_visible.all()
    for k in range(12):
        for e in (0, 1):
            x, y = out.landmarks[k, e]
            r0, c0 = int(np.rint(y)) - 4, int(np.rint(x)) - 4
            win = out.albedo[k, r0 : r0 + 9, c0 : c0 + 9]
            dark = win.max(-1) < 0.045  # the pupil's albedo is 0.03, the lashes' 0.06
            assert dark.sum() >= 2, (k, e)
            rows, cols = np.nonzero(dark)
            centroid = np.array([c0 + cols.mean(), r0 + rows.mean()])
            assert np.hypot(*(centroid - [x, y])) < 0.5, (k, e, centroid, (x, y))


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("size", [128, 200])
def test_alignment_lands_world_landmarks_within_one_pixel_of_the_template(size):
    """Faces with the template's proportions, under random in-plane rotation, scale and
    shift (an exact 2-D similarity under the orthographic camera), align onto the template."""
    rng = np.random.default_rng(size)
    ids, styles = _faces(6, yaw=(0, 0), pitch=0.0, smile=0.0, mouth_open=0.0,
                         light_az=0.0, light_el=0.0, glasses=0.0, mask=0.0)  # fmt: skip
    for idc, st in zip(ids, styles):
        idc.update(TEMPLATE_FACE)
        st.update(
            roll=float(rng.uniform(-25, 25)),
            scale=float(rng.uniform(0.75, 1.05)),
            shift_x=float(rng.uniform(-0.1, 0.1)),
            shift_y=float(rng.uniform(-0.1, 0.1)),
        )
    out = _render(ids, styles, size)
    crops = []
    for k in range(len(ids)):
        crop, landed = align_face(out.image[k], out.landmarks[k])
        assert crop.shape == (112, 112, 3)
        assert np.abs(landed - ARCFACE_DST).max() < 1.0
        assert np.array_equal(crop, face_align.norm_crop(out.image[k], out.landmarks[k]))
        crops.append(crop.astype(np.float32))
    # the same face under another similarity gives (nearly) the same crop: compare one
    # identity rendered twice with different roll/scale/shift
    twin = [dict(s) for s in styles[:1]] * 2
    twin[1] = {**twin[1], "roll": -twin[0]["roll"], "scale": 0.9, "shift_x": 0.05}
    pair = _render(ids[:1] * 2, twin, size)
    a, _ = align_face(pair.image[0], pair.landmarks[0])
    b, _ = align_face(pair.image[1], pair.landmarks[1])
    face = (slice(40, 100), slice(30, 82))  # eyes to chin, inside the head
    same = np.abs(a[face].astype(np.float32) - b[face]).mean()
    other = np.abs(crops[1][face] - crops[2][face]).mean()
    assert same < 6 and same < other / 2, (same, other)


def _write_world_folder(root, n_ids=3, per=3, size=128):
    """SRC/<id>/<k>.png world faces and their landmarks as a sidecar file."""
    ids, styles = _faces(n_ids * per, yaw=(0, 25))
    for k in range(n_ids * per):
        ids[k] = ids[k - k % per]  # per images of each identity
    out = _render(ids, styles, size)
    lines, images = [], {}
    for k in range(n_ids * per):
        rel = f"person{k // per}/{k % per}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(out.image[k]).save(root / rel)
        coords = [f"{v:.4f}" for v in out.landmarks[k].reshape(-1)]
        lines.append(f"{rel} {' '.join(coords)} 0.99")
        images[rel] = (out.image[k], np.array([float(c) for c in coords]).reshape(5, 2))
    return lines, images


@pytest.mark.filterwarnings("ignore::FutureWarning")  # insightface's call into scikit-image
def test_from_folder_align_with_sidecar_landmarks_and_policies(tmp_path, capsys):
    src = tmp_path / "src"
    lines, images = _write_world_folder(src)
    # person1/0.png: a second, smaller "face" listed; person2: no landmarks at all
    x = images["person1/0.png"][1]
    lines.append("person1/0.png " + " ".join(f"{v:.4f}" for v in (x * 0.5).reshape(-1)))
    lines = [ln for ln in lines if not ln.startswith("person2/")]
    sidecar = tmp_path / "landmarks.txt"
    sidecar.write_text("\n".join(lines) + "\n")

    out = tmp_path / "ds"
    args = ["shards", "from-folder", str(src), str(out), "--align", "--landmarks", str(sidecar),
            "--image-format", "png"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    split = load_manifest(out)["splits"]["train"]
    assert split["extra"]["align"] == {
        "aligned": 6, "largest_of_several": 1, "skipped_no_face": 3, "skipped_multi_face": 0,
        "landmark_entries_without_image": 0, "identities_dropped": 1,
    }  # fmt: skip
    assert (split["num_identities"], split["num_samples"]) == (2, 6)
    assert np.load(out / "names.npy").tolist() == ["person0", "person1"]
    assert verify_dataset(out)["ok"]
    ds = ShardIndexDataset(out)
    for i in range(len(ds)):
        s = ds[i]
        rel = s["meta"]["original"]
        image, lmk = images[rel]
        assert s["image"].shape == (112, 112, 3)
        assert np.array_equal(s["image"], face_align.norm_crop(image, lmk.astype(np.float32)))
        assert s["meta"]["det_score"] == 0.99 and s["meta"]["faces_found"] == (
            2 if rel == "person1/0.png" else 1
        )
        assert np.allclose(s["meta"]["landmarks"], lmk, atol=1e-3)
        assert s["meta"]["aligned_by"] == "landmarks" and s["meta"]["bbox"] is None

    assert main([*args[:3], str(tmp_path / "ds2"), *args[4:], "--face-policy", "skip"]) == 0
    assert (
        load_manifest(tmp_path / "ds2")["splits"]["train"]["extra"]["align"]["skipped_multi_face"]
        == 1
    )
    with pytest.raises(InputError, match=r"person1/0.png: 2 faces found \(face policy 'fail'\)"):
        from synthface.pipeline.faces.aligner import AlignConfig
        from synthface.pipeline.shards.folder import from_folder

        from_folder(src, tmp_path / "ds3", align=AlignConfig(landmarks=str(sidecar), policy="fail"))
    assert not (tmp_path / "ds3" / "dataset.json").exists()
    capsys.readouterr()
    assert main(["shards", "from-folder", str(src), str(tmp_path / "ds4"), "--align"]) == 1
    assert "give exactly one of a detector model or a landmarks file" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_detector_path_decodes_scrfd_outputs_and_applies_the_policy(tmp_path):
    src = tmp_path / "src"
    _, images = _write_world_folder(src, n_ids=2, per=2, size=160)
    image, lmk = images["person0/0.png"]
    for rel in images:  # every file the same image: the stand-in reports fixed faces
        Image.fromarray(image).save(src / rel)
    box = (lmk[:, 0].min() - 20, lmk[:, 1].min() - 30, lmk[:, 0].max() + 20, lmk[:, 1].max() + 25)
    det = tmp_path / "det.onnx"
    write_fixed_scrfd(det, [(box, lmk, 0.9)], size=160)
    out = tmp_path / "ds"
    assert main(["shards", "from-folder", str(src), str(out), "--align", "--detector", str(det),
                 "--det-size", "160", "--image-format", "png"]) == 0  # fmt: skip
    ds = ShardIndexDataset(out)
    assert len(ds) == 4
    s = ds[0]
    assert s["meta"]["aligned_by"] == "detector" and s["meta"]["det_score"] == pytest.approx(0.9)
    assert np.allclose(s["meta"]["landmarks"], lmk, atol=1e-3)
    assert np.allclose(s["meta"]["bbox"], box, atol=1e-3)
    assert (
        np.abs(s["image"].astype(int) - face_align.norm_crop(image, lmk.astype(np.float32))).max()
        <= 1
    )

    # two faces (the second smaller, elsewhere) and none
    small = (5, 5, 35, 40)
    small_kps = np.array([[12, 15], [28, 15], [20, 24], [14, 32], [26, 32]], float)
    two = tmp_path / "two.onnx"
    write_fixed_scrfd(two, [(box, lmk, 0.8), (small, small_kps, 0.95)], size=160)
    none = tmp_path / "none.onnx"
    write_fixed_scrfd(none, [], size=160)
    for model, policy, expect in [
        (two, "largest", {"aligned": 4, "largest_of_several": 4}),
        (two, "skip", {"aligned": 0, "skipped_multi_face": 4}),
        (none, "largest", {"aligned": 0, "skipped_no_face": 4}),
    ]:
        from synthface.pipeline.faces.aligner import AlignConfig, Aligner

        aligner = Aligner(AlignConfig(detector=str(model), det_size=160, policy=policy))
        for rel in images:
            got = aligner(rel, image, rel)
            if got is not None:  # the largest face is the real one, not the high-score small one
                assert json.dumps(got[1]["landmarks"]) == json.dumps(np.round(lmk, 3).tolist())
        summary = aligner.summary()
        assert {k: summary[k] for k in expect} == expect
        assert aligner.detector.calls == 4 and aligner.detector.seconds > 0


def test_bad_detector_and_sidecar_inputs_are_named(tmp_path):
    from synthface.pipeline.faces.detect import FaceDetector
    from synthface.pipeline.faces.sidecar import read_sidecar

    bad = tmp_path / "lm.txt"
    bad.write_text("a/b.jpg 1 2 3\n")
    with pytest.raises(InputError, match=r"lm.txt: line 1: expected RELPATH and 10 coordinates"):
        read_sidecar(bad)
    with pytest.raises(InputError, match="no such detector model"):
        FaceDetector(tmp_path / "absent.onnx")
    import onnx
    from onnx import TensorProto, helper

    rec = tmp_path / "rec.onnx"  # a recognizer's signature: insightface routes it to ArcFaceONNX
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data"], ["p"]),
         helper.make_node("Flatten", ["p"], ["fc1"])],
        "rec",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), rec)
    with pytest.raises(InputError, match=r"not a face detection model.*ArcFaceONNX"):
        FaceDetector(rec)
    assert math.isclose(float(ARCFACE_DST[2, 0]), 56.0252, rel_tol=1e-6)


def test_world_datasets_record_the_landmarks(tmp_path):
    from synthface.pipeline.shards import iter_samples
    from synthface.pipeline.world import make_world_dataset, render_from_meta

    make_world_dataset(tmp_path / "w", identities=2, per_identity=2, size=64)
    for s in iter_samples(tmp_path / "w", decode=False):
        again = render_from_meta([s["meta"]])
        assert np.allclose(s["meta"]["landmarks"], again.landmarks[0], atol=1e-3)
        assert s["meta"]["landmarks_visible"] == again.landmarks_visible[0].tolist()
