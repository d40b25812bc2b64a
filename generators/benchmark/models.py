"""Benchmark model stages: recognizers from one recipe, generators from the registry.

Recognizers (the conditioning encoder, the judge and one per training set) are the
recipe file with only the data, output directory and device replaced (plus the
section's ``overrides``), so every training set gets exactly the same recipe. A
generator entry is trained from its config with the benchmark's data, encoder and image
size, or loaded from a checkpoint; either way it must be a registered generator, and
its checkpoint ends up with the identity region of its training identities.
"""

from __future__ import annotations

from pathlib import Path

from synthface.pipeline.config import apply_overrides, load_config, validate_config
from synthface.pipeline.errors import ConfigError, InputError

# Fields of the recipe that the benchmark sets itself; they never enter a stage key
# (the view enters as its own input, and only where one is used).
_RECIPE_OWNED = (
    ("data", "train"),
    ("data", "view"),
    ("train", "output_dir"),
    ("train", "device"),
)


def recipe_config(recipe: str, overrides: list[str], *, device: str):
    """The recipe as a validated ``TrainConfig`` (data.train still a placeholder)."""
    from synthface.recognition.config import TrainConfig

    base = load_config(recipe, TrainConfig, None).model_dump(mode="json")
    data = apply_overrides(base, list(overrides))
    data["train"]["device"] = "auto" if device == "auto" else device
    data["validation"]["sets"] = []  # evaluation is its own stage
    data["logging"]["progress"] = False
    if data["data"].get("view") is not None:
        raise ConfigError(
            f"{recipe}: data.view is set per training set by the benchmark "
            "(recognition.view); leave it out of the recipe"
        )
    return validate_config(data, TrainConfig, f"{recipe} (+ overrides)")


def recipe_key(cfg) -> dict:
    """The recipe's content without what the benchmark sets per run."""
    data = cfg.model_dump(mode="json")
    for section, key in _RECIPE_OWNED:
        data[section].pop(key, None)
    return data


def train_recognizer(stage_dir: Path, recipe, train_dir: str, view: str | None = None) -> dict:
    """Train (or resume) the recipe on ``train_dir`` (through ``view``); returns the model."""
    from synthface.recognition.training import train

    data = recipe.model_dump(mode="json")
    data["data"]["train"] = str(train_dir)
    data["data"]["view"] = view
    data["train"]["output_dir"] = str(stage_dir / "run")
    cfg = type(recipe).model_validate(data)
    result = train(cfg, resume="latest")
    if result.model_dir is None:
        raise InputError(f"{stage_dir}: recognizer training ended without an exported model")
    return {
        "model": str(result.model_dir),
        "steps": int(result.global_step),
        "metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)},
    }


def recognizer_identity(path: str | Path) -> str:
    from synthface.generators.region import encoder_sha256

    if not Path(path).exists():
        raise InputError(f"{path}: no such recognizer")
    return encoder_sha256(path)


def embedding_dim(recognizer: str) -> int:
    from synthface.recognition import load_embedder

    return int(load_embedder(recognizer).dim)


# --------------------------------------------------------------------------- generators
def check_registered(name: str) -> None:
    from synthface.generators.base import GENERATORS

    GENERATORS.get(name)  # unknown name -> ConfigError naming the known ones


def check_sampler_options(entry, config) -> None:
    """Refuse unknown or invalid ``sampler_options`` before anything trains.

    ``config`` is the generator config to be trained, or None for a given checkpoint
    (read from it)."""
    from synthface.generators.base import GENERATORS
    from synthface.generators.checkpoint import read_generator_config

    if not entry.sampler_options:
        return
    if config is None:
        config = read_generator_config(Path(entry.checkpoint))
    try:
        GENERATORS.get(entry.name).validate_sampler_options(config, dict(entry.sampler_options))
    except InputError as exc:
        raise InputError(f"generators[{entry.id}].sampler_options: {exc}") from None


def check_entries(cfg) -> None:
    """Every generator entry names a registered generator and valid sampler options,
    checked before the first stage runs (the encoder's path and width are placeholders:
    the options depend on the generator's own section only)."""
    for entry in cfg.generators:
        check_registered(entry.name)
        if entry.config is not None:
            config = generator_config(
                entry, image_size=cfg.image_size, encoder="unset", data="unset", dim=1
            )
            check_sampler_options(entry, config)
        else:
            check_sampler_options(entry, None)


def generator_config(entry, *, image_size: int, encoder: str, data: str, dim: int):
    """The entry's generator config with the benchmark's data, encoder and sizes."""
    from synthface.generators.config import GeneratorConfig

    base = load_config(entry.config, GeneratorConfig, None).model_dump(mode="json")
    data_ = apply_overrides(base, list(entry.overrides))
    data_["generator"] = entry.name
    data_["image_size"] = image_size
    data_["conditioning"]["identity_dim"] = dim
    data_["encoder"]["path"] = encoder
    data_["data"].update({"source": "shards", "path": data, "use_cached_embeddings": False})
    return validate_config(data_, GeneratorConfig, f"generators[{entry.id}]: {entry.config}")


def generator_key(cfg) -> dict:
    """A generator config's content without its paths (those enter as upstream keys)."""
    data = cfg.model_dump(mode="json")
    data["encoder"].pop("path", None)
    data["data"].pop("path", None)
    data["train"].pop("output_dir", None)
    return data


def train_generator_stage(stage_dir: Path, cfg) -> dict:
    """Train (or resume) the generator into the stage; its final/ stores the identity region."""
    from synthface.generators.encoder import load_identity_encoder
    from synthface.generators.region import REGION_FILE, store_identity_region
    from synthface.generators.training import train_generator

    cfg = cfg.model_copy(deep=True)
    cfg.train.output_dir = str(stage_dir / "run")
    encoder = load_identity_encoder(cfg.encoder.path, differentiable=True)
    result = train_generator(cfg, encoder=encoder, resume=True)
    final = stage_dir / "run" / "final"
    if not (final / "config.json").is_file():
        raise InputError(f"{final}: generator training ended without a final checkpoint")
    if not (final / REGION_FILE).is_file():  # killed between export and region: redo it
        store_identity_region(final, cfg, encoder)
    history = result.get("history") or []
    return {
        "checkpoint": str(final),
        "steps": int(result["step"]),
        "final_loss": history[-1].get("loss") if history else None,
    }


def load_generator_stage(entry) -> dict:
    """A given checkpoint: check it is the registered generator the entry names."""
    from synthface.generators.checkpoint import read_generator_config
    from synthface.generators.dataset import checkpoint_sha256

    path = Path(entry.checkpoint)
    if not (path / "config.json").is_file():
        raise InputError(f"generators[{entry.id}].checkpoint: {path}: not a generator checkpoint")
    cfg = read_generator_config(path)
    if cfg.generator != entry.name:
        raise ConfigError(
            f"generators[{entry.id}]: name {entry.name!r} but {path} holds a "
            f"{cfg.generator!r} generator"
        )
    return {"checkpoint": str(path), "sha256": checkpoint_sha256(path)}
