"""``synthface eval ...``: verification (10-fold, .bin, pair lists) and IJB-style 1:1 evaluation"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthface.pipeline.cli import add_group, add_json_flag, emit
from synthface.pipeline.errors import InputError


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(
        groups, "eval", "verification (10-fold, .bin, pair lists) and IJB-style 1:1 evaluation"
    )

    c = sub.add_parser(
        "verify",
        help="10-fold verification (insightface protocol) from .bin files or embeddings + pairs",
        description=(
            "Either --bin X.bin [--bin Y.bin ...] --model M (a checkpoint dir or .onnx), or "
            "--embeddings E.npy --pairs P.txt (P: one 'i j issame' line per pair, 0-based rows "
            "of E, issame 1/0). Accuracy is mean +- std over 10 contiguous folds."
        ),
    )
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--bin", action="append", type=Path, metavar="X.bin", help="verification .bin")
    src.add_argument("--embeddings", type=Path, metavar="E.npy", help="N x D embeddings (.npy)")
    c.add_argument("--model", help="recognizer for --bin: checkpoint directory or .onnx")
    c.add_argument("--pairs", type=Path, metavar="P.txt", help="pair list for --embeddings")
    c.add_argument(
        "--metric",
        choices=["euclidean_sq", "cosine", "both"],
        default="euclidean_sq",
        help="squared Euclidean (insightface, default), cosine (exact sweep), or both",
    )
    c.add_argument("--nfolds", type=int, default=10, help="number of contiguous folds (10)")
    c.add_argument(
        "--no-normalize",
        action="store_true",
        help="with --embeddings: do not L2-normalise rows first",
    )
    c.add_argument("--device", default="cpu", help="cpu or cuda (for --model)")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--out", type=Path, help="write report.md, metrics.json and plots here")
    add_json_flag(c)
    c.set_defaults(func=cmd_verify)

    c = sub.add_parser(
        "ijb",
        help="IJB-B/C-style 1:1 template verification, TAR@FAR 1e-6..1e-1",
        description=(
            "Reads <target>_face_tid_mid.txt, <target>_template_pair_label.txt and "
            "<target>_name_5pts_score.txt from --meta-dir (or its meta/ folder). Features "
            "come from --model on loose crops aligned with their 5 points, or from "
            "--features F.npy (raw per-image features in face_tid_mid order)."
        ),
    )
    c.add_argument("--meta-dir", type=Path, required=True)
    c.add_argument("--target", default="IJBC", help="file prefix: IJBB or IJBC (default IJBC)")
    c.add_argument("--images", type=Path, help="loose_crop folder (default META_DIR/loose_crop)")
    feat = c.add_mutually_exclusive_group(required=True)
    feat.add_argument("--model", help="checkpoint directory or .onnx recognizer")
    feat.add_argument("--features", type=Path, help="raw per-image features (.npy, N x D)")
    c.add_argument(
        "--flip-features", type=Path, help="with --features: raw features of the mirrored crops"
    )
    c.add_argument("--no-flip", action="store_true", help="do not add the mirrored crop's feature")
    c.add_argument(
        "--norm-score", action="store_true", help="keep per-image feature norms (quality weight)"
    )
    c.add_argument(
        "--detector-score", action="store_true", help="weight image features by faceness score"
    )
    c.add_argument("--device", default="cpu")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--out", type=Path, help="write report.md, metrics.json and plots here")
    add_json_flag(c)
    c.set_defaults(func=cmd_ijb)


# ---------------------------------------------------------------- verify


def read_pairs(path: Path):
    """``i j issame`` per line -> (first, second, issame) arrays; errors name the line."""
    import numpy as np

    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read pair list ({exc.strerror or exc})") from None
    first, second, same = [], [], []
    truth = {"1": True, "0": False, "true": True, "false": False}
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 3:
            raise InputError(f"{path}:{lineno}: expected 'i j issame', got {line.strip()!r}")
        try:
            i, j = int(parts[0]), int(parts[1])
        except ValueError:
            raise InputError(
                f"{path}:{lineno}: row indices must be integers: {line.strip()!r}"
            ) from None
        s = truth.get(parts[2].lower())
        if s is None:
            raise InputError(f"{path}:{lineno}: issame must be 1/0 or true/false, got {parts[2]!r}")
        first.append(i)
        second.append(j)
        same.append(s)
    if not first:
        raise InputError(f"{path}: no pairs")
    return np.array(first), np.array(second), np.array(same, dtype=bool)


def load_embeddings(path: Path):
    import numpy as np

    try:
        emb = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a .npy array ({exc})") from None
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise InputError(f"{path}: expected a 2-D float array, got {emb.dtype} {emb.shape}")
    return emb


def _evaluate_all(emb, first, second, issame, metrics, name, args, xnorm=None, normalize=True):
    import numpy as np

    from synthface.recognition.evaluation.verification import (
        evaluate_scores,
        l2_normalize,
        pair_scores,
    )

    emb = np.asarray(emb, dtype=np.float64)
    if normalize:
        emb = l2_normalize(emb)
    results, curves = [], {}
    for metric in metrics:
        scores = pair_scores(emb, first, second, metric)
        r = evaluate_scores(
            scores, issame, metric=metric, name=name, nfolds=args.nfolds, xnorm=xnorm
        )
        results.append(r)
        curves[f"{name}/{metric}"] = (issame, -scores if metric == "euclidean_sq" else scores)
    return results, curves


def cmd_verify(args: argparse.Namespace) -> int:
    import numpy as np

    metrics = ["euclidean_sq", "cosine"] if args.metric == "both" else [args.metric]
    results, curves = [], {}
    if args.embeddings is not None:
        if args.pairs is None:
            raise InputError("--embeddings needs --pairs P.txt")
        if args.model:
            raise InputError("--model is only used with --bin")
        emb = load_embeddings(args.embeddings)
        first, second, issame = read_pairs(args.pairs)
        results, curves = _evaluate_all(
            emb,
            first,
            second,
            issame,
            metrics,
            args.pairs.stem,
            args,
            normalize=not args.no_normalize,
        )
    else:
        if not args.model:
            raise InputError("--bin needs --model (a checkpoint directory or .onnx file)")
        if args.pairs is not None:
            raise InputError("--pairs is only used with --embeddings")
        from synthface.recognition import load_embedder
        from synthface.recognition.evaluation.embed import embed_bin

        embedder = load_embedder(args.model, device=args.device)
        for path in args.bin:
            feats, issame, xnorm = embed_bin(path, embedder, batch_size=args.batch_size)
            first = np.arange(0, feats.shape[0], 2)
            r, c = _evaluate_all(
                feats, first, first + 1, issame, metrics, path.stem, args, xnorm=xnorm
            )
            results += r
            curves.update(c)
    if args.out is not None:
        from synthface.recognition.evaluation.report import verification_report

        verification_report(args.out, results, curves)
    data = {"results": [r.to_dict() for r in results]}
    emit(args, data, "\n".join(r.summary() for r in results))
    return 0


# ---------------------------------------------------------------- ijb


def cmd_ijb(args: argparse.Namespace) -> int:
    import numpy as np

    from synthface.recognition.evaluation import ijb

    need_align = args.model is not None
    meta = ijb.read_meta(args.meta_dir, args.target, need_landmarks=need_align)
    n = len(meta.names)
    if args.features is not None:
        raw = load_embeddings(args.features)
        if raw.shape[0] != n:
            raise InputError(
                f"{args.features}: {raw.shape[0]} rows but {n} faces in the meta files"
            )
        flip = None
        if args.flip_features is not None:
            flip = load_embeddings(args.flip_features)
            if flip.shape != raw.shape:
                raise InputError(f"{args.flip_features}: shape {flip.shape} != {raw.shape}")
        elif not args.no_flip:
            raise InputError(
                "--features without --flip-features: pass --no-flip or the flip features"
            )
    else:
        from synthface.recognition import load_embedder
        from synthface.recognition.evaluation.embed import raw_features_batches

        embedder = load_embedder(args.model, device=args.device)
        size = embedder.input_size[0]
        images = args.images or (args.meta_dir / "loose_crop")
        batches = ijb.align_faces(
            images, meta.names, meta.landmarks, size=size, batch=args.batch_size
        )
        raw, flip = raw_features_batches(embedder, batches, total=n)
    feats = ijb.image_features(
        np.asarray(raw),
        None if args.no_flip else flip,
        meta.faceness,
        norm_score=args.norm_score,
        detector_score=args.detector_score,
    )
    tids, tfeats = ijb.pool_templates(feats, meta.templates, meta.medias)
    scores = ijb.template_scores(tids, tfeats, meta.t1, meta.t2)
    mode = {
        "flip": not args.no_flip,
        "norm_score": args.norm_score,
        "detector_score": args.detector_score,
    }
    result = ijb.evaluate_ijb_scores(
        scores, meta.labels, name=args.target, num_templates=len(tids), mode=mode
    )
    if args.out is not None:
        from synthface.recognition.evaluation.report import ijb_report

        ijb_report(args.out, result, meta.labels, scores)
    emit(args, result.to_dict(), result.summary())
    return 0
