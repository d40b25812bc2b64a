"""IJB-B / IJB-C style 1:1 template verification (TAR@FAR), as insightface's ``eval_ijbc.py``.

Inputs are the standard meta files::

    <name>_face_tid_mid.txt        image_name template_id media_id      (one per face image)
    <name>_template_pair_label.txt template_1 template_2 label          (one per comparison)
    <name>_name_5pts_score.txt     image_name x1 y1 ... x5 y5 faceness  (same image order)

and the ``loose_crop/`` images. The steps (see ``reference/evaluation.md`` section 2.2):

1. align each loose crop from its 5 points to the ArcFace 112x112 template
   (``insightface.utils.face_align.norm_crop``), embed it and its flip;
2. image feature = raw(original) + raw(flip) (or raw(original) without flip test); it is
   L2-normalised unless ``norm_score`` (then its norm acts as a quality weight), and
   multiplied by the faceness score when ``detector_score``;
3. **media pooling**: inside a template, average the features of each media item
   (frames of one video, or one still), sum the media averages, L2-normalise;
4. score = dot product of the two template features;
5. TAR at FAR 1e-6 .. 1e-1 read at the nearest ROC point (:func:`roc.tar_at_far`).

Pooling is done with sorted segment sums, not a Python loop over 12K+ templates.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.limits import open_image
from synthface.recognition.evaluation import roc

__all__ = [
    "IjbMeta",
    "IjbResult",
    "align_faces",
    "evaluate_ijb_scores",
    "find_meta_files",
    "image_features",
    "pool_templates",
    "read_face_tid_mid",
    "read_landmarks",
    "read_meta",
    "read_template_pairs",
    "template_scores",
]


# ---------------------------------------------------------------- meta files


def _read_table(path: Path, min_cols: int, what: str) -> list[list[str]]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < min_cols:
            raise InputError(
                f"{path}:{lineno}: expected at least {min_cols} columns for {what}, got {len(parts)}"
            )
        rows.append(parts)
    if not rows:
        raise InputError(f"{path}: empty {what} file")
    return rows


def _ints(path, rows, col, what) -> np.ndarray:
    try:
        return np.array([int(r[col]) for r in rows], dtype=np.int64)
    except ValueError:
        bad = next(i for i, r in enumerate(rows) if not r[col].lstrip("-").isdigit())
        raise InputError(
            f"{path}: row {bad + 1}: {what} {rows[bad][col]!r} is not an integer"
        ) from None


def read_face_tid_mid(path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``*_face_tid_mid.txt`` -> (image names, template ids, media ids)."""
    rows = _read_table(path, 3, "face/template/media list")
    return (
        [r[0] for r in rows],
        _ints(path, rows, 1, "template id"),
        _ints(path, rows, 2, "media id"),
    )


def read_template_pairs(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``*_template_pair_label.txt`` -> (template 1, template 2, label 0/1)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read template pairs ({exc.strerror or exc})") from None
    try:  # 8M lines: one C-level parse instead of a Python loop
        with warnings.catch_warnings():
            # numpy warns (DeprecationWarning) and stops early on a bad token: make it raise
            warnings.simplefilter("error", DeprecationWarning)
            arr = np.fromstring(raw.decode("ascii", "replace"), dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        rows = _read_table(path, 3, "template pairs")
        for col, what in ((0, "template 1"), (1, "template 2"), (2, "label")):
            _ints(path, rows, col, what)
        raise InputError(f"{path}: template pairs must be integers") from None
    if arr.size % 3:
        _read_table(path, 3, "template pairs")  # names the short line
    if arr.size == 0 or arr.size % 3:
        raise InputError(
            f"{path}: expected 3 integers per line (t1 t2 label), got {arr.size} values"
        )
    arr = arr.reshape(-1, 3)
    bad = np.flatnonzero((arr[:, 2] != 0) & (arr[:, 2] != 1))
    if bad.size:
        raise InputError(f"{path}: line {bad[0] + 1}: label {arr[bad[0], 2]} is not 0 or 1")
    return arr[:, 0], arr[:, 1], arr[:, 2].astype(bool)


def read_landmarks(path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``*_name_5pts_score.txt`` -> (image names, landmarks N x 5 x 2, faceness N)."""
    rows = _read_table(path, 12, "5-point landmarks")
    try:
        vals = np.array([[float(v) for v in r[1:12]] for r in rows], dtype=np.float32)
    except ValueError:
        raise InputError(f"{path}: landmark and score columns must be numbers") from None
    return [r[0] for r in rows], vals[:, :10].reshape(-1, 5, 2), vals[:, 10]


@dataclass
class IjbMeta:
    names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray | None
    faceness: np.ndarray | None
    t1: np.ndarray
    t2: np.ndarray
    labels: np.ndarray


def find_meta_files(meta_dir, target: str) -> dict[str, Path]:
    """Locate ``<target>_*.txt`` in ``meta_dir`` or ``meta_dir/meta`` (insightface layout)."""
    meta_dir = Path(meta_dir)
    stem = target.lower()
    out = {}
    for key, suffix in (
        ("face_tid_mid", "face_tid_mid.txt"),
        ("pairs", "template_pair_label.txt"),
        ("landmarks", "name_5pts_score.txt"),
    ):
        for cand in (meta_dir / f"{stem}_{suffix}", meta_dir / "meta" / f"{stem}_{suffix}"):
            if cand.is_file():
                out[key] = cand
                break
    for key in ("face_tid_mid", "pairs"):
        if key not in out:
            raise InputError(
                f"{meta_dir}: no {stem}_{key if key != 'pairs' else 'template_pair_label'}.txt (also looked in meta/)"
            )
    return out


def read_meta(meta_dir, target: str, *, need_landmarks: bool = False) -> IjbMeta:
    files = find_meta_files(meta_dir, target)
    names, templates, medias = read_face_tid_mid(files["face_tid_mid"])
    landmarks = faceness = None
    if "landmarks" in files:
        lnames, landmarks, faceness = read_landmarks(files["landmarks"])
        if len(lnames) != len(names):
            raise InputError(
                f"{files['landmarks']}: {len(lnames)} faces but {files['face_tid_mid'].name} "
                f"lists {len(names)}"
            )
        mismatch = next((i for i, (a, b) in enumerate(zip(names, lnames)) if a != b), None)
        if mismatch is not None:
            raise InputError(
                f"{files['landmarks']}: line {mismatch + 1} is {lnames[mismatch]!r} but "
                f"{files['face_tid_mid'].name} line {mismatch + 1} is {names[mismatch]!r} "
                "(both files must list faces in the same order)"
            )
    elif need_landmarks:
        raise InputError(f"{meta_dir}: no {target.lower()}_name_5pts_score.txt for alignment")
    t1, t2, labels = read_template_pairs(files["pairs"])
    return IjbMeta(names, templates, medias, landmarks, faceness, t1, t2, labels)


# ---------------------------------------------------------------- alignment


def align_faces(
    image_dir, names, landmarks, *, size: int = 112, batch: int = 256
) -> Iterator[np.ndarray]:
    """Yield batches of aligned RGB uint8 crops (B x size x size x 3), in ``names`` order.

    ``norm_crop`` estimates the similarity transform from the 5 points to the ArcFace
    template and warps with a black border; channel order passes through unchanged,
    so RGB in gives RGB out.
    """
    from insightface.utils.face_align import norm_crop

    image_dir = Path(image_dir)
    out = []
    for name, lmk in zip(names, landmarks):
        path = image_dir / name
        img = np.asarray(open_image(path))
        with warnings.catch_warnings():  # skimage deprecation inside insightface, not ours
            warnings.simplefilter("ignore", FutureWarning)
            out.append(norm_crop(img, np.asarray(lmk, dtype=np.float32), image_size=size))
        if len(out) == batch:
            yield np.stack(out)
            out = []
    if out:
        yield np.stack(out)


# ---------------------------------------------------------------- features and pooling


def image_features(
    raw: np.ndarray,
    raw_flipped: np.ndarray | None = None,
    faceness: np.ndarray | None = None,
    *,
    norm_score: bool = False,
    detector_score: bool = False,
) -> np.ndarray:
    """Per-image features entering template pooling (insightface's F1 / N1 / D1 modes)."""
    feats = np.asarray(raw, dtype=np.float32)
    if raw_flipped is not None:
        feats = feats + np.asarray(raw_flipped, dtype=np.float32)
    if not norm_score:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if detector_score:
        if faceness is None:
            raise InputError("detector-score weighting needs faceness scores (the 5pts file)")
        feats = feats * np.asarray(faceness, dtype=np.float32)[:, None]
    return feats


def _segment_sum(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sums = np.add.reduceat(values[order], starts, axis=0)
    out = np.zeros((n_groups, values.shape[1]), dtype=values.dtype)
    out[g[starts]] = sums
    return out


def pool_templates(
    feats: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Media pooling -> (sorted unique template ids, L2-normalised template features)."""
    feats = np.asarray(feats, dtype=np.float32)
    templates = np.asarray(templates)
    medias = np.asarray(medias)
    if not (feats.shape[0] == templates.size == medias.size):
        raise InputError(
            f"{feats.shape[0]} features for {templates.size} template ids and {medias.size} media ids"
        )
    uniq_t, t_idx = np.unique(templates, return_inverse=True)
    # one group per (template, media) pair
    pair_keys = np.stack([t_idx, np.asarray(medias, dtype=np.int64)], axis=1)
    uniq_pairs, m_idx, m_count = np.unique(
        pair_keys, axis=0, return_inverse=True, return_counts=True
    )
    m_idx = m_idx.ravel()
    media_mean = _segment_sum(feats, m_idx, len(uniq_pairs)) / m_count[:, None].astype(np.float32)
    template_feat = _segment_sum(media_mean, uniq_pairs[:, 0], len(uniq_t))
    norms = np.linalg.norm(template_feat, axis=1, keepdims=True)
    return uniq_t, template_feat / np.maximum(norms, 1e-12)


def template_scores(
    template_ids: np.ndarray,
    template_feats: np.ndarray,
    t1: np.ndarray,
    t2: np.ndarray,
    *,
    batch: int = 100_000,
) -> np.ndarray:
    """Cosine score of each template pair; raises naming the first unknown template."""
    pos1 = np.searchsorted(template_ids, t1)
    pos2 = np.searchsorted(template_ids, t2)
    for pos, t in ((pos1, t1), (pos2, t2)):
        pos_c = np.minimum(pos, len(template_ids) - 1)
        missing = template_ids[pos_c] != t
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise InputError(f"pair {i + 1} names template {t[i]}, which has no face images")
    out = np.empty(len(t1), dtype=np.float64)
    for lo in range(0, len(t1), batch):
        a = template_feats[pos1[lo : lo + batch]]
        b = template_feats[pos2[lo : lo + batch]]
        out[lo : lo + batch] = np.einsum("ij,ij->i", a, b)
    return out


@dataclass
class IjbResult:
    name: str
    num_pairs: int
    num_genuine: int
    num_templates: int
    mode: dict
    tar_at_far: dict[str, float]
    roc_auc: float
    eer: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        tars = ", ".join(f"{k}: {v * 100:.2f}" for k, v in self.tar_at_far.items())
        return f"[{self.name}] TAR@FAR (%) {tars}; AUC {self.roc_auc * 100:.2f} %, {self.num_pairs} pairs"


def evaluate_ijb_scores(
    scores, labels, *, name: str = "ijb", num_templates: int = 0, mode: dict | None = None
) -> IjbResult:
    labels = np.asarray(labels, dtype=bool)
    tars = roc.tar_at_far(labels, scores, roc.IJB_FARS)
    return IjbResult(
        name=name,
        num_pairs=int(labels.size),
        num_genuine=int(labels.sum()),
        num_templates=int(num_templates),
        mode=dict(mode or {}),
        tar_at_far={f"{k:g}": v for k, v in tars.items()},
        roc_auc=roc.auc(labels, scores),
        eer=roc.eer(labels, scores),
    )
