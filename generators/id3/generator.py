"""ID³: identity-anchored sampling, ID-preserving loss and identity-guided sampling."""

from __future__ import annotations

import numpy as np

from synthface.generators.base import GENERATORS, DiffusionGenerator
from synthface.generators.id3.identities import identity_conditions, per_image_rng


@GENERATORS.register("id3")
class ID3Generator(DiffusionGenerator):
    """Trained with the time-weighted identity term, sampled with identity guidance."""

    name = "id3"
    uses_identity_loss = True
    uses_identity_guidance = True

    def dataset_conditions(
        self,
        anchors: np.ndarray,
        per_identity: int,
        *,
        seed: int = 0,
        first_identity: int = 0,
    ) -> dict[str, np.ndarray]:
        """Conditions for ``per_identity`` images of each anchor (ID³ Algorithm 3).

        Returns ``identity`` (N, m, D), ``cos`` (N, m), ``attributes`` (N, m, A) in raw
        units drawn from the fitted prior (its mean without one), and ``seeds`` (N, m).
        """
        cfg = self.config
        ys, cs = identity_conditions(
            anchors, per_identity, cfg.id3.cos_bounds, seed=seed, first_identity=first_identity
        )
        n = ys.shape[0]
        attrs = np.zeros((n, per_identity, len(self.attribute_names)), dtype=np.float32)
        seeds = np.zeros((n, per_identity), dtype=np.int64)
        for i in range(n):
            for j in range(per_identity):
                rng = per_image_rng(seed + 7919, first_identity + i, j)
                if self.attribute_names:
                    if self.attribute_prior is not None:
                        attrs[i, j] = self.attribute_prior.sample(1, rng)[0]
                    else:
                        attrs[i, j] = self.default_attributes(1)[0]
                seeds[i, j] = int(rng.integers(0, 2**62))
        return {"identity": ys, "cos": cs, "attributes": attrs, "seeds": seeds}
