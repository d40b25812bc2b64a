"""``shards annotate``: add what generator training needs to a real shard set.

Shards made from real photographs (``shards from-folder`` / ``from-rec``) hold images and
labels. The generators condition on an identity embedding per image (the ``.npy`` member
that ``data.use_cached_embeddings`` reads) and, for ID³, on pose and age
(``meta["attributes"]["yaw" | "pitch" | "roll" | "age"]``, degrees and years). This
module writes a new dataset with the same keys, labels and image bytes plus those:

* embeddings from the user's recognizer (an insightface ONNX model or a synthface
  checkpoint, through :func:`synthface.recognition.load_embedder`);
* pose from insightface's ``1k3d68.onnx`` and age (and gender) from ``genderage.onnx``
  when given (:mod:`.insightface_models`), otherwise from an estimator trained on the
  procedural world (:mod:`.world_model`), or none with ``attributes=False``.

Source shard *i* becomes output shard *i* (same samples, same order), so the work
streams one batch at a time and resumes per shard: a shard whose tar and record are
complete is skipped on a re-run, exactly like the other writers. Every number written
is a function of the image and the models (batches never cross a shard), so a resumed
run writes the bytes an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthface.pipeline.atomic import model_digest
from synthface.pipeline.errors import InputError
from synthface.pipeline.output_paths import check_output_outside
from synthface.pipeline.shards import (
    Sample,
    ShardWriter,
    begin_dataset,
    completed_shards,
    finalize_dataset,
    parse_key,
    split_manifest,
)
from synthface.pipeline.shards.decode import image_member, to_sample
from synthface.pipeline.shards.manifest import load_identity_array, release_dataset, shard_paths
from synthface.pipeline.shards.writer import RECORDS_DIR, SHARDS_DIR

POSE = ("yaw", "pitch", "roll")
DECIMALS = 3  # attribute values as written: stable JSON, far below any model's accuracy

Estimator = Callable[[Sequence[np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Annotators:
    """The loaded models and, per attribute, the estimator that provides it."""

    embedder: Any
    estimators: list[tuple[str, Estimator, tuple[str, ...]]] = field(default_factory=list)
    resize: bool = False
    flip: bool = False

    @property
    def provides(self) -> dict[str, str]:
        return {name: where for where, _, names in self.estimators for name in names}

    def _recognizer_input(self, images: Sequence[np.ndarray], keys: Sequence[str]) -> np.ndarray:
        h, w = self.embedder.input_size
        out = []
        for image, key in zip(images, keys):
            if image.shape[:2] != (h, w):
                if not self.resize:
                    raise InputError(
                        f"sample {key}: image is {image.shape[0]}x{image.shape[1]}, the "
                        f"recognizer takes {h}x{w} aligned crops (pass --resize to resize)"
                    )
                from PIL import Image

                image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
            out.append(image)
        return np.stack(out)

    def __call__(self, images: Sequence[np.ndarray], keys: Sequence[str]):
        """(embeddings (N, D) float32, per-image attribute dicts)."""
        emb = self.embedder.embed(self._recognizer_input(images, keys), flip=self.flip)
        attrs: list[dict[str, float]] = [{} for _ in images]
        for where, estimator, names in self.estimators:
            values = estimator(images)
            for name in names:
                column = np.asarray(values[name], dtype=np.float64)
                if not np.isfinite(column).all():
                    bad = keys[int(np.argmin(np.isfinite(column)))]
                    raise InputError(f"sample {bad}: {where} gave a non-finite {name}")
                for row, v in zip(attrs, column):
                    row[name] = round(float(v), DECIMALS)
        return emb, attrs


def load_annotators(
    recognizer: str | Path,
    *,
    landmark_model: str | Path | None = None,
    genderage_model: str | Path | None = None,
    attribute_model: str | Path | None = None,
    attributes: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    resize: bool = False,
    flip: bool = False,
) -> Annotators:
    """Load every model (each checked before any output is claimed)."""
    from synthface.recognition.embedder import load_embedder

    if not attributes and (landmark_model or genderage_model or attribute_model):
        raise InputError(
            "--no-attributes contradicts --landmark-model/--genderage-model/--attribute-model"
        )
    if attributes and not (landmark_model or genderage_model or attribute_model):
        raise InputError(
            "no pose/age source: give --landmark-model 1k3d68.onnx and --genderage-model "
            "genderage.onnx (insightface model pack), or --attribute-model DIR (train one on "
            "the procedural world: `synthface recognition train-attributes`), or "
            "--no-attributes (embeddings only, e.g. for UIFace)"
        )
    ann = Annotators(
        load_embedder(recognizer, device=device, threads=threads), resize=resize, flip=flip
    )
    if not attributes:
        return ann
    from synthface.recognition.attributes.insightface_models import (
        GenderAgeModel,
        LandmarkPoseModel,
    )

    need = {"yaw", "pitch", "roll", "age"}
    if landmark_model:
        ann.estimators.append(
            (Path(landmark_model).name, LandmarkPoseModel(landmark_model, device, threads), POSE)
        )
        need -= set(POSE)
    if genderage_model:
        ann.estimators.append(
            (
                Path(genderage_model).name,
                GenderAgeModel(genderage_model, device, threads),
                ("age", "gender"),
            )
        )
        need.discard("age")
    if need:
        if not attribute_model:
            raise InputError(
                f"no source for {', '.join(sorted(need))}: add --attribute-model DIR (a world-"
                "trained estimator) or the insightface model that provides them"
            )
        from synthface.recognition.attributes.world_model import load_attribute_model

        world = load_attribute_model(attribute_model)
        missing = need - set(world.cfg.outputs)
        if missing:
            raise InputError(f"{attribute_model}: estimates no {', '.join(sorted(missing))}")
        ann.estimators.append(
            (f"world estimator {Path(attribute_model).name}", world, tuple(sorted(need)))
        )
    elif attribute_model:
        raise InputError(
            "--attribute-model is unused: --landmark-model and --genderage-model already give "
            "pose and age; drop one of them"
        )
    return ann


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def remove_dead_leftovers(out: Path, split: str) -> list[Path]:
    """Delete temporary files of writers that died (``.{split}-NNNNNN.*.tmp-PID`` whose PID
    no longer runs): a killed run leaves its half-written shard under such a name, which
    ``shards verify`` would report after the rerun."""
    removed = []
    for sub in (SHARDS_DIR, RECORDS_DIR):
        for path in sorted((out / sub).glob(f".{split}-*.tmp-*")):
            pid = path.name.rsplit(".tmp-", 1)[1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _batches(raws: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for raw in raws:
        batch.append(raw)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def annotate_shard(
    ann: Annotators, src_shard: Path, out: Path, index: int, split: str, batch_size: int
) -> Any:
    """Source shard -> output shard ``index`` (the same samples with embeddings and attributes)."""
    from synthface.pipeline.shards.index_reader import iter_raw

    writer = ShardWriter(out, index, split=split)
    try:
        for batch in _batches(iter_raw(src_shard), batch_size):
            samples = [to_sample(raw, decode=True) for raw in batch]
            keys = [f"{src_shard.name}: {s['__key__']}" for s in samples]
            emb, attrs = ann([s["image"] for s in samples], keys)
            for raw, s, e, a in zip(batch, samples, emb, attrs):
                parsed = parse_key(s["__key__"])
                if parsed is None or parsed[0] != s["label"]:
                    raise InputError(f"{src_shard}: sample {s['__key__']!r}: key and .cls disagree")
                meta = dict(s["meta"])
                old = meta.get("attributes")
                meta["attributes"] = {**(old if isinstance(old, dict) else {}), **a}
                ext = image_member(raw)
                writer.add(Sample(parsed[0], parsed[1], bytes(raw[ext]), ext, meta, e))
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def annotate_dataset(
    src: str | Path,
    out: str | Path,
    *,
    recognizer: str | Path,
    landmark_model: str | Path | None = None,
    genderage_model: str | Path | None = None,
    attribute_model: str | Path | None = None,
    attributes: bool = True,
    split: str = "train",
    batch_size: int = 64,
    device: str = "cpu",
    threads: int | None = None,
    resize: bool = False,
    flip: bool = False,
) -> dict:
    """Annotate every shard of ``src`` into ``out``; returns the manifest."""
    from synthface.pipeline.progress import progress_bar

    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be >= 1")
    src, out = Path(src), Path(out)
    entry = split_manifest(src, split)
    check_output_outside(out, "output", source=src)
    ann = load_annotators(
        recognizer,
        landmark_model=landmark_model,
        genderage_model=genderage_model,
        attribute_model=attribute_model,
        attributes=attributes,
        device=device,
        threads=threads,
        resize=resize,
        flip=flip,
    )
    models = {
        name: None if path is None else {"file": Path(path).name, "sha256": model_digest(path)}
        for name, path in (
            ("recognizer", recognizer),
            ("landmark_model", landmark_model),
            ("genderage_model", genderage_model),
            ("attribute_model", attribute_model),
        )
    }
    config = {
        "converter": "annotate",
        "source": str(src.resolve()),
        "source_shards": [s["sha256"] for s in entry["shards"]],
        "models": models,
        "provides": ann.provides,
        "resize": resize,
        "flip": flip,
    }
    created = not out.exists()
    begin_dataset(out, config=config, split=split)
    remove_dead_leftovers(out, split)
    done = completed_shards(out, split=split)
    shards = shard_paths(src, split)
    counts = [int(s["num_samples"]) for s in entry["shards"]]
    try:
        with progress_bar(sum(counts), desc="annotate") as bar:
            for i, (path, n) in enumerate(zip(shards, counts)):
                if i in done and done[i].num_samples == n:
                    bar.update(n)
                    continue
                annotate_shard(ann, path, out, i, split, batch_size)
                bar.update(n)
    except BaseException:
        # Complete shards stay for the rerun; a run that wrote none gives up its claim.
        if release_dataset(out, config=config, split=split) and created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    arrays = {
        name: load_identity_array(src, name, split)
        for name in entry.get("arrays", {})
        if name != "identity_counts"
    }
    extra = {"annotate": {"provides": ann.provides, "models": models, "source": str(src)}}
    return finalize_dataset(
        out,
        config=config,
        num_classes=int(entry["num_identities"]),
        identity_arrays=arrays,
        split=split,
        extra=extra,
    )
