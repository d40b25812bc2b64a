"""``plain``: the same conditional denoiser without identity loss or identity guidance.

The ablation baseline of ID³: identical architecture, conditions, data and sampler, so a
difference in identity consistency is due to the identity term and guidance alone.
"""

from __future__ import annotations

from synthface.generators.base import GENERATORS
from synthface.generators.id3.generator import ID3Generator


@GENERATORS.register("plain")
class PlainGenerator(ID3Generator):
    name = "plain"
    uses_identity_loss = False
    uses_identity_guidance = False
