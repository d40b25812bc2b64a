"""``synthface world ...``: the procedural face world: labelled faces for tests, benchmarks and the demo"""

from __future__ import annotations

import argparse

from synthface.pipeline.cli import add_group, add_json_flag, emit


def cmd_make(args: argparse.Namespace) -> int:
    from synthface.pipeline.world.dataset import make_world_dataset

    manifest = make_world_dataset(
        args.out,
        identities=args.identities,
        per_identity=args.per_identity,
        size=args.size,
        seed=args.seed,
        split=args.split,
        ext=args.ext,
        max_samples_per_shard=args.shard_samples,
    )
    info = manifest["splits"][args.split]
    summary = {
        "out": str(args.out),
        "split": args.split,
        "identities": info["num_identities"],
        "samples": info["num_samples"],
        "shards": info["num_shards"],
        "bytes": info["bytes"],
    }
    emit(
        args,
        summary,
        f"wrote {summary['samples']} images of {summary['identities']} identities "
        f"in {summary['shards']} shard(s) to {args.out} ({args.split} identity stream)",
    )
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from synthface.pipeline.world.protocols import make_pairs

    results = make_pairs(
        args.out,
        args.protocol or ["all"],
        folds=args.folds,
        pairs_per_fold=args.pairs_per_fold,
        size=args.size,
        seed=args.seed,
        ext=args.ext,
    )
    lines = [
        f"{r['protocol']}: {r['num_pairs']} pairs ({r['num_genuine']} genuine) in {r['folds']} folds, "
        f"{r['num_images']} images -> {args.out}/{r['bin']}, {args.out}/{r['comparison']}"
        for r in results
    ]
    emit(args, results, "\n".join(lines))
    return 0


def cmd_sheet(args: argparse.Namespace) -> int:
    from synthface.pipeline.world.sheet import write_sheet

    path = write_sheet(
        args.out,
        identities=args.identities,
        styles=args.styles,
        size=args.size,
        seed=args.seed,
        split=args.split,
        maps=not args.no_maps,
    )
    emit(args, {"out": str(path)}, f"wrote {path}")
    return 0


def _common(p: argparse.ArgumentParser, size: int) -> None:
    p.add_argument(
        "--size", type=int, default=size, help=f"image side in pixels (default {size}, min 32)"
    )
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    add_json_flag(p)


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(
        groups,
        "world",
        "the procedural face world: labelled faces for tests, benchmarks and the demo",
    )

    c = sub.add_parser(
        "make",
        help="write a labelled identity set in the shard format",
        description="Render N identities x M images into OUT as identity shards; each sample's "
        ".json holds its group, attributes and ground-truth coefficients. Re-runs resume.",
    )
    c.add_argument("out", help="output dataset directory")
    c.add_argument("--identities", type=int, required=True, help="number of identities (>= 1)")
    c.add_argument("--per-identity", type=int, required=True, help="images per identity (>= 1)")
    c.add_argument(
        "--split",
        choices=("train", "eval"),
        default="train",
        help="identity seed stream; train and eval identities are disjoint (default train)",
    )
    c.add_argument(
        "--ext", choices=("jpg", "png"), default="jpg", help="image encoding (default jpg)"
    )
    c.add_argument(
        "--shard-samples", type=int, default=10000, help="max samples per shard (default 10000)"
    )
    _common(c, 64)
    c.set_defaults(func=cmd_make)

    c = sub.add_parser(
        "pairs",
        help="write verification protocols (.bin + FRCSyn comparison files)",
        description="Write 10-fold verification sets over evaluation identities: OUT/{protocol}.bin, "
        "OUT/images/<relpath>, OUT/comparisons/{protocol}_comparison.txt and _ground_truth.txt.",
    )
    c.add_argument("out", help="output directory")
    c.add_argument(
        "--protocol",
        action="append",
        metavar="NAME",
        help="lfw, cfp-fp, agedb, rof, bupt or all (repeatable; default all)",
    )
    c.add_argument("--folds", type=int, default=10, help="number of folds (default 10)")
    c.add_argument(
        "--pairs-per-fold",
        type=int,
        default=300,
        help="genuine (= impostor) pairs per fold (default 300)",
    )
    c.add_argument(
        "--ext", choices=("jpg", "png"), default="jpg", help="image encoding (default jpg)"
    )
    _common(c, 112)
    c.set_defaults(func=cmd_pairs)

    c = sub.add_parser(
        "sheet",
        help="write a contact sheet PNG (identities x styles, plus map rows)",
        description="Render identities (rows) x styles (columns) and, unless --no-maps, the "
        "albedo/shading/normal maps of the first identity's images.",
    )
    c.add_argument("out", help="output .png path")
    c.add_argument("--identities", type=int, default=8, help="rows (default 8: one per group)")
    c.add_argument("--styles", type=int, default=8, help="columns (default 8)")
    c.add_argument("--split", choices=("train", "eval"), default="train", help="identity stream")
    c.add_argument("--no-maps", action="store_true", help="leave out the map rows")
    _common(c, 112)
    c.set_defaults(func=cmd_sheet)
