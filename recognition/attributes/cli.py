"""``synthface shards annotate`` and ``synthface recognition train-attributes``.

Both are registered through the ``synthface.cli.commands`` entry points: the ``shards``
group belongs to ``pipeline``, which may not import ``recognition``; the recognizer
side adds its command to that group instead (``synthface.pipeline.cli``).
"""

from __future__ import annotations

import argparse

from synthface.pipeline.cli import add_json_flag, emit


def cmd_annotate(args: argparse.Namespace) -> int:
    from synthface.recognition.attributes.annotate import annotate_dataset

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    manifest = annotate_dataset(
        args.src,
        args.out,
        recognizer=args.recognizer,
        landmark_model=args.landmark_model,
        genderage_model=args.genderage_model,
        attribute_model=args.attribute_model,
        attributes=not args.no_attributes,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
        resize=args.resize,
        flip=args.flip,
    )
    s = manifest["splits"][args.split]
    provides = s["extra"]["annotate"]["provides"]
    data = {
        "out": str(args.out),
        "split": args.split,
        "num_samples": s["num_samples"],
        "num_identities": s["num_identities"],
        "num_shards": s["num_shards"],
        "attributes": provides,
    }
    where = ", ".join(f"{k} from {v}" for k, v in sorted(provides.items())) or "no attributes"
    emit(
        args,
        data,
        f"wrote {args.out}: {s['num_samples']} images of {s['num_identities']} identities in "
        f"{s['num_shards']} shards with embeddings from {args.recognizer}; {where}",
    )
    return 0


def register_annotate(commands: argparse._SubParsersAction, name: str) -> None:
    c = commands.add_parser(
        name,
        help="add identity embeddings and pose/age attributes (what generator training reads)",
        description="Write a copy of a shard set (same keys, labels and image bytes) whose "
        "samples carry the recognizer's embedding (.npy) and meta.attributes yaw/pitch/roll "
        "(degrees) and age (years). Resumable per shard.",
    )
    c.add_argument("src", help="source dataset directory (e.g. from `shards from-folder`)")
    c.add_argument("--out", required=True, help="output dataset directory (new, or a rerun)")
    c.add_argument(
        "--recognizer", required=True, metavar="MODEL", help="insightface ONNX or checkpoint dir"
    )
    c.add_argument(
        "--landmark-model", metavar="1k3d68.onnx", help="insightface 3-D landmarks: head pose"
    )
    c.add_argument(
        "--genderage-model", metavar="genderage.onnx", help="insightface gender-age: age, gender"
    )
    c.add_argument(
        "--attribute-model",
        metavar="DIR",
        help="world-trained estimator (`synthface recognition train-attributes`) for what the "
        "insightface models above do not give",
    )
    c.add_argument(
        "--no-attributes", action="store_true", help="embeddings only (UIFace, MorphFace)"
    )
    c.add_argument(
        "--resize", action="store_true", help="resize crops to the recognizer's input size"
    )
    c.add_argument("--flip", action="store_true", help="embed image + mirror (sum of features)")
    c.add_argument("--batch-size", type=int, default=64, help="images per model call (64)")
    c.add_argument(
        "--device", default="cpu", help="cpu or cuda for the ONNX/torch models (default cpu)"
    )
    c.add_argument("--threads", type=int, default=None, help="CPU threads per model (default: all)")
    c.add_argument("--split", default="train", help="split to annotate (default train)")
    add_json_flag(c)
    c.set_defaults(func=cmd_annotate)


def cmd_train(args: argparse.Namespace) -> int:
    from synthface.pipeline.progress import progress_bar
    from synthface.recognition.attributes.world_model import train_attribute_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with progress_bar(args.steps, desc="train-attributes", unit="step") as bar:
        result = train_attribute_model(
            args.out,
            identities=args.identities,
            per_identity=args.per_identity,
            eval_identities=args.eval_identities,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            input_size=args.input_size,
            seed=args.seed,
            progress=bar.update,
        )
    mae = result["eval"].get("mae", {})
    text = f"wrote {args.out}"
    if mae:
        base = result["eval"]["mae_of_mean_guess"]
        text += "; world eval MAE " + ", ".join(
            f"{k} {v:.1f} (mean guess {base[k]:.1f})" for k, v in mae.items()
        )
    emit(args, result, text)
    return 0


def register_train(commands: argparse._SubParsersAction, name: str) -> None:
    c = commands.add_parser(
        name,
        help="train a small pose/age estimator on the procedural world (for shards annotate)",
        description="Render labelled world faces, train a small CNN on their yaw, pitch, roll "
        "and age, measure it on held-out world identities. On real faces it is a stand-in, "
        "not an age or pose model (docs/shards.md).",
    )
    c.add_argument("out", help="output model directory")
    c.add_argument("--identities", type=int, default=400, help="world train identities (400)")
    c.add_argument("--per-identity", type=int, default=8, help="images per identity (8)")
    c.add_argument(
        "--eval-identities", type=int, default=64, help="held-out world identities (64; 0: none)"
    )
    c.add_argument("--steps", type=int, default=800, help="optimizer steps (800)")
    c.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    c.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (2e-3)")
    c.add_argument("--input-size", type=int, default=64, help="input side in pixels (64)")
    c.add_argument("--seed", type=int, default=0, help="world and training seed (0)")
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_json_flag(c)
    c.set_defaults(func=cmd_train)
