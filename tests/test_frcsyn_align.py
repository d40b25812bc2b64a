"""FRCSyn scoring with face alignment and several loading threads.

Faces come from the procedural world, rendered unaligned (pose, scale and shift spread)
with their true landmarks; aligning them while scoring must give exactly the scores of
crops aligned beforehand and saved losslessly, and the thread count must not change a bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.pipeline.cli import main
from synthface.pipeline.faces.align import align_face
from synthface.pipeline.faces.aligner import AlignConfig
from synthface.recognition.frcsyn.loading import TreeAlignment
from synthface.recognition.frcsyn.scoring import embed_tree_images

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # insightface -> scikit-image

IDS, PER, SIZE = 4, 3, 128


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trees(root: Path, *, seed: int, no_landmarks: str | None = None, name="bupt") -> dict:
    """``root/raw`` (unaligned faces + sidecar) and ``root/pre`` (the same faces aligned
    beforehand, PNG), both with one genuine and one impostor comparison per image."""
    from synthface.pipeline.world.dataset import render_images

    jobs = [(i, k, None) for i in range(IDS) for k in range(PER)]
    rels, lines = [], []
    for identity, k, image, meta in render_images(jobs, seed=seed, split="eval", size=SIZE):
        rel = f"s{seed}/id{identity}/{k}.png"
        rels.append(rel)
        lmk = np.array(meta["landmarks"], dtype=np.float64)
        crop = image if rel == no_landmarks else align_face(image, lmk)[0]
        for tree, pixels in (("raw", image), ("pre", crop)):
            path = root / tree / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
        if rel != no_landmarks:
            lines.append(f"{rel} " + " ".join(f"{v:.3f}" for v in lmk.reshape(-1)))
    pairs, truth = [], []
    for n, rel in enumerate(rels):
        same = rels[(n // PER) * PER + (n + 1) % PER]
        other = rels[(n + PER) % len(rels)]
        pairs += [f"{rel};{same}", f"{rel};{other}"]
        truth += ["1", "0"]
    for tree in ("raw", "pre"):
        (root / tree / "comparisons").mkdir(parents=True)
        (root / tree / "comparisons" / f"{name}_comparison.txt").write_text("\n".join(pairs))
        (root / tree / "comparisons" / f"{name}_ground_truth.txt").write_text("\n".join(truth))
    (root / "landmarks.txt").write_text("\n".join(lines) + "\n")
    return {"raw": root / "raw", "pre": root / "pre", "rels": rels, "lmk": root / "landmarks.txt"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from synthface.recognition import create_backbone, save_recognizer

    root = tmp_path_factory.mktemp("frcsyn_models")
    for name, seed in (("prop", 0), ("base", 1)):
        torch.manual_seed(seed)
        save_recognizer(
            create_backbone("tiny", input_size=32, embedding_dim=8).eval(), root / name, {}
        )
    return {"prop": root / "prop", "base": root / "base"}


def test_aligned_scoring_equals_scoring_crops_aligned_beforehand(tmp_path, models):
    from synthface.recognition import load_embedder

    t = _trees(tmp_path, seed=0, no_landmarks="s0/id1/2.png")
    emb = load_embedder(models["prop"])
    align = TreeAlignment(AlignConfig(landmarks=str(t["lmk"])))
    aligned = embed_tree_images(t["raw"] / "images", t["rels"], emb, alignment=align, workers=2)
    pre = embed_tree_images(t["pre"] / "images", t["rels"], emb, workers=2)
    assert np.array_equal(aligned, pre)
    unaligned = embed_tree_images(t["raw"] / "images", t["rels"], emb)
    assert not np.allclose(unaligned, pre, atol=1e-3)  # alignment changed what was scored
    # scoring the tree again (the second system) reuses each image's face: counted once
    embed_tree_images(t["raw"] / "images", t["rels"], emb, alignment=align)
    s = align.summary()
    assert s["aligned"] == IDS * PER - 1 and s["skipped_no_face"] == 1
    assert s["scored_unaligned"] == 1 and s["aligned_by"] == "landmarks"


@pytest.mark.parametrize("aligned", [False, True])
def test_worker_count_does_not_change_embeddings(tmp_path, models, aligned):
    from synthface.recognition import load_embedder

    t = _trees(tmp_path, seed=1)
    emb = load_embedder(models["base"])
    cfg = AlignConfig(landmarks=str(t["lmk"]))
    runs = [
        embed_tree_images(
            t["raw"] / "images",
            t["rels"],
            emb,
            batch_size=5,  # 12 images: batches of 5, 5 and 2
            workers=workers,
            alignment=TreeAlignment(cfg) if aligned else None,
        )
        for workers in (1, 3, 8)
    ]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


def _score(args: list[str], capsys) -> dict:
    code = main(["frcsyn", "score", "--subtask", "1.1", "--json", "--no-plots", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_cli_score_align_writes_the_scores_of_prealigned_images(tmp_path, models, capsys):
    ev = _trees(tmp_path / "ev", seed=2, no_landmarks="s2/id0/0.png")
    cal = _trees(tmp_path / "cal", seed=3, name="holdout")
    common = ["--proposed", str(models["prop"]), "--baseline", str(models["base"]),
              "--batch-size", "4"]  # fmt: skip
    aligned = _score(
        [*common, "--eval-tree", str(ev["raw"]), "--calibration", str(cal["raw"]),
         "--out", str(tmp_path / "a"), "--align", "--landmarks", str(ev["lmk"]),
         "--calibration-landmarks", str(cal["lmk"]), "--workers", "3"],
        capsys,
    )  # fmt: skip
    pre = _score(
        [*common, "--eval-tree", str(ev["pre"]), "--calibration", str(cal["pre"]),
         "--out", str(tmp_path / "p"), "--workers", "1"],
        capsys,
    )  # fmt: skip
    for system in ("proposed", "baseline"):
        a = (tmp_path / "a" / "scores" / "bupt" / f"{system}.txt").read_bytes()
        assert a == (tmp_path / "p" / "scores" / "bupt" / f"{system}.txt").read_bytes()
        assert aligned["thresholds"][system] == {
            **pre["thresholds"][system],
            "source": str(cal["raw"]),
        }
    record = aligned["alignment"]
    assert record["eval_tree"]["aligned"] == IDS * PER - 1
    assert record["eval_tree"]["scored_unaligned"] == 1
    assert record["calibration"]["aligned"] == IDS * PER
    assert "alignment" not in pre


def test_cli_alignment_option_errors_are_one_line(tmp_path, models, capsys):
    t = _trees(tmp_path, seed=4)
    base = ["frcsyn", "score", "--subtask", "1.1", "--eval-tree", str(t["raw"]),
            "--calibration", str(t["pre"]), "--proposed", str(models["prop"]),
            "--baseline", str(models["base"]), "--out", str(tmp_path / "o")]  # fmt: skip
    cases = [
        (["--calibration-landmarks", str(t["lmk"])], "--calibration-landmarks only applies"),
        (["--landmarks", str(t["lmk"])], "--detector and --landmarks only apply with --align"),
        (["--align"], "give exactly one of a detector model or a landmarks file"),
        (["--align", "--landmarks", str(tmp_path / "none.txt")], "no such landmarks file"),
        (["--workers", "0"], "--workers 0: must be >= 1"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_an_unreadable_image_names_itself_with_several_workers(tmp_path, models):
    from synthface.pipeline.errors import InputError
    from synthface.recognition import load_embedder

    t = _trees(tmp_path, seed=5)
    (t["raw"] / "images" / t["rels"][7]).write_bytes(b"not an image")
    emb = load_embedder(models["prop"])
    with pytest.raises(InputError, match=rf"{t['rels'][7]}: cannot decode image"):
        embed_tree_images(t["raw"] / "images", t["rels"], emb, batch_size=4, workers=3)
