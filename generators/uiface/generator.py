"""``uiface``: UIFace (ICLR 2025) on the generator core.

Training: the core loop with ``UIFaceDenoiser`` (context dropout, learnable empty context,
plain epsilon loss; no identity loss). Sampling: two-stage with adaptive per-sample
switching and attention injection (``synthface.generators.uiface.sampling``). All images of
an identity share its anchor as context (UIFace varies images through noise and the
switch time, not through perturbed conditions as ID³ does).
"""

from __future__ import annotations

import numpy as np
from pydantic import ValidationError

from synthface.generators.base import GENERATORS, DiffusionGenerator
from synthface.generators.config import GeneratorConfig, UIFaceConfig
from synthface.generators.id3.identities import per_image_rng
from synthface.generators.uiface.denoiser import UIFaceDenoiser
from synthface.generators.uiface.sampling import sample_two_stage
from synthface.pipeline.errors import InputError

# Sampler switches a caller may override per call (``generate(sampler_options=...)``).
SAMPLER_OPTIONS = ("two_stage", "injection", "switch_threshold", "switch_bound")


@GENERATORS.register("uiface")
class UIFaceGenerator(DiffusionGenerator):
    name = "uiface"
    uses_identity_loss = False
    uses_identity_guidance = False

    @classmethod
    def build_denoiser(cls, config: GeneratorConfig) -> UIFaceDenoiser:
        return UIFaceDenoiser(config)

    @classmethod
    def validate_sampler_options(cls, config: GeneratorConfig, options: dict) -> UIFaceConfig:
        """``config.uiface`` with ``options`` (a subset of :data:`SAMPLER_OPTIONS`) applied."""
        unknown = sorted(set(options) - set(SAMPLER_OPTIONS))
        if unknown:
            raise InputError(
                f"uiface sampler option {unknown[0]!r} is unknown (known: {list(SAMPLER_OPTIONS)})"
            )
        try:
            return UIFaceConfig.model_validate({**config.uiface.model_dump(), **options})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise InputError(f"uiface sampler option {field}: {err['msg']}") from None

    def sample_batch(
        self, tokens, seeds, sampler, *, identity_score, precision, batched_cfg, options
    ):
        cfg = self.config
        return sample_two_stage(
            self.denoiser,
            tokens,
            seeds,
            sampler=sampler,
            diffusion=cfg.diffusion,
            options=options,
            shape=(cfg.sample_channels, cfg.sample_size, cfg.sample_size),
            precision=precision,
            batched=batched_cfg,
            clip_x0=cfg.autoencoder.kind == "none",
        )

    def dataset_conditions(
        self,
        anchors: np.ndarray,
        per_identity: int,
        *,
        seed: int = 0,
        first_identity: int = 0,
    ) -> dict[str, np.ndarray]:
        """``per_identity`` images per anchor: the anchor itself as context, own seeds."""
        anchors = np.asarray(anchors, dtype=np.float32)
        n = anchors.shape[0]
        ident = np.repeat(anchors[:, None, :], per_identity, axis=1)
        seeds = np.array(
            [
                [
                    int(per_image_rng(seed + 7919, first_identity + i, j).integers(0, 2**62))
                    for j in range(per_identity)
                ]
                for i in range(n)
            ],
            dtype=np.int64,
        ).reshape(n, per_identity)
        return {
            "identity": ident,
            "cos": np.ones((n, per_identity), dtype=np.float32),
            "attributes": np.zeros((n, per_identity, 0), dtype=np.float32),
            "seeds": seeds,
        }
