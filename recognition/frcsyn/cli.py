"""``synthface frcsyn ...``: FRCSyn scoring, submission packaging and validation"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthface.pipeline.cli import add_group, add_json_flag, emit
from synthface.pipeline.errors import InputError
from synthface.pipeline.faces.options import add_align_arguments


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "frcsyn", "FRCSyn scoring, submission packaging and validation")

    c = sub.add_parser("rules", help="list sub-tasks with their training-data rules and metrics")
    c.add_argument("--edition", choices=["wacv2024", "cvpr2024"], help="only this edition")
    add_json_flag(c)
    c.set_defaults(func=cmd_rules)

    c = sub.add_parser(
        "score",
        help="score proposed + baseline systems on a comparison tree; thresholds from calibration",
        description=(
            "Trees are DIR/images/<relpath> + DIR/comparisons/{dataset}_comparison.txt. The "
            "decision threshold of each system is chosen on --calibration, a tree built from "
            "training-side data (with *_ground_truth.txt), never on the evaluation tree."
        ),
    )
    c.add_argument("--subtask", required=True, help="e.g. 1.1, 2.3")
    c.add_argument("--edition", default="cvpr2024", choices=["wacv2024", "cvpr2024"])
    c.add_argument("--eval-tree", type=Path, required=True, help="evaluation comparison tree")
    c.add_argument("--calibration", type=Path, required=True, help="training-side calibration tree")
    c.add_argument("--proposed", required=True, help="proposed system: checkpoint dir or .onnx")
    c.add_argument("--baseline", required=True, help="real-data baseline: checkpoint dir or .onnx")
    c.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run directory to write: scores/<dataset>/<system>.txt, thresholds.json, run.json "
        "and, with ground truth, metrics.json, report.md and plots",
    )
    c.add_argument("--datasets", type=_csv, help="comma list (default: the task's datasets)")
    c.add_argument(
        "--threshold-method", choices=["min_fnmr_fmr", "target_fmr"], default="min_fnmr_fmr"
    )
    c.add_argument("--target-fmr", type=float, default=0.01, help="for target_fmr (0.01)")
    c.add_argument("--device", default="cpu")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument(
        "--workers",
        type=int,
        default=4,
        help="threads reading (and aligning) images while the model embeds; scores do not "
        "depend on it (default 4)",
    )
    c.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    c.add_argument(
        "--group-map",
        type=Path,
        help="'subject,group' lines giving each BUPT subject's demographic group (Task 1: "
        "4 ethnicities x 2 genders); default: the first path component (ethnicity only)",
    )
    g = add_align_arguments(
        c,
        landmarks_help="sidecar landmarks of the evaluation tree: 'relpath x1 y1 ... x5 y5 "
        "[score]' per face, relpath as in the comparison files (no detector)",
        policy_help="several faces: align the largest (default), score the whole image "
        "(skip), or fail; images without a face are scored whole (fail: stop)",
    )
    g.add_argument(
        "--calibration-landmarks",
        metavar="FILE",
        help="with --align --landmarks: the calibration tree's sidecar; without it the "
        "calibration images are scored as they are (crops of aligned training shards)",
    )
    add_json_flag(c)
    c.set_defaults(func=cmd_score)

    c = sub.add_parser(
        "calibration",
        help="build a calibration comparison tree from your own training shards",
        description=(
            "Genuine and impostor pairs (with ground truth) of training identities' images, in "
            "the tree layout 'frcsyn score --calibration' reads, so that a submission's "
            "threshold never comes from evaluation data. Each chosen identity gives its last "
            "two images. With --holdout-identities or --holdout-fraction the tree uses held-out "
            "identities only and DATASET/views/VIEW.json leaves them out: train with "
            "data.view: VIEW so the threshold is chosen on people the recognizer never saw."
        ),
    )
    c.add_argument("--from-shards", type=Path, required=True, metavar="DATASET")
    c.add_argument("--out", type=Path, required=True, help="calibration tree to write")
    c.add_argument("--split", default="train")
    c.add_argument("--identities", type=int, help="use this many identities (default: all)")
    c.add_argument("--name", default="calibration", help="comparison-file stem")
    c.add_argument("--seed", type=int, default=0, help="draws identities (and the hold-out)")
    hold = c.add_mutually_exclusive_group()
    hold.add_argument(
        "--holdout-identities",
        type=_identity_list,
        metavar="I,J,...",
        help="hold these identity numbers out of training and calibrate on them",
    )
    hold.add_argument(
        "--holdout-fraction",
        type=float,
        metavar="F",
        help="hold out this share of the identities, drawn by --seed",
    )
    c.add_argument(
        "--view",
        default="frcsyn-train",
        help="name of the training view written with a hold-out (default frcsyn-train)",
    )
    c.add_argument(
        "--base-view",
        metavar="NAME",
        help="start the training view from this one (e.g. qc): its exclusions stay out",
    )
    add_json_flag(c)
    c.set_defaults(func=cmd_calibration)

    c = sub.add_parser(
        "package", help="write <subtask>/<dataset>/{proposed,baseline}.txt and <subtask>.zip"
    )
    c.add_argument("run", type=Path, help="run directory from 'frcsyn score'")
    c.add_argument("--out", type=Path, required=True, help="submission folder")
    add_json_flag(c)
    c.set_defaults(func=cmd_package)

    c = sub.add_parser(
        "validate",
        help="check a submission zip against the comparison files; exit 1 on any defect",
    )
    c.add_argument("zip", type=Path)
    c.add_argument("--comparisons", type=Path, required=True, help="folder of *_comparison.txt")
    c.add_argument("--run", type=Path, help="run directory: also check thresholds and line order")
    c.add_argument("--subtask", help="default: from the run, or the zip name (<subtask>.zip)")
    c.add_argument("--edition", default="cvpr2024", choices=["wacv2024", "cvpr2024"])
    c.add_argument("--datasets", type=_csv, help="comma list (default: the task's datasets)")
    c.add_argument("--no-range-check", action="store_true", help="allow scores outside [-1, 1]")
    add_json_flag(c)
    c.set_defaults(func=cmd_validate)


def cmd_rules(args: argparse.Namespace) -> int:
    from synthface.recognition.frcsyn.rules import list_subtasks

    rows = [
        {
            "edition": st.edition,
            "subtask": st.id,
            "task": st.task,
            "goal": st.goal,
            "datasets": list(st.datasets),
            "ranking_metric": st.ranking_metric,
            "rule": st.rule,
            "source": st.source,
        }
        for st in list_subtasks(args.edition)
    ]
    text = "\n".join(
        f"{r['edition']} {r['subtask']} [{r['ranking_metric']} on {', '.join(r['datasets'])}]: {r['rule']}"
        for r in rows
    )
    emit(args, rows, text)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from synthface.recognition import load_embedder
    from synthface.recognition.frcsyn.rules import get_subtask
    from synthface.recognition.frcsyn.scoring import embed_tree_images, score_run

    st = get_subtask(args.subtask, args.edition)
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be >= 1")
    trees = _tree_alignments(args)
    systems, models = {}, {}
    for system, path in (("proposed", args.proposed), ("baseline", args.baseline)):
        emb = load_embedder(path, device=args.device)
        systems[system] = lambda images_dir, relpaths, emb=emb: embed_tree_images(
            images_dir,
            relpaths,
            emb,
            batch_size=args.batch_size,
            workers=args.workers,
            alignment=trees.get(Path(images_dir).resolve()),
        )
        models[system] = str(path)

    def alignment() -> dict:
        cal = trees.get((args.calibration / "images").resolve())
        return {
            "eval_tree": trees[(args.eval_tree / "images").resolve()].summary(),
            "calibration": None if cal is None else cal.summary(),
        }

    run = score_run(
        st,
        args.eval_tree,
        args.calibration,
        systems,
        args.out,
        datasets=args.datasets,
        method=args.threshold_method,
        target_fmr=args.target_fmr,
        models=models,
        plots=not args.no_plots,
        group_map=args.group_map,
        alignment=alignment if trees else None,
    )
    m = run["metrics"]
    if m:
        p, b = m["systems"]["proposed"], m["systems"]["baseline"]
        text = (
            f"{st.edition} {st.id}: {st.ranking_metric} proposed {p['ranking_value']:.2f} / "
            f"baseline {b['ranking_value']:.2f}, GAP {m['GAP']:.2f} %; rule: {st.rule}; "
            f"report: {args.out / 'report.md'}"
        )
    else:
        text = f"scored {', '.join(run['datasets'])} (no ground truth); run: {args.out}"
    for tree, summary in run.get("alignment", {}).items():
        if summary is not None:
            text += (
                f"\n{tree}: aligned {summary['aligned']} images by {summary['aligned_by']}, "
                f"{summary['scored_unaligned']} scored whole (policy {summary['policy']})"
            )
    emit(args, run, text)
    return 0


def _tree_alignments(args: argparse.Namespace) -> dict:
    """``{resolved images dir: TreeAlignment}`` for the trees ``--align`` applies to: both
    with a detector; with landmarks, the evaluation tree and the calibration tree only when
    it has its own sidecar."""
    from synthface.pipeline.faces.options import align_config
    from synthface.recognition.frcsyn.loading import TreeAlignment

    cfg = align_config(args)
    if args.calibration_landmarks and (cfg is None or cfg.landmarks is None):
        raise InputError("--calibration-landmarks only applies with --align --landmarks")
    if cfg is None:
        return {}
    trees = {(args.eval_tree / "images").resolve(): TreeAlignment(cfg)}
    cal = cfg if cfg.detector else None
    if args.calibration_landmarks:
        cal = align_config(args, landmarks=args.calibration_landmarks)
    if cal is not None:
        trees[(args.calibration / "images").resolve()] = TreeAlignment(cal)
    return trees


def cmd_calibration(args: argparse.Namespace) -> int:
    from synthface.recognition.frcsyn.calibration import calibration_from_shards

    info = calibration_from_shards(
        args.from_shards,
        args.out,
        split=args.split,
        name=args.name,
        identities=args.identities,
        seed=args.seed,
        holdout=args.holdout_identities,
        holdout_fraction=args.holdout_fraction,
        view=args.view,
        base_view=args.base_view,
    )
    text = (
        f"{args.out}: {info['num_genuine']} genuine + {info['num_impostor']} impostor "
        f"comparisons of {info['identities_used']} training identities "
        f"({info['comparison']})"
    )
    if "holdout" in info:
        h = info["holdout"]
        text = (
            f"{args.out}: {info['num_genuine']} genuine + {info['num_impostor']} impostor "
            f"comparisons of {info['identities_used']} held-out identities "
            f"({info['comparison']}); train with data.view: {Path(h['view']).stem} "
            f"({h['train_identities']} identities, {h['train_samples']} samples)"
        )
    emit(args, info, text)
    return 0


def _identity_list(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: identity numbers separated by commas"
        ) from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: identity numbers separated by commas")
    return ids


def cmd_package(args: argparse.Namespace) -> int:
    import hashlib

    from synthface.recognition.frcsyn.package import package_run

    zip_path = package_run(args.run, args.out)
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    emit(args, {"zip": str(zip_path), "sha256": digest}, f"{zip_path} sha256 {digest}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from synthface.recognition.frcsyn.package import validate_package

    report = validate_package(
        args.zip,
        args.comparisons,
        subtask=args.subtask,
        edition=args.edition,
        datasets=args.datasets,
        run_dir=args.run,
        score_range=None if args.no_range_check else (-1.0, 1.0),
    )
    for text in report.warnings:
        print(f"synthface: warning: {text} (--run RUN)", file=sys.stderr)
    if report.ok:
        text = f"{args.zip}: valid {report.edition} {report.subtask} package ({len(report.checked)} files)"
    else:
        text = "\n".join(
            [f"{args.zip}: INVALID ({len(report.problems)} problems)", *report.problems]
        )
    emit(args, report.to_dict(), text)
    return 0 if report.ok else 1
