"""A dataset's QC report: markdown, similarity histograms and a contact sheet (PNG).

One streaming pass over the shards: per-sample scores are accumulated into fixed-bin
histograms (memory does not grow with the dataset) and only the images of the few
identities picked for the contact sheet are decoded. Output bytes are a function of the
dataset, the seed and the optional real reference (PNG written without timestamps), so
re-runs reproduce the report.

A real reference puts real identities above the generated ones on the contact sheet, at
the generated images' size, so that a reader judges the samples against what the
generator was meant to draw rather than in isolation.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.shards import (
    decode_image,
    load_identity_array,
    shard_paths,
    split_manifest,
)

REPORT_DIR = "report"
BINS = np.linspace(-1.0, 1.0, 101)
QUALITY_BINS = np.linspace(0.0, 100.0, 51)  # quality outside 0..100 lands in the end bins
MIN_TILE = 64  # pixels
REAL_LABEL = "real"  # label prefix of the reference rows on the contact sheet


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _histogram_png(series: list[tuple[str, np.ndarray, bool]], title: str) -> bytes:
    """``series``: (label, counts over BINS or raw values, is_counts)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    centers = 0.5 * (BINS[1:] + BINS[:-1])
    width = BINS[1] - BINS[0]
    for label, data, is_counts in series:
        counts = data if is_counts else np.histogram(data[np.isfinite(data)], BINS)[0]
        total = max(int(counts.sum()), 1)
        ax.bar(
            centers,
            counts / total,
            width=width,
            alpha=0.55,
            label=f"{label} (n={int(counts.sum())})",
        )
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _quality_png(counts: np.ndarray, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    centers = 0.5 * (QUALITY_BINS[1:] + QUALITY_BINS[:-1])
    ax.bar(centers, counts / max(int(counts.sum()), 1), width=QUALITY_BINS[1] - QUALITY_BINS[0])
    ax.set_xlabel("face image quality (SDD-FIQA scale)")
    ax.set_ylabel("fraction of samples")
    ax.set_title(f"{title} (n={int(counts.sum())})")
    fig.tight_layout()
    return _png(fig)


def _contact_sheet_png(blocks: list[list[tuple[str, list[np.ndarray]]]]) -> bytes:
    """Blocks of labelled rows, one row per identity, stacked top to bottom with a grey rule
    between blocks; as many columns as the fullest row has samples (a dataset with fewer
    samples than asked for gets no empty columns)."""
    from PIL import Image, ImageDraw, ImageFont

    blocks = [b for b in blocks if b]
    first = blocks[-1][0][1][0]  # the generated images set the tile size
    # Small images (the CPU demo's 32 px) are enlarged by pixel repetition to be visible.
    scale = max(1, -(-MIN_TILE // first.shape[0]))
    h, w = first.shape[0] * scale, first.shape[1] * scale
    cols = max(len(images) for block in blocks for _, images in block)
    font = ImageFont.load_default(size=max(10, h // 4))
    label_w = max(int(font.getlength(label)) for block in blocks for label, _ in block) + 8
    rule = max(6, h // 8)  # height of the band between two blocks
    rows = sum(len(block) for block in blocks)
    width = label_w + cols * (w + 2)
    sheet = Image.new("RGB", (width, rows * (h + 2) + (len(blocks) - 1) * rule), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for b, block in enumerate(blocks):
        if b:
            draw.rectangle((0, y + rule // 2 - 1, width - 1, y + rule // 2), fill=(128, 128, 128))
            y += rule
        for label, images in block:
            top, bottom = draw.textbbox((0, 0), label, font=font)[1::2]
            draw.text((4, y + (h - top - bottom) // 2), label, fill="black", font=font)
            for c, img in enumerate(images):
                tile = Image.fromarray(np.repeat(np.repeat(img, scale, 0), scale, 1))
                if tile.size != (w, h):
                    tile = tile.resize((w, h))
                sheet.paste(tile, (label_w + c * (w + 2), y))
            y += h + 2
    buf = io.BytesIO()
    sheet.save(buf, "PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def check_reference(
    dataset_dir: str | Path, split: str = "train", field: str = "report.reference"
) -> dict:
    """The ``split`` entry of a real reference dataset, or one ``InputError`` naming
    ``field`` and the path; called when a run is planned, so that a wrong path fails
    before hours of generation rather than in the report at the end."""
    try:
        entry = split_manifest(dataset_dir, split)
        missing = [p for p in shard_paths(dataset_dir, split) if not p.is_file()]
    except ShardError as exc:
        raise InputError(f"{field}: {exc}") from None
    if missing:
        raise InputError(f"{field}: {missing[0]}: shard missing; run `synthface shards verify`")
    if int(entry["num_identities"]) < 1 or int(entry["num_samples"]) < 1:
        raise InputError(f"{field}: {dataset_dir} (split {split}): no samples")
    return entry


def to_size(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``img`` at the height and width of ``shape`` (antialiased when it shrinks), so a real
    face is shown at the resolution the generated ones have."""
    if img.shape[:2] == tuple(shape[:2]):
        return img
    from PIL import Image

    resized = Image.fromarray(img).resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
    return np.asarray(resized)


def _reference_rows(
    dataset_dir: Path, split: str, count: int, samples: int, seed: int
) -> dict[int, list[np.ndarray]]:
    """The first ``samples`` images of ``count`` real identities picked with ``seed``
    (a stream of its own, so the generated rows stay the ones picked without a reference)."""
    from synthface.pipeline.shards import iter_samples

    classes = int(check_reference(dataset_dir, split)["num_identities"])
    rng = np.random.default_rng([seed, 1])
    picked = set(rng.choice(classes, size=min(count, classes), replace=False).tolist())
    rows: dict[int, list[np.ndarray]] = {}
    for s in iter_samples(dataset_dir, split, decode=False):
        label = s["label"]
        if label in picked and len(rows.setdefault(label, [])) < samples:
            rows[label].append(decode_image(s["image"], s["__key__"]))
            if len(rows) == len(picked) and all(len(v) == samples for v in rows.values()):
                break  # identity-ordered datasets (the world's) stop early
    return {k: v for k, v in rows.items() if v}


def _fmt(x) -> str:
    return "–" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _quality_rule(th: dict) -> str:
    if not th.get("quality_model"):
        return "no quality model"
    if th.get("min_quality") is None:
        return "quality scored, no threshold"
    return f"quality < {th['min_quality']}"


def write_report(
    dataset_dir: str | Path,
    *,
    split: str = "train",
    contact_identities: int = 8,
    contact_samples: int = 8,
    seed: int = 0,
    reference: str | Path | None = None,
    reference_split: str = "train",
) -> dict[str, Path]:
    """Write ``report/report.md``, ``report/similarity.png``, ``report/contact_sheet.png``
    and, when samples carry a quality score, ``report/quality.png``.

    ``reference``: a finished dataset of real faces (e.g. ``synthface world make``'s); as
    many of its identities as the sheet has generated rows go on top, labelled "real N".
    """
    from synthface.pipeline.shards import iter_samples

    dataset_dir = Path(dataset_dir)
    entry = split_manifest(dataset_dir, split)
    qc = entry.get("extra", {}).get("qc")
    classes = int(entry["num_identities"])
    rng = np.random.default_rng(seed)
    picked = set(rng.choice(classes, size=min(contact_identities, classes), replace=False).tolist())

    hist = {
        "centroid_cos": np.zeros(len(BINS) - 1, np.int64),
        "anchor_cos": np.zeros(len(BINS) - 1, np.int64),
    }
    quality = np.zeros(len(QUALITY_BINS) - 1, np.int64)
    pending: dict[str, list[float]] = {k: [] for k in (*hist, "quality")}

    def flush() -> None:
        for k, values in pending.items():
            if values and k == "quality":
                clipped = np.clip(values, QUALITY_BINS[0], QUALITY_BINS[-1])
                quality[:] += np.histogram(clipped, QUALITY_BINS)[0]
            elif values:
                hist[k] += np.histogram(values, BINS)[0]
            values.clear()

    sheet: dict[int, list[np.ndarray]] = {}
    for s in iter_samples(dataset_dir, split, decode=False):
        q = s["meta"].get("qc", {})
        for k in pending:
            if k in q:
                pending[k].append(q[k])
        if len(pending["centroid_cos"]) >= 8192:
            flush()
        label = s["label"]
        if label in picked and len(sheet.setdefault(label, [])) < contact_samples:
            sheet[label].append(decode_image(s["image"], s["__key__"]))
    flush()
    genuine, anchor = hist["centroid_cos"], hist["anchor_cos"]

    def array(name: str) -> np.ndarray | None:
        try:
            return load_identity_array(dataset_dir, name, split)
        except ShardError:
            return None

    separation = array("qc_separation")
    gallery = array("qc_gallery_similarity")
    series: list[tuple[str, np.ndarray, bool]] = []
    if genuine.sum():
        series.append(("sample to own centroid", genuine, True))
    if anchor.sum():
        series.append(("sample to own anchor", anchor, True))
    if separation is not None:
        series.append(("centroid to nearest other identity", separation, False))
    if gallery is not None:
        series.append(("centroid to nearest real identity", gallery, False))

    out = dataset_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md"}
    if series:
        paths["similarity"] = out / "similarity.png"
        atomic_write_bytes(
            paths["similarity"], _histogram_png(series, f"{dataset_dir.name}: similarities")
        )
    if quality.sum():
        paths["quality"] = out / "quality.png"
        atomic_write_bytes(paths["quality"], _quality_png(quality, f"{dataset_dir.name}: quality"))
    real: dict[int, list[np.ndarray]] = {}
    if sheet:
        cols = max(len(v) for v in sheet.values())
        if reference is not None:
            shape = next(iter(sheet.values()))[0].shape
            rows = _reference_rows(Path(reference), reference_split, len(sheet), cols, seed)
            real = {k: [to_size(img, shape) for img in v] for k, v in rows.items()}
        paths["contact_sheet"] = out / "contact_sheet.png"
        blocks = [
            [(f"{REAL_LABEL} {i}", real[i]) for i in sorted(real)],
            [(f"id {i}", sheet[i]) for i in sorted(sheet)],
        ]
        atomic_write_bytes(paths["contact_sheet"], _contact_sheet_png(blocks))

    lines = [
        f"# QC report: {dataset_dir.name} ({split})",
        "",
        f"{entry['num_identities']} identities, {entry['num_samples']} samples, "
        f"{entry['num_shards']} shards, {entry['bytes']} bytes.",
        "",
    ]
    if qc:
        lines += [
            "## Identity-level scores",
            "",
            "| score | mean | min | p05 | median | max |",
            "|---|---|---|---|---|---|",
        ]
        for key, label in (
            ("identity_consistency", "consistency (mean cos to centroid)"),
            ("identity_diversity", "diversity (1 - mean pairwise cos)"),
            ("nearest_identity_similarity", "nearest other identity (cos)"),
            ("anchor_cos", "sample to anchor (cos)"),
            ("gallery_similarity", "nearest real identity (cos)"),
            ("identity_quality", "face image quality (SDD-FIQA, identity mean)"),
        ):
            st = qc.get(key)
            if st and st.get("mean") is not None:
                lines.append(
                    f"| {label} | "
                    + " | ".join(_fmt(st[k]) for k in ("mean", "min", "p05", "median", "max"))
                    + " |"
                )
        th = qc["thresholds"]
        lines += [
            "",
            "## Flags",
            "",
            "| flag | count | threshold |",
            "|---|---|---|",
            f"| identities: low_consistency | {qc['flagged_identities']['low_consistency']} | mean cos < {th['min_identity_consistency']} |",
            f"| identities: not_separated | {qc['flagged_identities']['not_separated']} | nearest other > {th['max_neighbour_similarity']} |",
            f"| identities: leak | {qc['flagged_identities']['leak']} | real gallery > {th['max_gallery_similarity']} ({'no gallery' if th['gallery'] is None else th['leakage_action']}) |",
            f"| identities: too_few_samples | {qc['flagged_identities']['too_few_samples']} | kept < {th['min_samples']} |",
            f"| samples: low_consistency | {qc['flagged_samples']['low_consistency']} | cos to centroid < {th['min_sample_consistency']} |",
            f"| samples: duplicate | {qc['flagged_samples']['duplicate']} | pair cos > {th['duplicate_similarity']} |",
            f"| samples: low_quality | {qc['flagged_samples'].get('low_quality', 0)} | {_quality_rule(th)} |",
            "",
            f"Filtered view `views/{qc['view']['name']}.json` leaves out "
            f"{qc['view']['excluded_identities']} identities and {qc['view']['excluded_samples']} "
            "further samples; the shards themselves are unchanged.",
            "",
        ]
    anchors = (entry.get("extra") or {}).get("anchors")
    if anchors:
        near = anchors.get("anchor_to_nearest_training_cos") or {}
        own = anchors.get("training_nearest_neighbour_cos") or {}
        where = (
            "inside the region of the generator's training identities"
            if anchors.get("anchor_region") == "data"
            else "on the whole sphere"
        )
        margin = anchors.get("max_cos_to_training")
        lines += [
            "## Anchors and novelty",
            "",
            f"Anchors packed {where} ({anchors.get('training_identities')} training "
            "identities, conditioning encoder's space); novelty guard: "
            + ("off" if margin is None else f"no anchor above cos {margin} to any of them")
            + (
                ""
                if anchors.get("anchors_moved") is None
                else f" ({anchors['anchors_moved']} anchors moved to meet it)"
            )
            + ".",
            "",
            "| cos | mean | p95 | max |",
            "|---|---|---|---|",
            "| anchor to nearest training identity | "
            + " | ".join(_fmt(near.get(k)) for k in ("mean", "p95", "max"))
            + " |",
            "| training identity to nearest other | "
            + " | ".join(_fmt(own.get(k)) for k in ("mean", "p95", "max"))
            + " |",
            "",
        ]
    if "similarity" in paths:
        lines += ["## Similarities", "", "![similarities](similarity.png)", ""]
    if "quality" in paths:
        lines += ["## Face image quality", "", "![quality](quality.png)", ""]
    if "contact_sheet" in paths:
        lines += ["## Contact sheet", ""]
        if real:
            ref_hash = split_manifest(reference, reference_split).get("config_hash")
            lines += [
                f"Top rows, labelled `{REAL_LABEL} N`: real identities "
                f"{', '.join(str(i) for i in sorted(real))} of the dataset `{reference}` "
                f"(split {reference_split}"
                + (f", config hash {ref_hash[:12]}" if ref_hash else "")
                + f"; seed {seed}), their first {max(len(v) for v in real.values())} "
                "samples, resized to the generated images' size; below the grey rule, "
                "the generated identities.",
                "",
            ]
        lines += [
            f"{'Generated rows' if real else 'Rows'}: identities "
            f"{', '.join(str(i) for i in sorted(sheet))} (seed {seed}), "
            f"labelled; columns: their first "
            f"{max(len(v) for v in sheet.values())} samples.",
            "",
            "![contact sheet](contact_sheet.png)",
            "",
        ]
    atomic_write_bytes(paths["markdown"], "\n".join(lines).encode())
    return paths
