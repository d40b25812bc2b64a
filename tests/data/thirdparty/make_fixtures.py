"""Rebuild the files in this folder with the third-party software that writes them for real.

The project's readers must accept what mxnet and insightface's Python 2 scripts wrote, not
only what the project's own writers produce, so these bytes come from those programs:

    # 1. images: procedural-world faces (any synthface venv)
    .venv/bin/python tests/data/thirdparty/make_fixtures.py images
    # 2. casia_rec/train.{rec,idx} + property with mxnet 1.9.1 (needs numpy < 1.24):
    #    python3.11 -m venv /tmp/mx && /tmp/mx/bin/pip install mxnet==1.9.1 "numpy<1.24"
    /tmp/mx/bin/python tests/data/thirdparty/make_fixtures.py rec
    #    ... and the numpy-1.x protocol-4 .bin with the same interpreter
    /tmp/mx/bin/python tests/data/thirdparty/make_fixtures.py bin
    # 3. the Python 2 .bin files (numpy 1.16: pip2 install --target /tmp/py2np numpy==1.16.6)
    PYTHONPATH=/tmp/py2np python2.7 tests/data/thirdparty/make_fixtures.py bin

Steps 2 and 3 use only the standard library plus mxnet or numpy, so that the bytes are
exactly what those programs write. ``README.md`` here lists what each file is.
"""

# Steps 2 and 3 run on Python 2.7: keep its syntax (print_function, % formatting, the
# version switch) whatever the project's Python floor says.
# ruff: noqa: UP010, UP031, UP036
from __future__ import print_function

import os
import pickle
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "images")
IDENTITIES = 3
PER_IDENTITY = 3
MAGIC = b"\x0a\x23\xd7\xce"  # 0xced7230a little-endian


def image_names():
    """``[(label, file name)]`` in record order (identity-sorted, as CASIA's train.rec)."""
    names = []
    for label in range(IDENTITIES):
        for index in range(PER_IDENTITY):
            ext = "png" if (label, index) == (1, 2) else "jpg"
            names.append((label, "%d_%d.%s" % (label, index, ext)))
    return names


def make_images():
    import numpy as np

    from synthface.pipeline.shards import encode_image
    from synthface.pipeline.world.dataset import render_images

    if not os.path.isdir(IMAGES):
        os.makedirs(IMAGES)
    jobs = [(label, int(name[2]), None) for label, name in image_names()]
    rendered = render_images(jobs, seed=24, split="train", size=32)
    for (_, name), (_, _, image, _) in zip(image_names(), rendered):
        data = encode_image(np.asarray(image), name.rsplit(".", 1)[1])
        if name == "2_1.jpg":
            # a JPEG comment holding the RecordIO magic at a 4-byte-aligned offset of the
            # record (24-byte IRHeader + 6 bytes of SOI and COM header + 2): mxnet splits it
            comment = b"xx" + MAGIC + b"yy"
            data = data[:2] + b"\xff\xfe" + bytes([0, len(comment) + 2]) + comment + data[2:]
        with open(os.path.join(IMAGES, name), "wb") as f:
            f.write(data)


def read_image(name):
    with open(os.path.join(IMAGES, name), "rb") as f:
        return f.read()


def make_rec():
    """Records as insightface's CASIA-WebFace ``train.rec``: header 0 with label
    ``(N + 1, N + 1 + C)``, images ``1..N`` with scalar labels, then one record per identity
    whose label is its ``(first, end)`` image-key range."""
    import mxnet as mx

    out = os.path.join(HERE, "casia_rec")
    if not os.path.isdir(out):
        os.makedirs(out)
    names = image_names()
    n = len(names)
    rec = mx.recordio.MXIndexedRecordIO(
        os.path.join(out, "train.idx"), os.path.join(out, "train.rec"), "w"
    )
    rec.write_idx(
        0, mx.recordio.pack(mx.recordio.IRHeader(2, [n + 1, n + 1 + IDENTITIES], 0, 0), b"")
    )
    for key, (label, name) in enumerate(names, start=1):
        header = mx.recordio.IRHeader(0, float(label), key, 0)
        rec.write_idx(key, mx.recordio.pack(header, read_image(name)))
    for label in range(IDENTITIES):
        keys = [k for k, (lab, _) in enumerate(names, start=1) if lab == label]
        header = mx.recordio.IRHeader(2, [keys[0], keys[-1] + 1], n + 1 + label, 0)
        rec.write_idx(n + 1 + label, mx.recordio.pack(header, b""))
    rec.close()
    with open(os.path.join(out, "property"), "w") as f:
        f.write("%d,32,32\n" % IDENTITIES)
    print("mxnet", mx.__version__, "wrote", out)


def make_bins():
    """lfw.bin as insightface's ``lfw2pack.py`` writes it: ``pickle.dump((bins,
    issame_list), f, protocol=pickle.HIGHEST_PROTOCOL)``, bins = the image files' bytes."""
    import numpy as np

    names = [name for _, name in image_names()][:8]
    bins = [read_image(name) for name in names]
    issame = [True, False, True, False]
    top = pickle.HIGHEST_PROTOCOL  # 2 on Python 2, 5 on Python 3.8+
    if sys.version_info[0] == 2:
        variants = {
            "lfw_py2_list.bin": (issame, top),  # lfw2pack: a list of Python bools
            "lfw_py2_npbool.bin": ([np.bool_(v) for v in issame], top),  # numpy bools
            "lfw_py2_ndarray.bin": (np.array(issame), top),  # a numpy bool array
        }
    else:  # numpy 1.x on Python 3: the array through _reconstruct (4) and _frombuffer (5)
        variants = {
            "lfw_np1_p4_ndarray.bin": (np.array(issame), 4),
            "lfw_np1_p5_ndarray.bin": (np.array(issame), top),
        }
    for fname, (labels, protocol) in variants.items():
        with open(os.path.join(HERE, fname), "wb") as f:
            pickle.dump((bins, labels), f, protocol=protocol)
    print("python", sys.version.split()[0], "numpy", np.__version__, "wrote", sorted(variants))


if __name__ == "__main__":
    {"images": make_images, "rec": make_rec, "bin": make_bins}[sys.argv[1]]()
