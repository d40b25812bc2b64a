"""Run under ``torchrun --standalone --nproc_per_node 2 -m tests.dist_partial_fc OUT``.

Every rank builds the same full class-centre matrix, embeddings and labels (seed 0),
keeps its shard of the centres and its slice of the batch, and runs the sharded head;
``OUT/rank-R.pt`` holds the loss, the gradients and the accuracy count it got.
``tests/test_partial_fc_sharded.py`` compares them with one process holding everything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from synthface.recognition.heads import create_head

C, D, N = 11, 6, 5  # classes (not divisible by 2), embedding size, batch per rank


def inputs(world: int):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(C, D, generator=g)
    emb = torch.randn(world * N, D, generator=g)
    labels = torch.randint(0, C, (world * N,), generator=g)
    return weight, emb, labels


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    weight, emb, labels = inputs(world)
    results = {}
    for name, kw in (("arcface", {}), ("cosface", {}), ("combined", {"m1": 1.0, "m2": 0.3})):
        head = create_head(
            name, embedding_dim=D, num_classes=C, num_shards=world, shard_index=rank, **kw
        )
        with torch.no_grad():
            head.weight.copy_(weight[head.class_start : head.class_start + head.num_local])
        x = emb[rank * N : (rank + 1) * N].clone().requires_grad_(True)
        res = head(x, labels[rank * N : (rank + 1) * N])
        res.loss.backward()
        results[name] = {
            "loss": res.loss.detach(),
            "x_grad": x.grad,
            "w_grad": head.weight.grad,
            "start": head.class_start,
            "correct": res.correct,
        }
    # sampled: positives always present, loss finite, sampled ids inside the shard
    head = create_head(
        "arcface", embedding_dim=D, num_classes=C, num_shards=world, shard_index=rank,
        sample_rate=0.5,
    )  # fmt: skip
    res = head(emb[rank * N : (rank + 1) * N], labels[rank * N : (rank + 1) * N])
    results["sampled"] = {"loss": res.loss.detach(), "index": res.class_index}
    torch.save(results, out / f"rank-{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
