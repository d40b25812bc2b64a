"""Anchors inside the training identities' region, the novelty guard, and QC independence."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from synthface.generators.dataset import checkpoint_sha256, generate_dataset, prepare_generation
from synthface.generators.dataset.checks import QC_INFLATED
from synthface.generators.region import (
    REGION_FILE,
    load_identity_region,
    novelty_guard,
    region_from_centroids,
    save_identity_region,
)
from synthface.pipeline.errors import ConfigError
from tests.flows_helpers import DIM, SIZE, make_tiny_models, tiny_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    return root


def clustered(n: int, dim: int, spread: float, seed: int = 0) -> np.ndarray:
    """n unit vectors in a cone around one direction (a small recognizer's narrow cone)."""
    rng = np.random.default_rng(seed)
    axis = rng.standard_normal(dim)
    x = axis / np.linalg.norm(axis) + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def region_ckpt(models, tmp_path):
    """A copy of the tiny generator whose checkpoint stores a region of 40 identities."""
    ckpt = tmp_path / "generator"
    shutil.copytree(models / "generator", ckpt)
    save_identity_region(ckpt, region_from_centroids(clustered(40, DIM, 0.9), {"note": "test"}))
    return ckpt


def test_novelty_guard_keeps_the_margin_and_refuses_an_impossible_one():
    cent = clustered(60, 16, 0.8, seed=1)
    anchors = clustered(30, 16, 0.8, seed=2)
    assert (anchors @ cent.T).max() > 0.8  # some start too close
    guarded, moved = novelty_guard(anchors, cent, 0.8)
    assert moved > 0 and (guarded @ cent.T).max() <= 0.8 + 1e-5
    assert np.allclose(np.linalg.norm(guarded, axis=1), 1, atol=1e-5)
    # the six poles of R^3: every unit vector is within cos 1/sqrt(3) of one of them
    poles = np.concatenate([np.eye(3), -np.eye(3)])
    with pytest.raises(ConfigError, match="too crowded"):
        novelty_guard(clustered(5, 3, 1.0), poles, 0.5)


def test_region_round_trips_without_pickle_to_stable_bytes(tmp_path):
    region = region_from_centroids(clustered(20, 8, 0.5), {"encoder": "x"})
    save_identity_region(tmp_path, region)
    back = load_identity_region(tmp_path)
    assert back.num_identities == 20 and back.meta == {"encoder": "x"}
    assert np.allclose(back.mean, region.mean, atol=1e-6)
    assert np.abs(back.centroids - region.centroids).max() < 1e-3
    # the same region saves to the same bytes (safetensors alone orders the metadata keys
    # differently from one save to the next)
    first = (tmp_path / REGION_FILE).read_bytes()
    for _ in range(20):
        save_identity_region(tmp_path, region)
        assert (tmp_path / REGION_FILE).read_bytes() == first
    (tmp_path / REGION_FILE).write_bytes(b"not safetensors")
    with pytest.raises(Exception, match="not a readable identity region"):
        load_identity_region(tmp_path)


def test_generation_packs_anchors_in_the_region_with_the_margin(models, region_ckpt, tmp_path):
    region = load_identity_region(region_ckpt)
    cfg = tiny_config(models, tmp_path / "ds", identities={"count": 12})
    cfg.generator.checkpoint = str(region_ckpt)
    prepared = prepare_generation(cfg)
    anchors = np.load(tmp_path / "ds" / "plan" / "anchors.npy")
    mean = region.mean / np.linalg.norm(region.mean)
    sphere_cfg = tiny_config(models, tmp_path / "sphere", identities={"count": 12})
    sphere_cfg.generator.checkpoint = str(region_ckpt)
    sphere_cfg.identities.anchor_region = "sphere"
    prepare_generation(sphere_cfg)
    sphere = np.load(tmp_path / "sphere" / "plan" / "anchors.npy")
    assert (anchors @ mean).mean() > 0.7 > 0.3 > (sphere @ mean).mean()
    assert (anchors @ region.centroids.T).max() <= cfg.identities.novelty_max_cos + 1e-5
    n = prepared.novelty
    assert n["anchor_region"] == "data" and n["guard"] is True
    assert isinstance(n["anchors_moved"], int)
    assert prepare_generation(cfg).novelty == n  # a resumed plan reports the same
    assert n["anchor_to_nearest_training_cos"]["max"] <= 0.8 + 1e-4
    assert prepared.dataset_config["identities"]["anchor_region"] == "data"
    # the region is part of the checkpoint's identity (it changes the anchors)
    assert checkpoint_sha256(region_ckpt) != checkpoint_sha256(models / "generator")


def test_checkpoint_without_region_falls_back_to_the_sphere_with_a_warning(
    models, tmp_path, caplog
):
    cfg = tiny_config(models, tmp_path / "ds")
    with caplog.at_level(logging.WARNING):
        prepared = prepare_generation(cfg)
    assert any("whole sphere" in w for w in prepared.warnings)
    assert "stores no identity_region" in caplog.text
    assert "anchor_region" not in prepared.dataset_config["identities"]  # hashes as before
    with pytest.raises(ConfigError, match=r"identities\.anchor_region: data"):
        prepare_generation(
            tiny_config(models, tmp_path / "ds2", identities={"anchor_region": "data"})
        )


def test_qc_with_the_conditioning_encoder_warns_that_scores_are_inflated(
    models, tmp_path, capsys, caplog
):
    import torch

    from synthface.pipeline.cli import main
    from synthface.recognition import create_backbone, save_recognizer

    gen, rec = make_tiny_models(models)
    # default QC recognizer = the checkpoint's encoder
    summary = generate_dataset(tiny_config(models, tmp_path / "own"))
    assert QC_INFLATED in summary["warnings"]
    # a copy of the encoder under another name is still the encoder
    copy = tmp_path / "copy"
    shutil.copytree(rec, copy)
    summary = generate_dataset(
        tiny_config(models, tmp_path / "copy-qc", qc={"recognizer": str(copy)})
    )
    assert QC_INFLATED in summary["warnings"]
    # an independent recognizer (other weights): no warning
    torch.manual_seed(7)
    judge = create_backbone("tiny", input_size=SIZE, embedding_dim=DIM, widths=(8, 8, 16, 16))
    save_recognizer(judge.eval(), tmp_path / "judge", {"note": "another seed"})
    summary = generate_dataset(
        tiny_config(models, tmp_path / "judged", qc={"recognizer": str(tmp_path / "judge")})
    )
    assert not any("inflated" in w for w in summary["warnings"])
    # the CLI warns through logging (stderr when nothing else is configured; caplog here)
    args = ["generator", "sample", str(gen), "--identities", "2", "--per-identity", "2"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="synthface"):
        assert main([*args, "--out", str(tmp_path / "cli"), "--no-report", "--json"]) == 0
    assert "scores are inflated" in caplog.text
    assert QC_INFLATED in json.loads(capsys.readouterr().out)["warnings"]


def test_cli_region_adds_the_statistics_to_a_checkpoint(models, tmp_path, capsys):
    from synthface.pipeline.cli import main
    from synthface.pipeline.world import make_world_dataset

    ckpt = tmp_path / "generator"
    shutil.copytree(models / "generator", ckpt)
    data = tmp_path / "world"
    make_world_dataset(data, identities=5, per_identity=2, size=32)
    assert main(["generator", "region", str(ckpt), "--data", str(data), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_identities"] == 5 and info["num_images"] == 10
    assert load_identity_region(ckpt).dim == DIM
