"""``synthface shards ...``: verify, inspect and convert identity-set shard datasets."""

from __future__ import annotations

import argparse

from synthface.pipeline.cli import add_group, add_json_flag, emit
from synthface.pipeline.faces.options import add_align_arguments, align_config


def _targets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-samples", type=int, default=10000, help="target samples per shard (default 10000)"
    )
    parser.add_argument(
        "--max-bytes", type=int, default=1 << 30, help="target bytes per shard (default 1 GiB)"
    )
    parser.add_argument("--split", default="train", help="split name of the output (default train)")
    add_json_flag(parser)


def cmd_verify(args: argparse.Namespace) -> int:
    from synthface.pipeline.shards.verify import verify_dataset

    report = verify_dataset(args.dir, split=args.split, decode=not args.no_decode)
    if report["ok"]:
        text = f"ok: {args.dir}: {report['shards']} shards, {report['samples']} samples verified"
    else:
        lines = [f"{args.dir}: {len(report['problems'])} problem(s):"]
        lines += [f"  {p}" for p in report["problems"]]
        text = "\n".join(lines)
    emit(args, report, text)
    return 0 if report["ok"] else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from synthface.pipeline.shards.summary import format_inspection, inspect_dataset

    info = inspect_dataset(args.dir, split=args.split)
    emit(args, info, format_inspection(info))
    return 0


def _written(args: argparse.Namespace, manifest: dict) -> None:
    s = manifest["splits"][args.split]
    data = {
        "out": str(args.out),
        "split": args.split,
        **{k: s[k] for k in ("num_identities", "num_samples", "num_shards", "bytes")},
    }
    text = (
        f"wrote {args.out}: {s['num_identities']} identities, {s['num_samples']} images, "
        f"{s['num_shards']} shards, {s['bytes'] / 1e6:.1f} MB"
    )
    align = s.get("extra", {}).get("align")
    if align:
        data["align"] = align
        text += (
            f"\naligned {align['aligned']} images ({align['largest_of_several']} the largest "
            f"of several faces); skipped {align['skipped_no_face']} without a face and "
            f"{align['skipped_multi_face']} with several; {align['identities_dropped']} "
            "identities left without images"
        )
    emit(args, data, text)


def cmd_from_folder(args: argparse.Namespace) -> int:
    from synthface.pipeline.shards.folder import from_folder

    manifest = from_folder(
        args.src,
        args.out,
        max_samples=args.max_samples,
        max_bytes=args.max_bytes,
        skip_non_images=args.skip_non_images,
        split=args.split,
        align=align_config(args),
    )
    _written(args, manifest)
    return 0


def cmd_to_folder(args: argparse.Namespace) -> int:
    from synthface.pipeline.shards.folder import to_folder

    result = to_folder(args.dir, args.out, split=args.split)
    emit(
        args,
        result,
        f"wrote {result['written']} images to {args.out} ({result['unchanged']} already there)",
    )
    return 0


def cmd_from_rec(args: argparse.Namespace) -> int:
    from synthface.pipeline.shards.rec import from_rec

    manifest = from_rec(
        args.prefix,
        args.out,
        max_samples=args.max_samples,
        max_bytes=args.max_bytes,
        split=args.split,
    )
    _written(args, manifest)
    return 0


def cmd_from_wds(args: argparse.Namespace) -> int:
    from synthface.pipeline.shards.wds_ingest import from_webdataset

    manifest = from_webdataset(
        args.src,
        args.out,
        max_samples=args.max_samples,
        max_bytes=args.max_bytes,
        split=args.split,
    )
    _written(args, manifest)
    return 0


def cmd_to_rec(args: argparse.Namespace) -> int:
    from synthface.pipeline.shards.rec import to_rec

    result = to_rec(args.dir, args.out, split=args.split)
    emit(
        args,
        result,
        f"wrote {args.out}/train.rec, train.idx, property: {result['records']} images of "
        f"{result['identities']} identities, {result['rec_bytes'] / 1e6:.1f} MB",
    )
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "shards", "verify, inspect and convert identity-set shard datasets")

    c = sub.add_parser(
        "verify", help="check every shard against the manifest; exit 1 on any problem"
    )
    c.add_argument("dir", help="dataset directory (holds dataset.json)")
    c.add_argument("--split", default=None, help="only this split (default: all)")
    c.add_argument("--no-decode", action="store_true", help="skip decoding every image (faster)")
    add_json_flag(c)
    c.set_defaults(func=cmd_verify)

    c = sub.add_parser("inspect", help="identities, images, per-identity histogram, bytes")
    c.add_argument("dir", help="dataset directory (holds dataset.json)")
    c.add_argument("--split", default=None, help="only this split (default: all)")
    add_json_flag(c)
    c.set_defaults(func=cmd_inspect)

    c = sub.add_parser(
        "from-folder", help="SRC/<identity>/<image> tree -> shards (JPEG/PNG bytes kept)"
    )
    c.add_argument("src", help="folder with one sub-folder per identity")
    c.add_argument("out", help="output dataset directory (new or empty)")
    c.add_argument(
        "--skip-non-images", action="store_true", help="ignore non-image files instead of failing"
    )
    add_align_arguments(
        c,
        landmarks_help="sidecar landmarks: 'identity/image x1 y1 ... x5 y5 [score]' per face "
        "(no detector)",
        policy_help="several faces: align the largest (default), skip the image, or fail; "
        "images without a face are skipped (fail: stop)",
        image_format=True,
    )
    _targets(c)
    c.set_defaults(func=cmd_from_folder)

    c = sub.add_parser("to-folder", help="shards -> OUT/<identity>/<image> tree")
    c.add_argument("dir", help="dataset directory (holds dataset.json)")
    c.add_argument("out", help="output folder")
    c.add_argument("--split", default="train", help="split to export (default train)")
    add_json_flag(c)
    c.set_defaults(func=cmd_to_folder)

    c = sub.add_parser(
        "from-rec", help="InsightFace/MXNet train.rec + train.idx + property -> shards"
    )
    c.add_argument(
        "prefix", help="DIR (uses DIR/train.*), or a PREFIX with PREFIX.rec and PREFIX.idx"
    )
    c.add_argument("out", help="output dataset directory (new or empty)")
    _targets(c)
    c.set_defaults(func=cmd_from_rec)

    c = sub.add_parser(
        "from-wds",
        help="plain WebDataset tars (.cls label + .jpg/.png per sample, no manifest) -> shards",
    )
    c.add_argument(
        "src", help="folder of .tar shards, one .tar, or brace URLs ('d/train-{0000..0009}.tar')"
    )
    c.add_argument("out", help="output dataset directory (new or empty)")
    _targets(c)
    c.set_defaults(func=cmd_from_wds)

    c = sub.add_parser(
        "to-rec",
        help="shards -> train.rec + train.idx + property (arcface_torch MXFaceDataset layout)",
    )
    c.add_argument("dir", help="dataset directory (holds dataset.json)")
    c.add_argument("out", help="output folder for train.rec, train.idx and property")
    c.add_argument("--split", default="train", help="split to export (default train)")
    add_json_flag(c)
    c.set_defaults(func=cmd_to_rec)
