"""Produce a synthetic identity set: prepare (anchors + shard plan), one shard, or all of it.

These are plain functions; the ``generate-synthetic`` Prefect flow only orders them.
``produce_shard`` is the unit of work and of resume: it generates every image of its
identities, embeds them with the evaluation recognizer, scores them (``synthface.pipeline.qc``;
face image quality too when ``qc.quality_model`` is set),
writes the QC sidecar and then the shard atomically. A shard that
``completed_shards`` vouches for is skipped, so re-runs and retried tasks only redo
missing or corrupt shards; everything a shard contains is a function of the config and
the shard's index, so the finished dataset is byte-identical to an uninterrupted run.

Models are loaded once per concurrently running shard (:func:`borrow_producer` pools
them), not once per shard: threads never share a model, because some generators
(UIFace) swap the UNet's attention processors while sampling. The device is resolved by the worker that
produces the shard (``synthface.generators.placement``), which also logs who made it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.generators.checkpoint import read_generator_provenance
from synthface.generators.placement import Placement, worker_placement, write_provenance
from synthface.generators.region import REGION_FILE
from synthface.generators.space import check_gallery, plan_spaces, qc_scores_anchors
from synthface.pipeline.atomic import atomic_write_bytes, atomic_write_json, file_sha256
from synthface.pipeline.embedding_space import space_record_path, write_anchor_space
from synthface.pipeline.errors import ConfigError, InputError
from synthface.pipeline.generate_plan import (
    GenerateConfig,
    ShardWork,
    anchors_path,
    dataset_config,
    novelty_path,
    plan_generation,
    read_plan,
    write_plan,
)
from synthface.pipeline.output_paths import check_output_outside
from synthface.pipeline.progress import progress_bar
from synthface.pipeline.qc import read_shard_qc, score_identity, write_shard_qc
from synthface.pipeline.shards import Sample, begin_dataset, encode_image, write_shard
from synthface.pipeline.shards.manifest import config_hash

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- checks
def resolve_device(requested: str, allow_cpu_fallback: bool = False) -> str:
    """``cpu``/``cuda``/``auto`` -> an explicit torch device of this process (``cuda:N``:
    the current one, which a GPU worker's ``CUDA_VISIBLE_DEVICES`` makes its own GPU),
    or a clear error."""
    import torch

    if requested == "cpu":
        return "cpu"
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        return f"cuda:{torch.cuda.current_device()}"
    if requested == "auto":
        return "cpu"
    if allow_cpu_fallback:
        log.warning("generator.device is cuda but no GPU is visible; falling back to the CPU")
        return "cpu"
    raise ConfigError(
        "generator.device: cuda requested but torch sees no GPU "
        "(set generator.allow_cpu_fallback: true to run on the CPU instead)"
    )


def _checkpoint_dir(cfg: GenerateConfig) -> Path:
    path = Path(cfg.generator.checkpoint)
    if not (path / "config.json").is_file():
        what = "no such directory" if not path.exists() else "no config.json in it"
        raise InputError(
            f"generator.checkpoint: {path}: not a generator checkpoint ({what}); "
            "train one (`make demo` builds the demo's) or point generator.checkpoint at one"
        )
    return path


def checkpoint_sha256(path: str | Path) -> str:
    """Hash of a generator checkpoint's config, weights and fitted files (not its path)."""
    from synthface.generators.base import GENERATORS, _register_builtin

    _register_builtin()
    extra = sorted({f for name in GENERATORS.names() for f in GENERATORS.get(name).extra_files})
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "attribute_prior.json", REGION_FILE, *extra):
        f = Path(path) / name
        if f.is_file():
            h.update(name.encode())
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def _generator_name(cfg: GenerateConfig, ckpt_cfg) -> str:
    from synthface.generators.base import GENERATORS, _register_builtin

    _register_builtin()
    if cfg.generator.name is not None:
        GENERATORS.get(cfg.generator.name)  # unknown name -> ConfigError listing known ones
        if cfg.generator.name != ckpt_cfg.generator:
            raise ConfigError(
                f"generator.name: {cfg.generator.name!r} but checkpoint {cfg.generator.checkpoint} "
                f"holds a {ckpt_cfg.generator!r} generator"
            )
    GENERATORS.get(ckpt_cfg.generator)
    return ckpt_cfg.generator


def _encoder_path(cfg: GenerateConfig, ckpt_cfg) -> str | None:
    return cfg.generator.encoder or ckpt_cfg.encoder.path


def _qc_recognizer_path(cfg: GenerateConfig, ckpt_cfg) -> str:
    path = cfg.qc.recognizer or _encoder_path(cfg, ckpt_cfg)
    if path is None:
        raise ConfigError(
            "qc.recognizer: not set and the generator checkpoint names no encoder; "
            "give an evaluation recognizer (checkpoint directory or .onnx)"
        )
    if not Path(path).exists():
        field = "qc.recognizer" if cfg.qc.recognizer else "generator.encoder"
        raise InputError(f"{field}: {path}: no such recognizer")
    return path


def _check_identity_guidance(cfg: GenerateConfig, ckpt_cfg, name: str) -> None:
    """Identity guidance needs the conditioning encoder: say so before anything is written."""
    from synthface.generators.base import GENERATORS

    guidance = cfg.generator.id_guidance_scale
    if guidance is None:
        guidance = ckpt_cfg.sampler.id_guidance_scale
    uses = getattr(GENERATORS.get(name), "uses_identity_guidance", True)
    if uses and guidance > 0 and _encoder_path(cfg, ckpt_cfg) is None:
        raise ConfigError(
            f"generator.id_guidance_scale: identity guidance ({guidance}) needs --encoder / "
            "generator.encoder or the checkpoint's encoder.path; set it to 0 to sample without"
        )


def _uses_guidance(cfg: GenerateConfig, ckpt_cfg, name: str) -> bool:
    from synthface.generators.base import GENERATORS

    guidance = cfg.generator.id_guidance_scale
    if guidance is None:
        guidance = ckpt_cfg.sampler.id_guidance_scale
    return bool(getattr(GENERATORS.get(name), "uses_identity_guidance", True) and guidance > 0)


def _check_sampler_options(cfg: GenerateConfig, ckpt_cfg, name: str) -> None:
    """Generator-specific sampler switches are checked before anything is written."""
    from synthface.generators.base import GENERATORS

    try:
        GENERATORS.get(name).validate_sampler_options(ckpt_cfg, cfg.generator.sampler_options)
    except InputError as exc:
        raise ConfigError(f"generator.sampler_options: {exc}") from None


# --------------------------------------------------------------------------- anchors
def load_anchors(
    path: str | Path, dim: int, count: int | None = None, *, field: str = "identities.anchors"
) -> np.ndarray:
    """Unit embeddings from a ``.npy`` (N x ``dim``), L2-normalised, first ``count`` rows.

    Identity anchors, and the real embeddings that ``generator anchors --within`` packs
    anchors among; ``field`` names the setting in error messages. Never unpickles: an
    object array is refused like any other unreadable file.
    """
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{field}: {path}: cannot read the array ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] != dim or not np.issubdtype(arr.dtype, np.number):
        raise InputError(
            f"{field}: {path}: must be a numeric (N, {dim}) array "
            f"(got shape {arr.shape}, dtype {arr.dtype})"
        )
    if count is not None:
        if arr.shape[0] < count:
            raise InputError(f"{field}: {path}: holds {arr.shape[0]} rows, need {count}")
        arr = arr[:count]
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{field}: {path}: contains NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError(f"{field}: {path}: contains an all-zero row")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def _anchors_sha256(anchors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(anchors, np.float32).tobytes()).hexdigest()


def _store_anchors(path: Path, anchors: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, anchors, allow_pickle=False)
    data = buf.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


# --------------------------------------------------------------------------- prepare
_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)$")


def remove_stale_temporaries(dataset_dir: Path) -> list[Path]:
    """Delete half-written files (``.NAME.tmp-PID``) left by processes that were killed.

    Only files whose writer process no longer exists are removed, so a concurrent
    writer's temporary file is never touched.
    """
    removed = []
    for sub in ("shards", "records", "qc", "plan", "views", "report", "provenance", "."):
        folder = dataset_dir / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            m = _TMP_RE.match(path.name)
            if m is None or not path.is_file():
                continue
            try:
                os.kill(int(m.group(1)), 0)
                continue  # writer still alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _weights_sha256(path: str | Path) -> str | None:
    p = Path(path)
    f = p / "model.safetensors" if p.is_dir() else p
    return file_sha256(f)[0] if f.is_file() else None


def qc_uses_conditioning_encoder(cfg: GenerateConfig, ckpt_cfg) -> bool:
    """True when the QC recognizer is the generator's conditioning encoder (or a copy of it)."""
    qc = _qc_recognizer_path(cfg, ckpt_cfg)
    enc = _encoder_path(cfg, ckpt_cfg)
    if enc is None or not Path(enc).exists():
        return False
    if Path(qc).resolve() == Path(enc).resolve():
        return True
    same = _weights_sha256(qc)
    return same is not None and same == _weights_sha256(enc)


QC_INFLATED = (
    "qc.recognizer is the generator's own conditioning encoder: the generator was trained "
    "(and is guided) to please exactly this recognizer, so its QC scores are inflated; give "
    "qc.recognizer an independent recognizer the generator never saw"
)


def resolve_anchor_region(cfg: GenerateConfig, ckpt: Path):
    """(packing actually used, the checkpoint's identity region or None, warnings)."""
    from synthface.generators.region import load_identity_region

    ids = cfg.identities
    region = load_identity_region(ckpt)
    if ids.anchors is not None:
        return "given", region, []
    if ids.anchor_region == "sphere":
        return "sphere", region, []
    if region is not None:
        return "data", region, []
    if ids.anchor_region == "data":
        raise ConfigError(
            f"identities.anchor_region: data, but {ckpt} stores no {REGION_FILE} (the region "
            "of its training identities); add it with `synthface generator region` or set "
            "identities.anchor_region: sphere"
        )
    if read_generator_provenance(ckpt) is not None:
        # Imported weights: their training data is not here, so no region can be fitted and
        # a silent whole-sphere fallback would be the only outcome; the user must choose.
        raise ConfigError(
            f"identities.anchors: {ckpt} holds imported weights without {REGION_FILE}: give "
            "identities.anchors (--anchors: your contexts .npy, e.g. UIFace's released "
            "ones) or opt in to whole-sphere anchors with identities.anchor_region: sphere "
            "(--anchor-region sphere)"
        )
    return (
        "sphere",
        None,
        [
            f"{ckpt} stores no {REGION_FILE}: anchors fall back to the whole sphere, where "
            "generators draw new identities much less well (docs/generators.md); add it with "
            "`synthface generator region CHECKPOINT --data TRAINING_SHARDS`"
        ],
    )


@dataclass(frozen=True)
class Prepared:
    dataset_dir: Path
    dataset_config: dict
    work: list[ShardWork]
    generator_name: str
    warnings: tuple[str, ...] = ()
    novelty: dict | None = None

    @property
    def num_samples(self) -> int:
        return sum(w.num_samples for w in self.work)


def prepare_generation(cfg: GenerateConfig, *, progress=None) -> Prepared:
    """Check every input, claim the output directory, fix the anchors and the shard plan.

    Fails before any generation on: missing checkpoint, unknown generator, missing
    recognizer or gallery, GPU requested but absent (thread runner only: Dask shards run
    elsewhere, so a head node without GPUs plans and each worker resolves its own device),
    output holding another dataset.
    Anchors are computed once and stored (``plan/anchors.npy``); a resumed run reuses
    them rather than recomputing, so they cannot drift with thread counts. With
    ``identities.anchors`` the given file is validated and its first ``count`` rows are
    stored instead (the dataset's identity then includes their hash, not the path).
    """
    from synthface.generators.checkpoint import read_generator_config

    ckpt = _checkpoint_dir(cfg)
    ckpt_cfg = read_generator_config(ckpt)
    name = _generator_name(cfg, ckpt_cfg)
    _check_identity_guidance(cfg, ckpt_cfg, name)
    _check_sampler_options(cfg, ckpt_cfg, name)
    if cfg.runner.kind == "thread":
        resolve_device(cfg.generator.device, cfg.generator.allow_cpu_fallback)
    _qc_recognizer_path(cfg, ckpt_cfg)
    if cfg.qc.gallery is not None and not Path(cfg.qc.gallery).is_file():
        raise InputError(f"qc.gallery: {cfg.qc.gallery}: no such embeddings file")
    if (
        cfg.qc.quality_model is not None
        and not (Path(cfg.qc.quality_model) / "config.json").is_file()
    ):
        raise InputError(
            f"qc.quality_model: {cfg.qc.quality_model}: not a quality model directory "
            "(synthface quality train writes one)"
        )
    enc = _encoder_path(cfg, ckpt_cfg)
    if enc is not None and not Path(enc).exists():
        raise InputError(f"generator.encoder: {enc}: no such identity encoder")
    dim = ckpt_cfg.conditioning.identity_dim
    given = None
    if cfg.identities.anchors is not None:
        given = load_anchors(cfg.identities.anchors, dim, cfg.identities.count)
    else:
        from synthface.generators.id3.anchors import check_tammes_memory

        check_tammes_memory(cfg.identities.count, dim, ckpt_cfg.id3.anchor_block)
    spaces = plan_spaces(
        cfg,
        ckpt_cfg,
        _qc_recognizer_path(cfg, ckpt_cfg),
        guidance_encoder=cfg.generator.encoder if _uses_guidance(cfg, ckpt_cfg, name) else None,
    )
    if cfg.qc.gallery is not None:
        check_gallery(cfg.qc.gallery, _qc_recognizer_path(cfg, ckpt_cfg))
    warnings: list[str] = []
    if qc_uses_conditioning_encoder(cfg, ckpt_cfg):
        warnings.append(QC_INFLATED)
    mode, region, notes = resolve_anchor_region(cfg, ckpt)
    warnings += notes
    if region is not None and region.dim != dim:
        raise InputError(
            f"{ckpt}/{REGION_FILE}: embeddings of dimension {region.dim}, the generator's "
            f"identity_dim is {dim}"
        )
    max_cos = cfg.identities.novelty_max_cos
    guard = mode in ("data", "sphere") and region is not None and max_cos is not None
    for text in warnings:
        log.warning(text)

    dataset_dir = Path(cfg.output.dir)
    check_output_outside(dataset_dir, "output.dir", **{"generator.checkpoint": ckpt})
    remove_stale_temporaries(dataset_dir)
    dcfg = dataset_config(
        cfg,
        checkpoint_sha256=checkpoint_sha256(ckpt),
        generator_name=name,
        anchors_sha256=None if given is None else _anchors_sha256(given),
        anchor_region=mode,
        novelty_guard=guard,
    )
    begin_dataset(dataset_dir, config=dcfg, split=cfg.output.split)
    work = plan_generation(cfg)
    digest = config_hash(dcfg)
    stored = read_plan(dataset_dir)
    apath = anchors_path(dataset_dir)
    anchors = None
    moved = None  # anchors the novelty guard had to move (known when computed here)
    if given is not None:
        _store_anchors(apath, given)
        anchors = given
    elif stored is not None and stored[0] == digest and apath.is_file():
        try:
            anchors = np.load(apath, allow_pickle=False)
        except (OSError, ValueError):
            anchors = None
        if anchors is not None and anchors.shape != (cfg.identities.count, dim):
            anchors = None
    if anchors is None:
        import torch

        from synthface.generators.id3.anchors import tammes_anchors

        iters = cfg.identities.anchor_iterations
        if iters is None:
            iters = ckpt_cfg.id3.anchor_iterations
        # Reduction order follows the intra-op thread count, and the optimisation amplifies
        # last-bit differences: pin the count so a plan made in a Dask worker (which runs
        # single-threaded) equals one made in the flow process.
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.runner.torch_threads)
        packing = {
            "iterations": iters,
            "block": ckpt_cfg.id3.anchor_block,
            "seed": cfg.identities.seed,
            "progress": progress,
        }
        try:
            if mode == "data":
                from synthface.generators.id3.anchors import anchors_in_region

                anchors = anchors_in_region(
                    region.stats(),
                    cfg.identities.count,
                    variance=cfg.identities.region_variance,
                    **packing,
                )
            else:
                anchors = tammes_anchors(cfg.identities.count, dim, **packing)
        finally:
            torch.set_num_threads(threads)
        anchors = np.ascontiguousarray(anchors.cpu().numpy(), dtype=np.float32)
        if guard:
            from synthface.generators.region import novelty_guard

            anchors, moved = novelty_guard(anchors, region.centroids, max_cos)
        _store_anchors(apath, anchors)
    novelty = None
    if region is not None:
        from synthface.generators.region import novelty_report

        if moved is None and guard:  # anchors reused from the plan: keep the count made then
            from synthface.pipeline.generate_finalize import read_novelty

            moved = (read_novelty(dataset_dir) or {}).get("anchors_moved")
        novelty = {
            "anchor_region": mode,
            "guard": guard,
            "anchors_moved": moved,
            **novelty_report(anchors, region, max_cos if guard else None),
        }
        atomic_write_json(novelty_path(dataset_dir), novelty)
    atomic_write_json(space_record_path(dataset_dir), spaces.to_dict())
    if spaces.anchors is not None:
        write_anchor_space(apath, spaces.anchors)
    write_plan(dataset_dir, dcfg, work)
    return Prepared(dataset_dir, dcfg, work, name, tuple(warnings), novelty)


# --------------------------------------------------------------------------- producer
@dataclass
class Producer:
    """Models one worker keeps loaded across the shards it produces."""

    generator: object
    embedder: object
    anchors_comparable: bool  # QC embeddings live in the anchors' space
    device: str
    quality: object | None = None  # SDD-FIQA QualityScorer when qc.quality_model is set
    key: tuple = ()  # what it was loaded for (the idle pool's key)


# Idle producers by key. A shard borrows one for its duration, so two threads never
# sample with one model (UIFace swaps the attention processors of its UNet while
# sampling), and a model outlives the thread pool of a run (a long-lived `flows serve`
# process loads it once, not once per run). There are at most as many copies as shards
# ever ran at once in this process; one whose shard raised is dropped, not reused.
_IDLE: dict[tuple, list[Producer]] = {}
_LOCK = threading.Lock()


def _producer_key(cfg: GenerateConfig, device: str) -> tuple:
    from synthface.generators.checkpoint import read_generator_config

    ckpt = _checkpoint_dir(cfg)
    ckpt_cfg = read_generator_config(ckpt)
    return (
        str(ckpt.resolve()),
        checkpoint_sha256(ckpt),
        _encoder_path(cfg, ckpt_cfg),
        _qc_recognizer_path(cfg, ckpt_cfg),
        cfg.qc.recognizer is None,
        cfg.identities.anchors,
        device,
        cfg.qc.quality_model,
        cfg.runner.torch_threads,
    )


def load_producer(cfg: GenerateConfig, device: str | None = None) -> Producer:
    """A newly loaded generator + QC embedder for ``cfg`` on ``device`` (default: resolved
    here); shards borrow pooled ones instead (``borrow_producer``)."""
    from synthface.generators.checkpoint import read_generator_config

    ckpt = _checkpoint_dir(cfg)
    ckpt_cfg = read_generator_config(ckpt)
    if device is None:
        device = resolve_device(cfg.generator.device, cfg.generator.allow_cpu_fallback)
    enc_path = _encoder_path(cfg, ckpt_cfg)
    qc_path = _qc_recognizer_path(cfg, ckpt_cfg)
    import torch

    from synthface.generators.base import load_generator
    from synthface.generators.encoder import load_identity_encoder
    from synthface.recognition import load_embedder

    torch.set_num_threads(cfg.runner.torch_threads)
    # The encoder only matters for identity guidance (never for uiface, whose imported
    # checkpoints name none); QC has its own embedder.
    encoder = None
    if enc_path is not None and _uses_guidance(cfg, ckpt_cfg, ckpt_cfg.generator):
        encoder = load_identity_encoder(enc_path, differentiable=True)
    generator = load_generator(ckpt, encoder=encoder, device=device)
    embedder = load_embedder(qc_path, device=device)
    same_space = qc_scores_anchors(cfg, ckpt_cfg, qc_path)
    quality = None
    if cfg.qc.quality_model is not None:
        from synthface.recognition.quality import QualityScorer

        quality = QualityScorer(cfg.qc.quality_model, device=device)
    key = _producer_key(cfg, device)
    return Producer(generator, embedder, same_space, device, quality, key)


def borrow_producer(cfg: GenerateConfig, device: str) -> Producer:
    """An idle producer for ``cfg`` on ``device``, or a newly loaded one; the caller has
    it to itself until ``return_producer``."""
    key = _producer_key(cfg, device)
    with _LOCK:
        idle = _IDLE.get(key)
        if idle:
            return idle.pop()
    return load_producer(cfg, device)


def return_producer(producer: Producer) -> None:
    with _LOCK:
        _IDLE.setdefault(producer.key, []).append(producer)


def clear_producer_cache() -> None:
    with _LOCK:
        _IDLE.clear()


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize; Pillow widens the filter by the scale factor when shrinking, so a
    downscale (uiface's 128 -> 112 px) is antialiased rather than sampled."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    from PIL import Image

    h, w = size
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in images]
    )


@dataclass(frozen=True)
class ShardResult:
    index: int
    num_samples: int
    sha256: str
    skipped: bool
    seconds: float

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "num_samples": self.num_samples,
            "sha256": self.sha256,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }


def _r(x: float, digits: int = 6) -> float:
    return round(float(x), digits)


def shard_complete(dataset_dir: Path, split: str, index: int):
    """The record of shard ``index`` if its tar matches it (size and sha256), else ``None``.

    ``completed_shards`` answers the same for every shard at once; a shard task only needs
    its own, and hashing all shards in every task would make a run quadratic in I/O.
    """
    from synthface.pipeline.atomic import file_sha256
    from synthface.pipeline.shards.writer import SHARDS_DIR, read_record, record_path

    record = read_record(record_path(dataset_dir, split, index))
    if record is None or record.index != index or record.split != split:
        return None
    tar = dataset_dir / SHARDS_DIR / record.name
    try:
        if tar.stat().st_size != record.bytes or file_sha256(tar)[0] != record.sha256:
            return None
    except OSError:
        return None
    return record


def produce_shard(
    cfg: GenerateConfig,
    work: ShardWork,
    *,
    producer: Producer | None = None,
    placement: Placement | None = None,
    progress: Callable[[int], None] | None = None,
) -> ShardResult:
    """Generate, embed, score and write shard ``work.index`` (skipped when already complete).

    ``placement`` (default: resolved here) is the device and worker; it is logged in
    ``provenance/`` after the shard is written. ``progress(n)`` is called as each batch
    of ``n`` images is done.
    """
    dataset_dir = Path(cfg.output.dir)
    done = shard_complete(dataset_dir, work.split, work.index)
    if done is not None and read_shard_qc(dataset_dir, work.split, work.index) is not None:
        return ShardResult(work.index, done.num_samples, done.sha256, True, 0.0)
    started, t0 = time.time(), time.perf_counter()
    if placement is None:
        placement = worker_placement(cfg.generator.device, cfg.generator.allow_cpu_fallback)
    borrowed = producer is None
    if borrowed:
        producer = borrow_producer(cfg, placement.device)
    gen, emb = producer.generator, producer.embedder
    if not hasattr(gen, "dataset_conditions"):
        raise ConfigError(f"generator {gen.name!r} cannot sample dataset conditions")
    anchors = np.load(anchors_path(dataset_dir), mmap_mode="r", allow_pickle=False)
    m = work.samples_per_identity
    chunk = max(1, cfg.generator.batch_size // m)
    attr_names = list(gen.attribute_names)
    samples: list[Sample] = []
    scores = []
    for a in range(work.first_identity, work.last_identity + 1, chunk):
        b = min(a + chunk, work.last_identity + 1)
        cond = gen.dataset_conditions(np.asarray(anchors[a:b]), m, seed=work.seed, first_identity=a)
        n = (b - a) * m
        ident = cond["identity"].reshape(n, -1)
        attrs = cond["attributes"].reshape(n, -1) if attr_names else None
        seeds = cond["seeds"].reshape(n)
        decided: list[dict] = []
        images = gen.generate(
            ident,
            attrs,
            seeds.tolist(),
            sampler=cfg.generator.sampler,
            steps=cfg.generator.steps,
            guidance_scale=cfg.generator.guidance_scale,
            id_guidance_scale=cfg.generator.id_guidance_scale,
            batch_size=cfg.generator.batch_size,
            precision=cfg.generator.precision,
            sampler_options=cfg.generator.sampler_options,
            sample_meta=decided,
        )
        if cfg.output.image_size is not None:  # what is stored is what QC scores
            images = _resize(images, (cfg.output.image_size, cfg.output.image_size))
        vectors = emb.embed(_resize(images, emb.input_size), batch_size=cfg.qc.batch_size)
        quality = None
        if producer.quality is not None:
            quality = producer.quality.score(images, batch_size=cfg.qc.batch_size)
        if progress is not None:
            progress(n)
        for k, identity in enumerate(range(a, b)):
            rows = slice(k * m, (k + 1) * m)
            anchor = np.asarray(anchors[identity]) if producer.anchors_comparable else None
            per_sample, summary = score_identity(
                identity,
                vectors[rows],
                cfg.qc,
                anchor=anchor,
                quality=None if quality is None else quality[rows],
            )
            scores.append(summary)
            for j in range(m):
                i = k * m + j
                meta = {
                    "generator": gen.name,
                    "seed": int(seeds[i]),
                    "condition_cos": _r(cond["cos"][k, j]),
                    "qc": per_sample[j],
                    **decided[i],  # what the sampler decided for this image (uiface: switch)
                }
                if attr_names:
                    meta["attributes"] = {
                        name: _r(cond["attributes"][k, j, t], 4)
                        for t, name in enumerate(attr_names)
                    }
                samples.append(
                    Sample(
                        identity=identity,
                        index=j,
                        image=encode_image(
                            images[i], cfg.output.image_format, cfg.output.jpeg_quality
                        ),
                        ext=cfg.output.image_format,
                        meta=meta,
                        embedding=vectors[i] if cfg.output.store_embeddings else None,
                    )
                )
    # Sidecar first: a shard that completed_shards vouches for always has its scores.
    write_shard_qc(dataset_dir, work.split, work.index, scores)
    record = write_shard(dataset_dir, work.index, samples, split=work.split)
    seconds = time.perf_counter() - t0
    write_provenance(
        dataset_dir,
        work.split,
        work.index,
        placement,
        num_samples=record.num_samples,
        sha256=record.sha256,
        started=started,
        seconds=seconds,
    )
    if borrowed:  # only after success: a shard that raised may leave the model mid-swap
        return_producer(producer)
    return ShardResult(work.index, record.num_samples, record.sha256, False, seconds)


def generate_dataset(cfg: GenerateConfig) -> dict:
    """Everything, sequentially, without Prefect: prepare, every shard, finalize."""
    from synthface.pipeline.generate_finalize import finalize_generation

    prepared = prepare_generation(cfg)
    with progress_bar(prepared.num_samples, desc="generating") as bar:
        for work in prepared.work:  # every shard borrows the same pooled producer
            result = produce_shard(cfg, work, progress=bar.update)
            if result.skipped:
                bar.update(result.num_samples)
    summary = finalize_generation(cfg, prepared.dataset_config, prepared.work)
    return {**summary, "warnings": list(prepared.warnings)}
