"""The procedural face world: determinism, identity/style factorisation, group priors,
maps consistent with the image, verification protocols and argument errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from synthface.pipeline.errors import InputError
from synthface.pipeline.world.coefficients import (
    IDENTITY_FIELDS,
    STYLE_FIELDS,
    StyleConditions,
    sample_identity,
    sample_style,
    stack,
)
from synthface.pipeline.world.dataset import make_world_dataset, render_from_meta
from synthface.pipeline.world.groups import GROUP_NAMES, GROUPS, NUM_GROUPS
from synthface.pipeline.world.protocols import PROTOCOLS, make_protocol
from synthface.pipeline.world.render import render


def _batch(pairs, seed=0, split="train", **override):
    ids, sts = [], []
    for i, j in pairs:
        idc = sample_identity(seed, i, split)
        s = sample_style(seed, i, j, idc, split)
        s.update(override)
        ids.append(idc)
        sts.append(s)
    return stack(ids, IDENTITY_FIELDS), stack(sts, STYLE_FIELDS)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_at_least_eight_groups_with_distinct_names():
    assert NUM_GROUPS >= 8
    assert len(set(GROUP_NAMES)) == NUM_GROUPS


def test_render_is_deterministic_and_independent_of_batching():
    pairs = [(i, j) for i in range(3) for j in range(2)]
    idc, sty = _batch(pairs)
    seeds = np.arange(len(pairs)) + 11
    a = render(idc, sty, 48, noise_seeds=seeds)
    b = render(idc, sty, 48, noise_seeds=seeds, max_pixels=48 * 48)  # one image per chunk
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.normal, b.normal)
    single = render(
        {k: v[3:4] for k, v in idc.items()},
        {k: v[3:4] for k, v in sty.items()},
        48,
        noise_seeds=seeds[3:4],
    )
    assert np.array_equal(single.image[0], a.image[3])


def test_dataset_bytes_are_reproducible(tmp_path):
    kw = dict(identities=3, per_identity=2, size=32, seed=5)
    m1 = make_world_dataset(tmp_path / "a", **kw)
    m2 = make_world_dataset(tmp_path / "b", **kw)
    s1, s2 = m1["splits"]["train"], m2["splits"]["train"]
    assert [r["sha256"] for r in s1["shards"]] == [r["sha256"] for r in s2["shards"]]
    assert _sha(tmp_path / "a" / "identity_coeffs.npy") == _sha(
        tmp_path / "b" / "identity_coeffs.npy"
    )
    # a re-run in place resumes (nothing rewritten) and gives the same manifest
    m3 = make_world_dataset(tmp_path / "a", **kw)
    assert m3["splits"]["train"]["shards"] == s1["shards"]
    other = make_world_dataset(tmp_path / "c", **{**kw, "seed": 6})
    assert other["splits"]["train"]["shards"][0]["sha256"] != s1["shards"][0]["sha256"]


def test_samples_carry_coefficients_and_rerender_exactly(tmp_path):
    from synthface.pipeline.shards import encode_image, iter_samples

    make_world_dataset(tmp_path, identities=2, per_identity=3, size=40, seed=1, ext="png")
    samples = list(iter_samples(tmp_path))
    assert [s["label"] for s in samples] == [0, 0, 0, 1, 1, 1]
    metas = [s["meta"] for s in samples]
    for m in metas:
        assert m["group"] in range(NUM_GROUPS)
        for key in ("yaw", "pitch", "roll", "age", "expression", "occluder"):
            assert key in m["attributes"]
        assert set(IDENTITY_FIELDS) <= set(m["identity_coeffs"])
        assert set(STYLE_FIELDS) <= set(m["style_coeffs"])
    again = render_from_meta(metas)
    for s, img in zip(samples, again.image):
        assert np.array_equal(s["image"], img)
        assert encode_image(img, "png") == encode_image(s["image"], "png")


def test_same_identity_differs_in_pixels_but_shares_identity_coefficients(tmp_path):
    from synthface.pipeline.shards import iter_samples

    make_world_dataset(tmp_path, identities=2, per_identity=4, size=32, seed=2)
    samples = list(iter_samples(tmp_path))
    first = [s for s in samples if s["label"] == 0]
    second = [s for s in samples if s["label"] == 1]
    for s in first[1:]:
        assert s["meta"]["identity_coeffs"] == first[0]["meta"]["identity_coeffs"]
        assert s["meta"]["style_coeffs"] != first[0]["meta"]["style_coeffs"]
        diff = np.abs(s["image"].astype(int) - first[0]["image"].astype(int)).mean()
        assert diff > 5  # styles really change the picture
    assert first[0]["meta"]["identity_coeffs"] != second[0]["meta"]["identity_coeffs"]


def test_group_priors_differ():
    n = 30  # identities per group
    coeffs = [sample_identity(0, i) for i in range(n * NUM_GROUPS)]
    by_group = {g: [c for c in coeffs if int(c["group"]) == g] for g in range(NUM_GROUPS)}
    assert all(len(v) == n for v in by_group.values())
    # rendered skin albedo gets darker from the lightest to the darkest tone family
    pairs = [(i, 0) for i in range(n * NUM_GROUPS)]
    idc, sty = _batch(pairs, yaw=0.0, pitch=0.0, roll=0.0, glasses=0.0, mask=0.0, beard=0.0)
    out = render(idc, sty, 32, degrade=False)
    cheek = out.albedo[:, 20, 9:12].mean(axis=(1, 2))  # a cheek patch of a frontal face
    tone_mean = {}
    for tone in ("light", "medium", "tan", "dark"):
        members = [i for i, c in enumerate(coeffs) if GROUPS[int(c["group"])].tone == tone]
        tone_mean[tone] = cheek[members].mean()
    assert tone_mean["light"] > tone_mean["medium"] > tone_mean["tan"] > tone_mean["dark"] + 0.1
    # the face-shape families differ in jaw width and beard odds
    narrow = [c for c in coeffs if GROUPS[int(c["group"])].shape == "narrow"]
    broad = [c for c in coeffs if GROUPS[int(c["group"])].shape == "broad"]
    assert np.mean([c["jaw_w"] for c in broad]) > np.mean([c["jaw_w"] for c in narrow]) + 0.05
    assert (
        np.mean([c["beard"] > 0 for c in broad]) > np.mean([c["beard"] > 0 for c in narrow]) + 0.2
    )


def test_train_and_eval_identity_streams_are_disjoint():
    train = {tuple(sample_identity(0, i, "train").values()) for i in range(200)}
    evals = {tuple(sample_identity(0, i, "eval").values()) for i in range(200)}
    assert not train & evals
    assert sample_identity(0, 7, "train") != sample_identity(0, 7, "eval")
    assert sample_identity(0, 7, "train") == sample_identity(0, 7, "train")


def test_image_is_albedo_times_shading_on_face_pixels():
    idc, sty = _batch([(i, j) for i in range(4) for j in range(3)])
    out = render(idc, sty, 64, degrade=False)
    product = out.albedo * out.shading
    m = out.mask[..., None] & (product < 1.0)  # unclipped foreground pixels
    assert m.mean() > 0.2
    assert np.abs(out.clean - product)[np.broadcast_to(m, product.shape)].max() < 1e-5
    assert (
        np.abs(out.image / 255.0 - product)[np.broadcast_to(m, product.shape)].max()
        <= 0.5 / 255 + 1e-6
    )
    # maps are defined on the mask only; normals are unit vectors there
    assert np.all(out.albedo[~out.mask] == 0) and np.all(out.shading[~out.mask] == 0)
    norms = np.linalg.norm(out.normal[out.mask], axis=-1)
    assert np.allclose(norms, 1, atol=1e-4)
    # with every degradation switched off the degraded path gives the same pixels
    clean_style = {**sty, "blur": np.zeros(12), "noise": np.zeros(12), "jpeg": np.zeros(12)}
    assert np.array_equal(
        render(idc, clean_style, 64).image, render(idc, clean_style, 64, degrade=False).image
    )


def test_yaw_turns_the_face():
    """The face centre (kept near the image centre, like an aligned crop) faces the yaw side."""
    idc, sty = _batch([(0, 0)] * 3, pitch=0.0, roll=0.0, glasses=0.0, mask=0.0)
    sty["yaw"] = np.array([-40.0, 0.0, 40.0])
    out = render(idc, sty, 64, degrade=False)
    nx = out.normal[:, 26:38, 26:38, 0].mean(axis=(1, 2))
    assert nx[0] < -0.25 and abs(nx[1]) < 0.1 and nx[2] > 0.25


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_files_have_the_stated_counts(tmp_path, protocol):
    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.pipeline.shards import decode_image

    folds, per_fold = 2, 16
    s = make_protocol(tmp_path, protocol, folds=folds, pairs_per_fold=per_fold, size=32, seed=3)
    assert s["num_pairs"] == folds * 2 * per_fold and s["num_genuine"] == folds * per_fold
    blobs, issame = read_bin(tmp_path / f"{protocol}.bin")
    assert len(blobs) == 2 * s["num_pairs"] and len(issame) == s["num_pairs"]
    # contiguous folds, each: per_fold genuine pairs then per_fold impostors
    expect = ([True] * per_fold + [False] * per_fold) * folds
    assert list(issame) == expect
    comps = (tmp_path / "comparisons" / f"{protocol}_comparison.txt").read_text().splitlines()
    truth = (tmp_path / "comparisons" / f"{protocol}_ground_truth.txt").read_text().splitlines()
    assert len(comps) == len(truth) == s["num_pairs"]
    assert truth == [str(int(x)) for x in expect]
    meta = json.loads((tmp_path / f"{protocol}_pairs.json").read_text())["pairs"]
    for k, (line, p) in enumerate(zip(comps, meta)):
        a, b = line.split(";")
        assert (tmp_path / "images" / a).is_file() and (tmp_path / "images" / b).is_file()
        assert (p["identity_a"] == p["identity_b"]) == p["same"]
        if k < 3:  # the .bin holds the very images of the tree
            assert np.array_equal(
                decode_image(blobs[2 * k]), decode_image((tmp_path / "images" / a).read_bytes())
            )
    fold_ids = [{p["identity_a"] for p in meta if p["fold"] == f} for f in range(folds)]
    assert not fold_ids[0] & fold_ids[1]  # identity-disjoint folds
    # no protocol identity is a training identity (train stream, same index range)
    train = {tuple(sample_identity(3, i, "train").values()) for i in sorted(fold_ids[0])[:8]}
    evals = {tuple(sample_identity(3, i, "eval").values()) for i in sorted(fold_ids[0])[:8]}
    assert not train & evals
    A = [p["attributes_a"] for p in meta]
    B = [p["attributes_b"] for p in meta]
    if protocol == "cfp-fp":
        assert all(abs(a["yaw"]) <= 10 for a in A) and all(55 <= abs(b["yaw"]) <= 75 for b in B)
    if protocol == "agedb":
        genuine = [(a, b) for a, b, p in zip(A, B, meta) if p["same"]]
        assert all(abs(b["age"] - a["age"] - 30) < 1e-6 for a, b in genuine)
    if protocol == "rof":
        assert all(a["occluder"] == "none" for a in A)
        assert {b["occluder"] for b in B} == {"mask", "sunglasses"}
    if protocol == "lowres":
        assert all("resolution" not in a for a in A) and all(b["resolution"] == 8 for b in B)
        # B lost its fine detail: far less high-frequency energy than A
        hf = [np.abs(np.diff(decode_image(blobs[k]).astype(float), axis=1)).mean() for k in (0, 1)]
        assert hf[1] < 0.6 * hf[0]
    if protocol == "bupt":
        assert all(p["group_a"] == p["group_b"] for p in meta)  # impostors within a group
        assert all(line.split("/")[0] in GROUP_NAMES for line in comps)
        counts = np.bincount([p["group_a"] for p in meta if p["same"]], minlength=NUM_GROUPS)
        assert counts.min() == counts.max() == folds * per_fold // NUM_GROUPS


def test_protocols_are_deterministic(tmp_path):
    make_protocol(tmp_path / "a", "lfw", folds=1, pairs_per_fold=4, size=32, seed=9)
    make_protocol(tmp_path / "b", "lfw", folds=1, pairs_per_fold=4, size=32, seed=9)
    assert _sha(tmp_path / "a" / "lfw.bin") == _sha(tmp_path / "b" / "lfw.bin")


def test_style_conditions_are_honoured():
    idc = sample_identity(0, 1)
    for j in range(20):
        s = sample_style(
            0, 1, j, idc, conditions=StyleConditions(yaw_abs=(55, 75), occluder="mask", age=70)
        )
        assert 55 <= abs(s["yaw"]) <= 75 and s["mask"] == 1 and s["glasses"] == 0 and s["age"] == 70


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: make_world_dataset(p, identities=0, per_identity=2), "identities"),
        (lambda p: make_world_dataset(p, identities=2, per_identity=0), "per-identity"),
        (lambda p: make_world_dataset(p, identities=2, per_identity=2, size=16), "size 16"),
        (lambda p: make_world_dataset(p, identities=2, per_identity=2, split="test"), "split"),
        (lambda p: make_protocol(p, "megaface"), "unknown protocol"),
        (lambda p: make_protocol(p, "bupt", pairs_per_fold=8), "pairs-per-fold"),
        (lambda p: StyleConditions(occluder="hat"), "occluder"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, call, match):
    with pytest.raises(InputError, match=match):
        call(tmp_path / "out")
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_cli_reports_errors_and_writes_outputs(tmp_path, capsys):
    from synthface.pipeline.cli import main

    assert (
        main(["world", "make", str(tmp_path / "d"), "--identities", "0", "--per-identity", "2"])
        == 1
    )
    assert "synthface: error: --identities 0" in capsys.readouterr().err
    assert main(["world", "pairs", str(tmp_path / "p"), "--protocol", "nope"]) == 1
    assert "unknown protocol" in capsys.readouterr().err
    assert (
        main(
            [
                "world",
                "make",
                str(tmp_path / "d"),
                "--identities",
                "2",
                "--per-identity",
                "2",
                "--size",
                "32",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["samples"] == 4
    sheet = tmp_path / "sheet.png"
    assert (
        main(["world", "sheet", str(sheet), "--identities", "2", "--styles", "3", "--size", "32"])
        == 0
    )
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.size[1] == 32 * (2 + 3)  # two identities + three map rows


def test_rerun_resumes_missing_shards_and_refuses_another_config(tmp_path):
    from synthface.pipeline.errors import ShardError

    kw = dict(identities=4, per_identity=2, size=32, seed=4, max_samples_per_shard=2)
    first = make_world_dataset(tmp_path, **kw)["splits"]["train"]["shards"]
    assert len(first) == 4  # one identity (2 samples) per shard
    victim = tmp_path / "shards" / first[2]["name"]
    victim.unlink()
    again = make_world_dataset(tmp_path, **kw)["splits"]["train"]["shards"]
    assert again == first and victim.is_file()
    with pytest.raises(ShardError, match="different"):
        make_world_dataset(tmp_path, **{**kw, "seed": 5})
