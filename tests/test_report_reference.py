"""Real faces next to generated ones in the QC report (``report.reference``) and the demo."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthface.pipeline.errors import InputError
from synthface.pipeline.report import write_report
from synthface.pipeline.shards import (
    Sample,
    begin_dataset,
    encode_image,
    finalize_dataset,
    iter_samples,
    split_manifest,
    write_shard,
)
from tests.flows_helpers import make_tiny_models, tiny_config

GEN_SIZE, REAL_SIZE = 12, 20
TILE = GEN_SIZE * 6 + 2  # 12 px enlarged to 72 px (>= 64), 2 px gap
RULE = 9  # band between the real and the generated block: 72 // 8


def _dataset(root: Path, identities: int, per_identity: int, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    begin_dataset(root, config={"seed": seed})
    samples = [
        Sample(i, j, encode_image(rng.integers(0, 255, (size, size, 3), np.uint8), "png"), "png")
        for i in range(identities)
        for j in range(per_identity)
    ]
    write_shard(root, 0, samples)
    finalize_dataset(root, config={"seed": seed})
    return root


def _ids(text: str, prefix: str) -> list[int]:
    found = re.search(prefix + r"([0-9, ]+)", text)
    assert found, text
    return [int(x) for x in found.group(1).strip(" ,").split(",")]


def test_reference_rows_are_the_real_images_at_the_generated_size(tmp_path):
    gen = _dataset(tmp_path / "gen", 5, 3, GEN_SIZE, seed=1)
    ref = _dataset(tmp_path / "ref", 6, 4, REAL_SIZE, seed=2)
    plain = write_report(gen, contact_identities=3, contact_samples=2)
    plain_sheet = np.asarray(Image.open(plain["contact_sheet"]))
    plain_md = plain["markdown"].read_text()

    paths = write_report(gen, contact_identities=3, contact_samples=2, reference=ref)
    first = {k: p.read_bytes() for k, p in paths.items()}
    sheet = np.asarray(Image.open(paths["contact_sheet"]).convert("RGB"))
    assert plain_sheet.shape[0] == 3 * TILE
    assert sheet.shape[0] == 3 * TILE + RULE + 3 * TILE  # 3 real rows over 3 generated ones
    label_w = sheet.shape[1] - 2 * TILE  # 2 columns, as many as the generated rows have

    md = paths["markdown"].read_text()
    assert str(ref) in md and "labelled `real N`" in md
    assert f"split train, config hash {split_manifest(ref)['config_hash'][:12]}" in md
    real = _ids(md, "real identities ")
    assert len(real) == 3 and set(real) <= set(range(6))
    # the generated rows are the ones picked without a reference
    assert _ids(md, "Generated rows: identities ") == _ids(plain_md, "Rows: identities ")

    images = {}
    for s in iter_samples(ref):
        images.setdefault(s["label"], []).append(s["image"])
    for row, identity in enumerate(sorted(real)):
        y = row * TILE
        assert (sheet[y : y + TILE - 2, :label_w] < 128).any(), "real row label missing"
        for col in range(2):
            real_img = Image.fromarray(images[identity][col])
            small = np.asarray(real_img.resize((GEN_SIZE, GEN_SIZE), Image.Resampling.LANCZOS))
            expected = np.repeat(np.repeat(small, 6, 0), 6, 1)
            x = label_w + col * TILE
            np.testing.assert_array_equal(sheet[y : y + TILE - 2, x : x + TILE - 2], expected)
    band = sheet[3 * TILE : 3 * TILE + RULE]
    assert (band.min(axis=(1, 2)) < 200).any(), "no rule between the blocks"

    write_report(gen, contact_identities=3, contact_samples=2, reference=ref)
    assert {k: p.read_bytes() for k, p in paths.items()} == first


def test_reference_with_fewer_identities_than_rows(tmp_path):
    gen = _dataset(tmp_path / "gen", 4, 2, GEN_SIZE, seed=3)
    ref = _dataset(tmp_path / "ref", 1, 1, GEN_SIZE, seed=4)
    paths = write_report(gen, contact_identities=4, contact_samples=2, reference=ref)
    sheet = Image.open(paths["contact_sheet"])
    assert sheet.size[1] == 1 * TILE + RULE + 4 * TILE
    assert _ids(paths["markdown"].read_text(), "real identities ") == [0]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    return root


def test_bad_reference_fails_in_planning_with_one_line(models, tmp_path):
    from synthface.generators.dataset import prepare_generation

    out = tmp_path / "ds"
    missing = tmp_path / "no-world"
    with pytest.raises(InputError) as err:
        prepare_generation(tiny_config(models, out, report={"reference": str(missing)}))
    text = str(err.value)
    assert text.startswith("report.reference: ") and str(missing) in text and "\n" not in text
    ref = _dataset(tmp_path / "ref", 2, 1, GEN_SIZE, seed=5)
    with pytest.raises(InputError, match=r"^report\.reference: .*ref.*no split 'eval'"):
        prepare_generation(
            tiny_config(models, out, report={"reference": str(ref), "reference_split": "eval"})
        )
    with pytest.raises(InputError, match=r"output\.dir .* is inside report\.reference"):
        prepare_generation(tiny_config(models, ref / "gen", report={"reference": str(ref)}))
    (ref / "shards" / "train-000000.tar").unlink()
    with pytest.raises(InputError, match=r"^report\.reference: .*train-000000\.tar: shard missing"):
        prepare_generation(tiny_config(models, out, report={"reference": str(ref)}))
    assert not out.exists() and not (ref / "gen").exists()  # nothing claimed or generated


def test_demo_report_shows_real_world_heads(tmp_path):
    """The demo's own config (shipped models, its world as the reference), shrunk to 2 x 2."""
    from synthface.flows.demo import IMAGE_SIZE, SHIPPED_MODELS_DIR, WORLD_DIR, generate_config
    from synthface.generators.dataset import GenerateConfig, generate_dataset
    from synthface.pipeline.paths import DATA_PACKAGE, package_dir
    from synthface.pipeline.report import MIN_TILE
    from synthface.pipeline.world import make_world_dataset

    world = tmp_path / WORLD_DIR
    make_world_dataset(world, identities=3, per_identity=2, size=IMAGE_SIZE, seed=0)
    cfg = generate_config(tmp_path, package_dir(DATA_PACKAGE) / SHIPPED_MODELS_DIR)
    assert Path(cfg.report.reference) == world
    data = cfg.model_dump(mode="json")
    data["identities"].update(count=2, samples_per_identity=2)
    data["generator"]["steps"] = 2
    data["output"]["dir"] = str(tmp_path / "dataset")
    data["report"].update(contact_identities=2, contact_samples=2)
    summary = generate_dataset(GenerateConfig.model_validate(data))

    md = Path(summary["report"]["markdown"]).read_text()
    assert f"of the dataset `{world}`" in md
    assert len(_ids(md, "real identities ")) == 2
    sheet = np.asarray(Image.open(summary["report"]["contact_sheet"]).convert("L"))
    tile = MIN_TILE + 2  # world and generated images (32 or 64 px) shown at 64 px, +2 gap
    assert sheet.shape[0] == 2 * tile + 8 + 2 * tile  # 2 real rows, rule, 2 generated rows
    label_w = sheet.shape[1] - 2 * tile
    real_block = sheet[: 2 * tile - 2, label_w:]
    assert real_block.std() > 10, "real block is blank"
