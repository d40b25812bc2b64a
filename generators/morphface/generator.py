"""MorphFace (CVPR 2025): identity embedding + 3DMM style maps, subject-aware style prior.

Registered as ``morphface`` on the shared core (denoiser training loop, samplers,
checkpoints, dataset production). What it adds, through the core's hooks:

* its denoiser (:mod:`.model`: style encoder, identity and style cross-attention, context
  blending);
* training batches whose style conditions are the rendered maps of each sample's style
  parameters (:mod:`.styles`);
* the style prior (:mod:`.prior`), fitted on the labelled training data before the first
  step and stored in every checkpoint as ``style_prior.json``;
* dataset conditions: every virtual subject draws its own style mean from the prior,
  each image its own deviation; the parameters go into each sample's metadata
  (``meta["attributes"]``, one entry per parameter) and are rendered into maps.

The ``generate`` interface is the core's: identity conditions (N, D), attribute
conditions = style parameters (N, P) in the style source's units (rendered here), or
already rendered maps (N, 9, S, S) from the user's own fitter, and one seed per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from synthface.generators.base import GENERATORS, DiffusionGenerator
from synthface.generators.config import GeneratorConfig
from synthface.generators.id3.identities import identity_conditions, per_image_rng
from synthface.generators.morphface.model import MorphFaceDenoiser
from synthface.generators.morphface.prior import StylePrior, StylePriorFitter
from synthface.generators.morphface.styles import StyleSource, make_style_source
from synthface.generators.sampling_pipeline import to_uint8
from synthface.pipeline.errors import ConfigError, InputError

PRIOR_FILE = "style_prior.json"
_STYLE_SALT = 104_729  # separates the style streams from the identity and seed streams
_SEED_SALT = 7919  # the seed stream of ID3Generator.dataset_conditions
_SOURCES: dict[str, StyleSource] = {}


def check_config(cfg: GeneratorConfig) -> None:
    """Settings that contradict MorphFace's conditioning, as one clear error."""
    if cfg.conditioning.attributes:
        raise ConfigError(
            "generator morphface: conditioning.attributes must be [] (styles come from the "
            "rendered maps; pose and expression are style parameters)"
        )
    if cfg.data.hflip:
        raise ConfigError(
            "generator morphface: data.hflip must be false (a flipped image would contradict "
            "its normal and shading maps)"
        )


def training_source(cfg: GeneratorConfig) -> StyleSource:
    """One style source per style config per process (the training loop asks every step)."""
    key = cfg.morphface.model_dump_json()
    if key not in _SOURCES:
        _SOURCES[key] = make_style_source(cfg)
    return _SOURCES[key]


def _samples_once(cfg: GeneratorConfig, data) -> Iterable[Mapping[str, Any]]:
    """Every training sample once (the prior counts each image once, not per epoch)."""
    if isinstance(data, Sequence):
        return data
    from synthface.generators.data import ShardSource

    path = data.path if isinstance(data, ShardSource) else None
    if path is None and cfg.data.source == "shards":
        path = cfg.data.path
    if path is not None:
        from synthface.pipeline.shards import iter_samples

        return iter_samples(path, decode=False)  # metadata only, no image decoding
    raise InputError("style prior: no training data (data.path is not set)")


def fit_style_prior(
    cfg: GeneratorConfig, data=None, source: StyleSource | None = None, chunk: int = 1024
) -> StylePrior:
    """Fit the subject-aware prior on labelled data (``data`` or ``cfg.data``), streaming."""
    source = source or training_source(cfg)
    fitter = StylePriorFitter(source.param_names)
    rows, labels = [], []
    for s in _samples_once(cfg, data):
        rows.append(source.sample_params(s))
        labels.append(int(s["label"]))
        if len(rows) == chunk:
            fitter.add(np.stack(rows), labels)
            rows, labels = [], []
    if rows:
        fitter.add(np.stack(rows), labels)
    return fitter.finish()


@GENERATORS.register("morphface")
class MorphFaceGenerator(DiffusionGenerator):
    """Identity + style-map conditioning with context blending (module docstring).

    MorphFace trains with the plain denoising loss; the ID³ identity term
    (``id3.id_loss_weight``) and identity guidance (``sampler.id_guidance_scale``) are
    available as options but are off in the shipped configs.
    """

    name = "morphface"
    uses_identity_loss = True
    uses_identity_guidance = True
    extra_files = (PRIOR_FILE,)

    def __init__(
        self,
        config: GeneratorConfig,
        *,
        style_prior: StylePrior | None = None,
        style_renderer: Callable | None = None,
        **kwargs,
    ) -> None:
        check_config(config)
        super().__init__(config, **kwargs)
        self.style_source = make_style_source(config, renderer=style_renderer)
        if style_prior is None and PRIOR_FILE in self.extras:
            style_prior = StylePrior.from_json_bytes(self.extras[PRIOR_FILE], PRIOR_FILE)
        if style_prior is not None and style_prior.names != self.style_source.param_names:
            raise InputError(
                f"{PRIOR_FILE}: fitted on {style_prior.dim} parameters of another style "
                f"source; this generator's {self.style_source.name!r} source has "
                f"{self.style_source.dim}"
            )
        self.style_prior = style_prior

    # ----------------------------------------------------------------- hooks
    @classmethod
    def build_denoiser(cls, config: GeneratorConfig) -> torch.nn.Module:
        check_config(config)
        return MorphFaceDenoiser(config)

    @classmethod
    def training_batch(cls, samples, config: GeneratorConfig, encoder):
        """The core batch plus style maps as its conditions (``Batch.attributes``)."""
        from synthface.generators.training import make_batch

        batch = make_batch(samples, config, encoder)
        source = training_source(config)
        params = np.stack([source.sample_params(s) for s in samples])
        maps = source.training_maps(samples, params, config.morphface.map_size)
        batch.attributes = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
        batch.style = params
        return batch

    @classmethod
    def fit_extras(cls, config: GeneratorConfig, data) -> dict[str, bytes]:
        return {PRIOR_FILE: fit_style_prior(config, data).to_json_bytes()}

    def extra_payloads(self) -> dict[str, bytes]:
        if self.style_prior is None:
            return {}
        return {PRIOR_FILE: self.style_prior.to_json_bytes()}

    # ----------------------------------------------------------------- conditions
    @property
    def attribute_names(self) -> list[str]:
        return list(self.style_source.param_names)

    def _require_prior(self) -> StylePrior:
        if self.style_prior is None:
            raise ConfigError(
                f"generator morphface: no style prior ({PRIOR_FILE}) in the checkpoint; "
                "train it (the prior is fitted on the training data) or pass style_prior="
            )
        return self.style_prior

    def default_attributes(self, n: int) -> np.ndarray:
        """The population mean style, for callers that give identities only."""
        mean = self.style_source.project(self._require_prior().mean)
        return np.tile(mean.astype(np.float32), (n, 1))

    def style_maps(self, params: np.ndarray) -> np.ndarray:
        """(N, P) style parameters -> (N, 9, S, S) maps through the style source."""
        return self.style_source.render(params, self.config.morphface.map_size)

    def _condition_tensors(self, identity_conditions, attribute_conditions):
        ident = torch.as_tensor(np.ascontiguousarray(identity_conditions, dtype=np.float32))
        if ident.ndim == 1:
            ident = ident.unsqueeze(0)
        if attribute_conditions is None:
            attribute_conditions = self.default_attributes(ident.shape[0])
        style = np.asarray(attribute_conditions, dtype=np.float32)
        if style.ndim == 1:
            style = style[None]
        maps = style if style.ndim == 4 else self.style_maps(style)
        maps = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
        self.denoiser.cond.check(ident, maps)
        return ident.to(self.device), maps.to(self.device)

    def dataset_conditions(
        self,
        anchors: np.ndarray,
        per_identity: int,
        *,
        seed: int = 0,
        first_identity: int = 0,
        subject_aware: bool | None = None,
    ) -> dict[str, np.ndarray]:
        """Conditions for ``per_identity`` images of each anchor.

        ``identity`` (N, m, D): the anchor (or a condition at ``morphface.identity_cos``
        around it); ``attributes`` (N, m, P): style parameters, subject ``i`` drawing its
        own mean from a stream keyed by (seed, identity) and image ``j`` its deviation
        from one keyed by (seed, identity, j), so any shard can be produced alone;
        ``cos`` (N, m); ``seeds`` (N, m).
        """
        prior = self._require_prior()
        aware = self.config.morphface.subject_aware if subject_aware is None else subject_aware
        ys, cs = identity_conditions(
            anchors,
            per_identity,
            self.config.morphface.identity_cos,
            seed=seed,
            first_identity=first_identity,
        )
        n = ys.shape[0]
        styles = np.zeros((n, per_identity, prior.dim))
        seeds = np.zeros((n, per_identity), dtype=np.int64)
        for i in range(n):
            identity = first_identity + i
            mu = prior.subject_mean(np.random.default_rng([seed + _STYLE_SALT, identity]))
            for j in range(per_identity):
                rng = per_image_rng(seed + _STYLE_SALT, identity, j)
                styles[i, j] = prior.image(mu, rng, subject_aware=aware)
                seeds[i, j] = int(per_image_rng(seed + _SEED_SALT, identity, j).integers(0, 2**62))
        styles = self.style_source.project(styles).astype(np.float32)
        return {"identity": ys, "cos": cs, "attributes": styles, "seeds": seeds}

    @torch.no_grad()
    def generate_unconditional(
        self, seeds: Sequence[int], *, steps: int | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """uint8 (N, H, W, 3) faces from the empty context (no identity, no style).

        The unlabelled synthetic faces whose embeddings become new identities
        (:func:`synthface.generators.morphface.identities.novel_identities`).
        """
        from synthface.generators.sampling import sample

        sc = self.config.sampler.model_copy()
        sc.guidance_scale = 1.0  # nothing to guide towards
        if steps is not None:
            sc.steps = steps
        if batch_size is not None:
            sc.batch_size = batch_size
        shape = (self.config.sample_channels, self.config.sample_size, self.config.sample_size)
        seeds = [int(s) for s in seeds]
        outs = []
        for s in range(0, len(seeds), sc.batch_size):
            part = seeds[s : s + sc.batch_size]
            tokens = self.denoiser.cond.null(len(part)).to(self.device)
            z = sample(
                self.denoiser,
                tokens,
                part,
                sampler=sc,
                diffusion=self.config.diffusion,
                shape=shape,
                clip_x0=self.config.autoencoder.kind == "none",
            )
            outs.append(self.autoencoder.decode(z).float().clamp(-1, 1).cpu())
        return to_uint8(torch.cat(outs))
