"""Partial FC across processes: class centres split by rank, embeddings all-gathered.

As in arcface_torch's ``partial_fc_v2`` (described in ``/work/shared/reference``; this
is our own code): rank r of W holds the centres of classes ``[start_r, start_r + n_r)``
only, so each process stores C/W centres (and their gradient and optimizer state)
instead of C. One training step:

1. all-gather the embeddings (with gradient) and labels of every rank: every rank
   scores the *global* batch against its own centres (sampled at ``sample_rate``:
   its positives plus random negatives among its own classes);
2. the margin changes a row's target logit on the rank that owns the row's class;
3. the softmax cross-entropy is computed across ranks (:class:`DistCrossEntropy`: the
   row maximum and the sum of exponentials are all-reduced), so each rank holds the
   same loss, the mean over the global batch;
4. backward: each rank's logits produce gradients for its centres and for the gathered
   embeddings; :class:`AllGatherWithGrad` sums the embedding gradients over ranks and
   hands each rank those of its own samples, multiplied by W because DDP then averages
   the backbone gradients over the W ranks. The result equals the gradient of one
   process holding all centres and the whole global batch.

Without an initialised process group (one process) every collective is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def class_range(num_classes: int, rank: int, num_shards: int) -> tuple[int, int]:
    """[start, end) of the classes shard ``rank`` owns; sizes differ by at most one."""
    base, extra = divmod(num_classes, num_shards)
    start = base * rank + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's (equal-sized) batch; backward returns this rank's slice
    of the rank-summed gradient, times the world size (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.size, ctx.n = rank, size, x.shape[0]
        if size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.size == 1:
            return grad
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n] * ctx.size


def all_gather_labels(labels: torch.Tensor) -> torch.Tensor:
    _, size = world()
    if size == 1:
        return labels
    parts = [torch.empty_like(labels) for _ in range(size)]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


class DistCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over rows whose columns are split across ranks.

    ``logits``: N x K_r (this rank's columns); ``targets``: N, the target column on this
    rank or -1 where another rank owns the row's class. Every rank returns the same loss.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _, size = world()
        n = logits.shape[0]
        row_max = logits.max(dim=1, keepdim=True).values
        if size > 1:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        exp = (logits - row_max).exp()
        total = exp.sum(dim=1, keepdim=True)
        own = targets >= 0
        target_logit = torch.zeros(n, 1, dtype=logits.dtype, device=logits.device)
        target_logit[own] = logits[own, targets[own]].unsqueeze(1)
        if size > 1:
            dist.all_reduce(total)
            dist.all_reduce(target_logit)
        ctx.save_for_backward(exp.div_(total), targets)
        return (total.log() + row_max - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        prob, targets = ctx.saved_tensors
        own = torch.nonzero(targets >= 0).squeeze(1)
        out = prob.clone()
        out[own, targets[own]] -= 1.0
        return out * (grad / prob.shape[0]), None


def dist_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rows whose largest logit over *all* ranks' columns is the target (a 0-d count)."""
    _, size = world()
    best, arg = logits.detach().max(dim=1)
    global_best = best.clone()
    if size > 1:
        dist.all_reduce(global_best, op=dist.ReduceOp.MAX)
    hit = ((targets >= 0) & (arg == targets) & (best >= global_best)).sum()
    if size > 1:
        dist.all_reduce(hit)
    return hit
