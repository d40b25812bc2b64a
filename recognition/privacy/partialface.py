"""PartialFace (ICCV 2023): drop what people can see, train and infer on random channel subsets.

1. **Prune** the human-perceivable low frequencies ``8u + v`` in
   {0, 1, 2, 3, 8, 9, 10, 16, 17, 24} (``u + v <= 3``) of each colour: 54 per colour remain.
2. **Subsets**: the 54 are split into 6 disjoint subsets of 9 (``SUBSETS``; the reference
   hard-codes its own 6 x 9 matrix, not given in its documentation: here subset ``j`` takes
   every sixth remaining frequency starting at the ``j``-th, so each spans low to high).
3. **Per sample**: identity ``y`` may only use the triple ``TRIPLES[y mod 20]`` of the
   C(6, 3) = 20 triples of subsets; one subset of it is drawn per sample and step, and its 9
   channels are permuted by one of 3 fixed permutations (``PERMUTATIONS``), the same in each
   colour. Input: 9 x 3 = 27 channels.
4. **Repeats**: each image is seen ``repeats`` times per epoch (reference ``NUM_AUG: 3``),
   each time with a new draw; the benchmark multiplies the recipe's epochs by it.

At inference there is no label: any of the 6 subsets is drawn per image.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch

from synthface.recognition.privacy import bdct
from synthface.recognition.privacy._base import (
    PROTECTIONS,
    InputNorm,
    ProtectedRecognizer,
    bdct_size,
    build_server,
)

PRUNED_FREQS = (0, 1, 2, 3, 8, 9, 10, 16, 17, 24)
KEPT_FREQS = tuple(f for f in range(bdct.FREQS) if f not in PRUNED_FREQS)  # 54
NUM_SUBSETS = 6
SUBSET_SIZE = 9
SUBSETS = tuple(KEPT_FREQS[j::NUM_SUBSETS] for j in range(NUM_SUBSETS))
TRIPLES = tuple(itertools.combinations(range(NUM_SUBSETS), 3))  # 20
PERMUTATIONS = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8),
    (4, 7, 1, 8, 0, 5, 2, 6, 3),
    (8, 3, 6, 0, 2, 7, 5, 1, 4),
)


def subset_channels(subset: int, permutation: int) -> list[int]:
    """The 27 channel indices (colour-major) that subset ``subset`` under permutation sends."""
    freqs = [SUBSETS[subset][p] for p in PERMUTATIONS[permutation]]
    return bdct.all_colours(freqs)


def _table() -> torch.Tensor:
    """(6, 3, 27) channel indices of every (subset, permutation)."""
    return torch.tensor(
        [[subset_channels(s, p) for p in range(len(PERMUTATIONS))] for s in range(NUM_SUBSETS)]
    )


@PROTECTIONS.register("partialface")
class PartialFace(ProtectedRecognizer):
    """Server network on 27 channels: one permuted subset of the high frequencies.

    Args:
        backbone, backbone_params: the server network (input conv 27 -> width).
        repeats: presentations of each image per epoch (reference 3).
        upsample: block-DCT up-sampling factor.
    """

    def __init__(
        self,
        *,
        backbone: str = "ir18",
        backbone_params: dict[str, Any] | None = None,
        input_size: int | Sequence[int] = 112,
        embedding_dim: int = 512,
        repeats: int = 3,
        upsample: int = 8,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(input_size=input_size, embedding_dim=embedding_dim, eval_seed=eval_seed)
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
        self.upsample, self.repeats = upsample, repeats
        side = bdct_size(self.size, upsample)
        width = SUBSET_SIZE * bdct.COLOURS
        self.register_buffer("table", _table(), persistent=False)
        self.register_buffer("triples", torch.tensor(TRIPLES), persistent=False)
        self.norm = InputNorm(width)
        self.server = build_server(
            backbone,
            dict(backbone_params or {}),
            channels=width,
            size=side,
            embedding_dim=embedding_dim,
        )

    @classmethod
    def epoch_factor(cls, params: dict[str, Any]) -> float:
        return float(params.get("repeats", 3))

    def draw(
        self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(subset, permutation) per sample: from the label's triple, or any subset."""
        if labels is None:
            subset = torch.randint(NUM_SUBSETS, (n,), generator=generator, device=device)
        else:
            pick = torch.randint(3, (n,), generator=generator, device=device)
            subset = self.triples[labels % len(TRIPLES), pick]
        perm = torch.randint(len(PERMUTATIONS), (n,), generator=generator, device=device)
        return subset, perm

    def _select(self, x, labels, generator):
        coeff = bdct.to_bdct(x, self.upsample)
        subset, perm = self.draw(x.shape[0], labels, generator, x.device)
        idx = self.table[subset, perm]  # N x 27
        view = coeff.gather(1, idx[:, :, None, None].expand(-1, -1, *coeff.shape[-2:]))
        return view, idx

    def server_view(self, x, generator=None):
        if generator is None:
            generator = self.generator(x.device)
        return self._select(x, None, generator)[0]

    def visual(self, x, generator=None):
        # the attacker is granted the true positions of the channels it received
        if generator is None:
            generator = self.generator(x.device)
        view, idx = self._select(x, None, generator)
        full = view.new_zeros(view.shape[0], bdct.CHANNELS, *view.shape[-2:])
        full.scatter_(1, idx[:, :, None, None].expand_as(view), view)
        return bdct.from_bdct(full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.server(self.norm(self.server_view(x)))

    def forward_train(self, x, labels):
        view, _ = self._select(x, labels, None)
        return self.server(self.norm(view)), None
