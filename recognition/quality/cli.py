"""``synthface quality ...``: SDD-FIQA pseudo-labels, quality-regressor training, scoring"""

from __future__ import annotations

import argparse

from synthface.pipeline.cli import add_group, add_json_flag, emit


def cmd_labels(args: argparse.Namespace) -> int:
    from synthface.recognition.quality.datasets import label_dataset

    info = label_dataset(
        args.dataset,
        args.recognizer,
        args.out,
        split=args.split,
        embeddings=args.embeddings,
        samples=args.samples,
        repeats=args.repeats,
        seed=args.seed,
        flip=args.flip,
        device=args.device,
        batch_size=args.batch_size,
    )
    emit(args, info, f"wrote {info['count']} pseudo-labels to {info['out']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from synthface.pipeline.config import load_config
    from synthface.recognition.quality.config import QualityTrainConfig
    from synthface.recognition.quality.train import train_quality

    cfg = load_config(args.config, QualityTrainConfig, args.overrides)
    info = train_quality(cfg)
    text = (
        f"trained {info['steps']} steps (loss {info['first_loss']:.3f} -> {info['last_loss']:.3f}); "
        f"quality model saved to {info['model_dir']}"
    )
    emit(args, info, text)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from synthface.recognition.quality.datasets import score_dataset

    info = score_dataset(
        args.dataset,
        args.model,
        args.out,
        split=args.split,
        device=args.device,
        batch_size=args.batch_size,
    )
    emit(args, info, f"wrote {info['count']} quality scores to {info['out']}")
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "quality", "face image quality without labels (SDD-FIQA)")
    c = sub.add_parser(
        "pseudo-labels",
        help="SDD-FIQA pseudo-labels of a labelled shard dataset",
        description="Embed DATASET with RECOGNIZER and label every sample with the "
        "Wasserstein distance between its genuine and impostor similarities (0-100). "
        "Writes OUT (.npy), OUT.keys.txt and OUT.source.json.",
    )
    c.add_argument("dataset", metavar="DATASET", help="shard dataset directory")
    c.add_argument("--recognizer", required=True, help="checkpoint directory or .onnx")
    c.add_argument("--out", required=True, metavar="L.npy")
    c.add_argument("--split", default="train")
    c.add_argument("--embeddings", metavar="E.npy", help="embeddings file (reused if present)")
    c.add_argument("--samples", type=int, default=24, help="m: scores drawn per side (24)")
    c.add_argument("--repeats", type=int, default=12, help="K: rounds averaged (12)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--flip", action="store_true", help="flip-sum embeddings")
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.add_argument("--batch-size", type=int, default=64)
    add_json_flag(c)
    c.set_defaults(func=cmd_labels)

    c = sub.add_parser(
        "train",
        help="train a quality regressor on pseudo-labels",
        description="Train the regressor CONFIG (configs/quality/*.yaml) describes.",
    )
    c.add_argument("config", metavar="CONFIG")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    add_json_flag(c)
    c.set_defaults(func=cmd_train)

    c = sub.add_parser(
        "score",
        help="score every sample of a shard dataset with a quality model",
        description="Writes OUT (.npy), OUT.keys.txt and OUT.source.json, keyed by sample key "
        "(what ddl.hard.kind: quality reads).",
    )
    c.add_argument("dataset", metavar="DATASET")
    c.add_argument("--model", required=True, help="quality model directory")
    c.add_argument("--out", required=True, metavar="Q.npy")
    c.add_argument("--split", default="train")
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.add_argument("--batch-size", type=int, default=64)
    add_json_flag(c)
    c.set_defaults(func=cmd_score)
