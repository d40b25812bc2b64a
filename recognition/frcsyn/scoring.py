"""Score FRCSyn comparison trees with a recognizer and write a run directory.

A *tree* is ``DIR/images/<relpath>`` plus ``DIR/comparisons/{dataset}_comparison.txt``
(and ``_ground_truth.txt`` for local evaluation). A *run* holds, per system
(``proposed``, ``baseline``), the threshold chosen on a calibration tree built from
training-side data, and one ``score,decision`` file per dataset, already in submission
format::

    RUN/scores/{dataset}/{system}.txt   one "score,decision" line per comparison, in order
    RUN/thresholds.json                 ThresholdRecord per system
    RUN/metrics.json, report.md, *.png  when the evaluation tree has ground truth
    RUN/run.json                        written last: the run is complete

Scores are cosine similarities of flip-summed, L2-normalised embeddings. Each decision is
computed from the score *as written* (8 decimals), so a reader re-deriving decisions
from the file with the recorded threshold always agrees.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError
from synthface.pipeline.parallel import ordered_map
from synthface.pipeline.progress import progress_bar
from synthface.recognition.frcsyn.comparisons import ComparisonSet, list_datasets, read_comparisons
from synthface.recognition.frcsyn.loading import TreeAlignment, load_tree_image
from synthface.recognition.frcsyn.rules import SYSTEMS, SubTask
from synthface.recognition.frcsyn.threshold import choose_threshold

__all__ = [
    "check_no_image_overlap",
    "embed_tree_images",
    "format_submission",
    "parse_submission",
    "read_run",
    "score_pairs",
    "score_run",
]

RUN_SCHEMA = 1


def format_submission(scores: np.ndarray, threshold: float) -> tuple[str, np.ndarray]:
    """``score,decision`` lines (score with 8 decimals) and the decisions they contain."""
    written = [f"{s:.8f}" for s in np.asarray(scores, dtype=np.float64)]
    decisions = np.array([float(w) >= threshold for w in written], dtype=np.int8)
    text = "".join(f"{w},{d}\n" for w, d in zip(written, decisions))
    return text, decisions


def parse_submission(text: str, source: str = "") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parse ``score,decision`` lines -> (scores, decisions, problems); never raises."""
    scores, decisions, problems = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.strip().split(",")
        if len(parts) != 2:
            problems.append(f"{source}:{lineno}: expected 'score,decision', got {line!r}")
            scores.append(np.nan)
            decisions.append(-1)
            continue
        try:
            s = float(parts[0])
        except ValueError:
            problems.append(f"{source}:{lineno}: score {parts[0]!r} is not a number")
            s = np.nan
        else:
            if not np.isfinite(s):
                problems.append(f"{source}:{lineno}: score is {parts[0]} (must be finite)")
        d = parts[1].strip()
        if d not in ("0", "1"):
            problems.append(f"{source}:{lineno}: decision {d!r} must be 1 or 0")
        scores.append(s)
        decisions.append(int(d) if d in ("0", "1") else -1)
    return np.array(scores, dtype=np.float64), np.array(decisions, dtype=np.int8), problems


def embed_tree_images(
    images_dir,
    relpaths: Sequence[str],
    embedder,
    *,
    batch_size: int = 64,
    workers: int = 4,
    alignment: TreeAlignment | None = None,
) -> np.ndarray:
    """Flip-summed, L2-normalised embeddings of ``images_dir/relpath``, in ``relpaths`` order.

    Images are read (and, with ``alignment``, aligned) by ``workers`` threads while the
    embedder works on the previous batch; the order, hence every score, does not depend
    on the worker count.
    """
    images_dir = Path(images_dir)
    size = tuple(embedder.input_size)
    out = np.empty((len(relpaths), embedder.dim), dtype=np.float32)

    def load(rel: str) -> np.ndarray:
        return load_tree_image(images_dir, rel, size, alignment)

    ahead = max(2 * batch_size, 4 * workers)
    with (
        contextlib.closing(ordered_map(load, relpaths, workers, ahead=ahead)) as images,
        progress_bar(len(relpaths), desc=f"scoring {images_dir.parent.name}") as bar,
    ):
        for lo in range(0, len(relpaths), batch_size):
            batch = np.stack(list(itertools.islice(images, batch_size)))
            out[lo : lo + len(batch)] = embedder.embed(batch, flip=True)
            bar.update(len(batch))
    return out


def score_pairs(cset: ComparisonSet, index: Mapping[str, int], feats: np.ndarray) -> np.ndarray:
    a = feats[[index[p] for p in cset.first]].astype(np.float64)
    b = feats[[index[p] for p in cset.second]].astype(np.float64)
    return np.einsum("ij,ij->i", a, b)


def _score_tree(tree, datasets, embed_fn) -> dict[str, tuple[ComparisonSet, np.ndarray]]:
    """Embed each distinct image of the tree once, then score every dataset's comparisons."""
    tree = Path(tree)
    sets = {d: read_comparisons(tree / "comparisons", d) for d in datasets}
    paths = list(dict.fromkeys(p for s in sets.values() for p in s.images()))
    index = {p: i for i, p in enumerate(paths)}
    feats = embed_fn(tree / "images", paths)
    return {d: (s, score_pairs(s, index, feats)) for d, s in sets.items()}


def _image_digests(tree: Path, datasets: Sequence[str]) -> dict[str, str]:
    """sha256 of every image the tree's comparisons use -> its relpath."""
    out = {}
    for d in datasets:
        for rel in read_comparisons(tree / "comparisons", d).images():
            path = tree / "images" / rel
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as exc:
                raise InputError(f"{path}: cannot read image ({exc.strerror or exc})") from None
            out.setdefault(digest, rel)
    return out


def check_no_image_overlap(eval_tree, eval_sets, calibration_tree, cal_sets) -> None:
    """Refuse a calibration tree that shares any image (by content) with the evaluation tree."""
    ev = _image_digests(Path(eval_tree), eval_sets)
    cal = _image_digests(Path(calibration_tree), cal_sets)
    shared = [rel for digest, rel in cal.items() if digest in ev]
    if shared:
        raise InputError(
            f"{calibration_tree}: {len(shared)} calibration images are identical to evaluation "
            f"images (first: {shared[0]}); thresholds must come from training-side data only"
        )


def score_run(
    subtask: SubTask,
    eval_tree,
    calibration_tree,
    systems: Mapping[str, Callable[[Path, list[str]], np.ndarray]],
    out_dir,
    *,
    datasets: Sequence[str] | None = None,
    method: str = "min_fnmr_fmr",
    target_fmr: float = 0.01,
    models: Mapping[str, str] | None = None,
    plots: bool = True,
    group_map=None,
    alignment: Callable[[], Mapping] | None = None,
) -> dict:
    """Score both systems, choose their thresholds on the calibration tree, write the run.

    ``systems`` maps ``proposed``/``baseline`` to ``embed_fn(images_dir, relpaths)``
    returning normalised embeddings (see :func:`embed_tree_images`). ``group_map``: a
    group-map file or :class:`~synthface.recognition.frcsyn.groups.GroupMap` giving each
    BUPT subject's demographic group (default: the first path component).
    ``alignment``: called once scoring is done; what it returns (how each tree's faces
    were aligned, counts) is recorded in ``run.json`` as ``alignment``.
    """
    from synthface.recognition.frcsyn.groups import GroupMap
    from synthface.recognition.frcsyn.report import write_run_report

    if group_map is not None and not isinstance(group_map, GroupMap):
        group_map = GroupMap.load(group_map)

    eval_tree, calibration_tree, out = Path(eval_tree), Path(calibration_tree), Path(out_dir)
    missing = [s for s in SYSTEMS if s not in systems]
    if missing:
        raise InputError(f"FRCSyn needs both systems; missing {', '.join(missing)}")
    datasets = list(datasets or subtask.datasets)
    avail = list_datasets(eval_tree / "comparisons")
    absent = [d for d in datasets if d not in avail]
    if absent:
        raise InputError(
            f"{eval_tree / 'comparisons'}: no comparison file for {', '.join(absent)} "
            f"(found: {', '.join(avail) or 'none'})"
        )
    cal_sets = list_datasets(calibration_tree / "comparisons")
    if not cal_sets:
        raise InputError(f"{calibration_tree / 'comparisons'}: no calibration comparison files")
    # The threshold must never see evaluation data. Comparison files alone prove little
    # (two trees can share relpaths with different images), so compare image *content*.
    if eval_tree.resolve() == calibration_tree.resolve():
        raise InputError(
            "calibration tree is the evaluation tree; thresholds must come from training-side data"
        )
    check_no_image_overlap(eval_tree, datasets, calibration_tree, cal_sets)

    results, thresholds = {}, {}
    for system in SYSTEMS:
        cal = _score_tree(calibration_tree, cal_sets, systems[system])
        for d, (s, _) in cal.items():
            if s.labels is None:
                raise InputError(f"{s.path}: calibration needs {d}_ground_truth.txt")
        labels = np.concatenate([s.labels for s, _ in cal.values()])
        scores = np.concatenate([sc for _, sc in cal.values()])
        rec = choose_threshold(
            labels,
            scores,
            method=method,
            target_fmr=target_fmr,
            source=str(calibration_tree),
            source_sha256={d: s.sha256 for d, (s, _) in cal.items()},
        )
        thresholds[system] = rec
        results[system] = _score_tree(eval_tree, datasets, systems[system])

    for d in datasets:
        for system in SYSTEMS:
            _, scores = results[system][d]
            text, _ = format_submission(scores, thresholds[system].value)
            atomic_write_bytes(out / "scores" / d / f"{system}.txt", text.encode())
    _write_json(out / "thresholds.json", {s: r.to_dict() for s, r in thresholds.items()})
    metrics = write_run_report(out, subtask, results, thresholds, plots=plots, group_map=group_map)
    run = {
        "schema": RUN_SCHEMA,
        "edition": subtask.edition,
        "subtask": subtask.id,
        "rule": subtask.rule,
        "datasets": datasets,
        "comparisons": {d: results["proposed"][d][0].sha256 for d in datasets},
        "num_comparisons": {d: len(results["proposed"][d][0]) for d in datasets},
        "eval_tree": str(eval_tree),
        "calibration_tree": str(calibration_tree),
        "models": dict(models or {}),
        "thresholds": {s: r.to_dict() for s, r in thresholds.items()},
        "score": "cosine similarity of flip-summed L2-normalised embeddings; decision = score >= threshold",
        "metrics": metrics,
    }
    if alignment is not None:
        run["alignment"] = dict(alignment())
    _write_json(out / "run.json", run)
    return run


def _write_json(path: Path, data) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_run(run_dir) -> dict:
    path = Path(run_dir) / "run.json"
    try:
        run = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing (is this a complete 'frcsyn score' run?)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable run record ({exc})") from None
    for key in ("subtask", "edition", "datasets", "thresholds"):
        if key not in run:
            raise InputError(f"{path}: run record lacks {key!r}")
    return run
