"""Shared machinery of the margin heads: cosine logits, Partial FC sampling, the loss.

A head owns the class centres ``weight`` (``num_classes x embedding_dim``) and turns
un-normalised embeddings plus labels into a loss. Subclasses only say how the target
(and, for CurricularFace/CIFP, non-target) cosines are changed: :meth:`MarginHead.margin`.

With ``num_shards > 1`` (Partial FC across processes, ``partial_fc.py``) the head holds
only shard ``shard_index``'s centres, scores the all-gathered global batch and computes
the cross-entropy across ranks. Only heads whose margin touches the target logit alone
(``supports_sharding``: ArcFace, CosFace, combined) can be sharded: CurricularFace and
CIFP change non-target logits by quantities that live on other ranks.

Everything is computed in float32 with autocast off, whatever precision the backbone
ran in: the margins involve ``acos``/``sqrt`` near +-1 and a scale of 64, where bf16
rounding alone moves a logit by more than the margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synthface.pipeline.errors import ConfigError, InputError
from synthface.recognition.heads.partial_fc import (
    AllGatherWithGrad,
    DistCrossEntropy,
    all_gather_labels,
    class_range,
    dist_correct,
)


@dataclass
class HeadOutput:
    """Result of a head's forward pass.

    Attributes:
        loss: scalar cross-entropy over the margin-adjusted, scaled logits.
        logits: ``N x K`` scaled logits with the margins applied (K = num_classes, or the
            sampled class count under Partial FC in training mode).
        targets: labels as column indices of ``logits`` (equal to the labels unless
            Partial FC remapped them); ``logits.argmax(1) == targets`` is training accuracy.
        class_index: the sampled class ids (``K``) under Partial FC, else ``None``.
        correct: 0-d count of rows whose largest logit is the target; set by a sharded
            head, whose ``logits``/``targets`` cover only its own columns (-1 = elsewhere).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    class_index: torch.Tensor | None = None
    correct: torch.Tensor | None = None

    def num_correct(self) -> torch.Tensor:
        if self.correct is not None:
            return self.correct
        return (self.logits.argmax(1) == self.targets).sum()


def sample_classes(
    labels: torch.Tensor, num_classes: int, num_sample: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial FC: keep every class present in the batch plus random negatives.

    Returns the sorted kept class ids (``max(num_sample, #positives)`` of them) and the
    labels remapped to positions in that list. Positives are always kept, otherwise the
    loss would have no target column.
    """
    positives = torch.unique(labels)
    if num_sample <= positives.numel():
        index = positives
    else:
        score = torch.rand(num_classes, device=labels.device)
        score[positives] = 2.0  # above any uniform draw: positives always win the top-k
        index = torch.topk(score, k=num_sample).indices.sort().values
    return index, torch.searchsorted(index, labels)


class MarginHead(nn.Module):
    """Normalised-softmax classifier with a margin on the target logit.

    Args:
        embedding_dim: feature size of the backbone.
        num_classes: identity count C.
        scale: logit scale s (64 in ArcFace/CosFace).
        sample_rate: Partial FC rate r in (0, 1]; during training only ``ceil(r*C)``
            class centres (all positives of the batch + random negatives) enter the
            softmax. 1.0 uses every class. Evaluation mode always uses every class.
        num_shards, shard_index: split the centres over ``num_shards`` processes; this
            head holds shard ``shard_index`` (``partial_fc.class_range``).
    """

    supports_sharding = False

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        *,
        num_shards: int = 1,
        shard_index: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if scale <= 0:
            raise ConfigError(f"scale must be positive, got {scale!r}")
        if not 0 <= shard_index < num_shards:
            raise ConfigError(f"shard_index {shard_index} outside 0..{num_shards - 1}")
        if num_shards > 1 and not self.supports_sharding:
            raise ConfigError(
                f"head {type(self).__name__} cannot shard its class centres across processes "
                "(its margin needs every class); set head.shard_classes: false"
            )
        if num_shards > num_classes:
            raise ConfigError(f"{num_classes} classes cannot be split over {num_shards} shards")
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.scale = float(scale)
        self.sample_rate = float(sample_rate)
        self.num_shards, self.shard_index = num_shards, shard_index
        self.class_start, class_end = class_range(num_classes, shard_index, num_shards)
        self.num_local = class_end - self.class_start
        local = self.num_local if num_shards > 1 else num_classes
        self.num_sample = max(min(2, local), round(sample_rate * local))
        self.weight = nn.Parameter(torch.empty(local, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def extra_repr(self) -> str:
        shards = f", shard={self.shard_index}/{self.num_shards}" if self.num_shards > 1 else ""
        return (
            f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
            f"scale={self.scale}, sample_rate={self.sample_rate}{shards}"
        )

    @property
    def sharded(self) -> bool:
        return self.num_shards > 1

    def _check(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise InputError(
                f"head expects embeddings N x {self.embedding_dim}, got {tuple(embeddings.shape)}"
            )
        if labels.shape != embeddings.shape[:1]:
            raise InputError(
                f"labels shape {tuple(labels.shape)} does not match {embeddings.shape[0]} embeddings"
            )
        if labels.device.type == "cpu":
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise InputError(
                    f"label out of range [0, {self.num_classes}): "
                    f"min {int(labels.min())}, max {int(labels.max())}"
                )
        else:  # no host sync on accelerators: the check runs asynchronously
            torch._assert_async(((labels >= 0) & (labels < self.num_classes)).all())

    def cosine(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """(cos N x K, targets, sampled class ids or None, ``{"x", "w"}`` normalised inputs)."""
        index = None
        targets = labels
        weight = self.weight
        if self.training and self.num_sample < self.num_classes:
            index, targets = sample_classes(labels, self.num_classes, self.num_sample)
            weight = weight[index]
        w = F.normalize(weight.float(), dim=1)
        x = F.normalize(embeddings.float(), dim=1)
        return F.linear(x, w), targets, index, {"x": x, "w": w}

    def margin(
        self, cos: torch.Tensor, targets: torch.Tensor, ctx: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Return the adjusted cosine matrix (target column changed); the caller scales it.

        ``ctx`` holds the normalised embeddings ``x`` (N x D) and class centres ``w`` (K x D).
        """
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        self._check(embeddings, labels)
        labels = labels.long()
        if self.sharded:
            return self._sharded_forward(embeddings, labels)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos, targets, index, ctx = self.cosine(embeddings, labels)
            logits = self.margin(cos.clamp(-1.0, 1.0), targets, ctx) * self.scale
            loss = F.cross_entropy(logits, targets)
        return HeadOutput(loss=loss, logits=logits, targets=targets, class_index=index)

    def _sharded_forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """Global batch against this shard's (sampled) centres; cross-entropy across ranks."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(AllGatherWithGrad.apply(embeddings.float()), dim=1)
            labels = all_gather_labels(labels)
            local = labels - self.class_start
            mine = (local >= 0) & (local < self.num_local)
            weight, index = self.weight, None
            if self.training and self.num_sample < self.num_local:
                index, remapped = sample_classes(local[mine], self.num_local, self.num_sample)
                weight = weight[index]
                targets = torch.full_like(labels, -1)
                targets[mine] = remapped
            else:
                targets = torch.where(mine, local, torch.full_like(local, -1))
            w = F.normalize(weight.float(), dim=1)
            cos = F.linear(x, w).clamp(-1.0, 1.0)
            logits = self.margin(cos, targets, {"x": x, "w": w}) * self.scale
            loss = DistCrossEntropy.apply(logits, targets)
            correct = dist_correct(logits, targets)
        if index is not None:
            index = index + self.class_start
        return HeadOutput(loss, logits, targets, class_index=index, correct=correct)


def target_column(cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The target cosine of each row, ``N x 1``."""
    return cos.gather(1, targets.view(-1, 1))


def replace_target(cos: torch.Tensor, targets: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Out-of-place scatter of ``new`` (N x 1) into the target column, keeping autograd intact."""
    return cos.scatter(1, targets.view(-1, 1), new)
