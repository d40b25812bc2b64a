"""Cross-check ``shards to-rec`` output with mxnet itself (not part of the test suite).

mxnet (frozen at 1.9.1) needs numpy < 1.24, so it cannot live in the project's venv. Two
steps, two interpreters:

    # 1. in a separate venv: python -m venv /tmp/mx && /tmp/mx/bin/pip install mxnet==1.9.1 "numpy<1.24"
    /tmp/mx/bin/python bench/rec_mxnet_check.py read REC_DIR --out mx.json
    # 2. in the project's venv
    .venv/bin/python bench/rec_mxnet_check.py compare DATASET mx.json

Step 1 reads REC_DIR the way arcface_torch's ``MXFaceDataset`` does
(``mx.recordio.MXIndexedRecordIO``, header record 0, images ``1 .. label[0]-1``, the label
or its first element, ``mx.image.imdecode``) and also walks the identity records; it
needs only mxnet and numpy. Step 2 compares that with the shards: same count, same labels,
same image bytes (sha256), decoded shapes, identity ranges.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys


def read(rec_dir: str, out: str) -> None:
    import mxnet as mx

    rec = mx.recordio.MXIndexedRecordIO(f"{rec_dir}/train.idx", f"{rec_dir}/train.rec", "r")
    header, _ = mx.recordio.unpack(rec.read_idx(0))
    assert header.flag > 0, "record 0 is not a header"
    first_id, end_id = int(header.label[0]), int(header.label[1])
    images = []
    for idx in range(1, first_id):
        head, payload = mx.recordio.unpack(rec.read_idx(idx))
        label = head.label if isinstance(head.label, float) else head.label[0]
        shape = mx.image.imdecode(payload).shape
        images.append([int(label), hashlib.sha256(payload).hexdigest(), list(shape)])
    ranges = []
    for idx in range(first_id, end_id):
        head, _ = mx.recordio.unpack(rec.read_idx(idx))
        ranges.append([int(head.label[0]), int(head.label[1])])
    with open(out, "w") as f:
        json.dump({"mxnet": mx.__version__, "images": images, "identity_ranges": ranges}, f)
    print(f"mxnet {mx.__version__}: read {len(images)} images, {len(ranges)} identity records")


def compare(dataset: str, mx_json: str) -> int:
    from synthface.pipeline.shards import ShardIndexDataset, decode_image

    with open(mx_json) as f:
        got = json.load(f)
    images, ds = got["images"], ShardIndexDataset(dataset, decode=False)
    problems = []
    if len(images) != len(ds):
        problems.append(f"{len(images)} records read by mxnet, {len(ds)} samples in the shards")
    starts: dict[int, int] = {}
    for i, (label, digest, shape) in enumerate(images[: len(ds)]):
        sample = ds[i]
        starts.setdefault(sample["label"], i + 1)
        if label != sample["label"]:
            problems.append(f"record {i + 1}: label {label} != {sample['label']}")
        if digest != hashlib.sha256(sample["image"]).hexdigest():
            problems.append(f"record {i + 1}: image bytes differ")
        ours = list(decode_image(sample["image"]).shape)
        if shape != ours:
            problems.append(f"record {i + 1}: mxnet decodes {shape}, PIL {ours}")
    ends = [*list(starts.values())[1:], len(ds) + 1]
    if [[s, e] for s, e in zip(starts.values(), ends)] != got["identity_ranges"]:
        problems.append("identity ranges differ")
    for p in problems:
        print(p)
    print(
        f"{'OK' if not problems else 'MISMATCH'}: {len(images)} images and "
        f"{len(got['identity_ranges'])} identities read by mxnet {got['mxnet']} vs {dataset}"
    )
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("read", help="(mxnet venv) read REC_DIR like MXFaceDataset")
    r.add_argument("rec_dir")
    r.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="(project venv) compare with the shards")
    c.add_argument("dataset")
    c.add_argument("mx_json")
    args = ap.parse_args()
    if args.mode == "read":
        read(args.rec_dir, args.out)
        return 0
    return compare(args.dataset, args.mx_json)


if __name__ == "__main__":
    sys.exit(main())
