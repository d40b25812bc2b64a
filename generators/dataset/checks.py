"""Checks of a generation config against the files it names, before anything is written.

Every shard task and the plan step ask the same questions (which checkpoint, which
generator, which encoder, which QC recognizer); answering them in one place keeps the
error messages identical wherever a run fails.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.region import REGION_FILE
from synthface.pipeline.atomic import file_sha256, model_digest
from synthface.pipeline.errors import ConfigError, InputError


def checkpoint_dir(cfg: GenerateConfig) -> Path:
    path = Path(cfg.generator.checkpoint)
    if not (path / "config.json").is_file():
        what = "no such directory" if not path.exists() else "no config.json in it"
        raise InputError(
            f"generator.checkpoint: {path}: not a generator checkpoint ({what}); "
            "train one (`make demo` builds the demo's) or point generator.checkpoint at one"
        )
    return path


def _generators():
    from synthface.generators.base import GENERATORS  # torch: imported only when checking

    return GENERATORS


def _hashed_files(path: Path) -> list[Path]:
    reg = _generators()
    extra = sorted({f for name in reg.names() for f in reg.get(name).extra_files})
    names = ("config.json", "model.safetensors", "attribute_prior.json", REGION_FILE, *extra)
    files = [path / n for n in names if (path / n).is_file()]
    # a latent generator decodes with autoencoder/ (diffusers' folder): its weights make
    # the images as much as the denoiser's do
    decoder = path / "autoencoder"
    return files + sorted(f for f in decoder.rglob("*") if f.is_file())


# (resolved directory, (relative name, size, mtime_ns, ctime_ns, inode) of each hashed
# file) -> sha256. A worker hashes a checkpoint once, not once per shard (UIFace's is
# ~865 MB); a file rewritten or replaced changes one of those and is hashed again.
_HASHES: dict[tuple, str] = {}
_HASH_LOCK = threading.Lock()


def checkpoint_sha256(path: str | Path) -> str:
    """Hash of a generator checkpoint's config, weights (its autoencoder's too) and fitted
    files, not its path."""
    path = Path(path).resolve()
    files = _hashed_files(path)
    stats = [(f.relative_to(path).as_posix(), f.stat()) for f in files]
    key = (
        str(path),
        tuple((n, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for n, st in stats),
    )
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    h = hashlib.sha256()
    for f, (name, _) in zip(files, stats):
        h.update(name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    with _HASH_LOCK:
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def generator_name(cfg: GenerateConfig, ckpt_cfg) -> str:
    GENERATORS = _generators()
    if cfg.generator.name is not None:
        GENERATORS.get(cfg.generator.name)  # unknown name -> ConfigError listing known ones
        if cfg.generator.name != ckpt_cfg.generator:
            raise ConfigError(
                f"generator.name: {cfg.generator.name!r} but checkpoint {cfg.generator.checkpoint} "
                f"holds a {ckpt_cfg.generator!r} generator"
            )
    GENERATORS.get(ckpt_cfg.generator)
    return ckpt_cfg.generator


def encoder_path(cfg: GenerateConfig, ckpt_cfg) -> str | None:
    return cfg.generator.encoder or ckpt_cfg.encoder.path


def qc_recognizer_path(cfg: GenerateConfig, ckpt_cfg) -> str:
    path = cfg.qc.recognizer or encoder_path(cfg, ckpt_cfg)
    if path is None:
        raise ConfigError(
            "qc.recognizer: not set and the generator checkpoint names no encoder; "
            "give an evaluation recognizer (checkpoint directory or .onnx)"
        )
    if not Path(path).exists():
        field = "qc.recognizer" if cfg.qc.recognizer else "generator.encoder"
        raise InputError(f"{field}: {path}: no such recognizer")
    return path


def _guidance_scale(cfg: GenerateConfig, ckpt_cfg) -> float:
    scale = cfg.generator.id_guidance_scale
    return ckpt_cfg.sampler.id_guidance_scale if scale is None else scale


def uses_guidance(cfg: GenerateConfig, ckpt_cfg, name: str) -> bool:
    """Whether sampling will call the identity encoder (never for uiface)."""
    return _generators().get(name).uses_identity_guidance and _guidance_scale(cfg, ckpt_cfg) > 0


def check_identity_guidance(cfg: GenerateConfig, ckpt_cfg, name: str) -> None:
    """Identity guidance needs the conditioning encoder: say so before anything is written."""
    if uses_guidance(cfg, ckpt_cfg, name) and encoder_path(cfg, ckpt_cfg) is None:
        raise ConfigError(
            f"generator.id_guidance_scale: identity guidance ({_guidance_scale(cfg, ckpt_cfg)}) "
            "needs --encoder / generator.encoder or the checkpoint's encoder.path; set it to 0 "
            "to sample without"
        )


def check_sampler_options(cfg: GenerateConfig, ckpt_cfg, name: str) -> None:
    """Generator-specific sampler switches are checked before anything is written."""
    try:
        _generators().get(name).validate_sampler_options(ckpt_cfg, cfg.generator.sampler_options)
    except InputError as exc:
        raise ConfigError(f"generator.sampler_options: {exc}") from None


def model_digests(cfg: GenerateConfig, ckpt_cfg, name: str) -> dict[str, str]:
    """The hashes of the models besides the generator that shape the dataset's bytes: the
    identity encoder when it guides sampling, the QC recognizer (the encoder itself when
    ``qc.recognizer`` is unset), the leak gallery and the quality model."""
    out = {"qc.recognizer": model_digest(qc_recognizer_path(cfg, ckpt_cfg))}
    if uses_guidance(cfg, ckpt_cfg, name):
        out["encoder"] = model_digest(encoder_path(cfg, ckpt_cfg))
    for key in ("gallery", "quality_model"):
        if getattr(cfg.qc, key) is not None:
            out[f"qc.{key}"] = model_digest(getattr(cfg.qc, key))
    return out


def weights_sha256(path: str | Path) -> str | None:
    p = Path(path)
    f = p / "model.safetensors" if p.is_dir() else p
    return file_sha256(f)[0] if f.is_file() else None


def qc_uses_conditioning_encoder(cfg: GenerateConfig, ckpt_cfg) -> bool:
    """True when the QC recognizer is the generator's conditioning encoder (or a copy of it)."""
    qc = qc_recognizer_path(cfg, ckpt_cfg)
    enc = encoder_path(cfg, ckpt_cfg)
    if enc is None or not Path(enc).exists():
        return False
    if Path(qc).resolve() == Path(enc).resolve():
        return True
    same = weights_sha256(qc)
    return same is not None and same == weights_sha256(enc)


QC_INFLATED = (
    "qc.recognizer is the generator's own conditioning encoder: the generator was trained "
    "(and is guided) to please exactly this recognizer, so its QC scores are inflated; give "
    "qc.recognizer an independent recognizer the generator never saw"
)
