"""Partial FC memory per process: class centres sharded over 2 processes vs one full head.

For ``--classes`` identities and ``--dim``-d embeddings, one SGD step (momentum 0.9) of
the ArcFace head on a batch of ``--batch`` embeddings per process, at sample rate 1 and
``--rate``. Per process it reports the bytes of the class-centre tensors (weights,
gradient, momentum: counted from the tensors themselves), the logits of one step, and
the process's peak resident memory (``ru_maxrss``, which includes torch itself).

    python bench/partial_fc_memory.py                 # 2 processes (gloo) + the baseline
    python bench/partial_fc_memory.py --classes 1000000

The sharded run is started with ``torch.distributed.run`` (2 CPU processes); the
baseline runs in this process with every class on it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MB = 1 << 20


def one_step(classes: int, dim: int, batch: int, rate: float, shards: int, rank: int) -> dict:
    from synthface.recognition.heads import create_head

    torch.manual_seed(rank)
    head = create_head(
        "arcface",
        embedding_dim=dim,
        num_classes=classes,
        sample_rate=rate,
        num_shards=shards,
        shard_index=rank,
    )
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    emb = torch.randn(batch, dim, requires_grad=True)
    labels = torch.randint(0, classes, (batch,))
    out = head(emb, labels)
    out.loss.backward()
    opt.step()
    w = head.weight
    momentum = opt.state[w]["momentum_buffer"]
    return {
        "rank": rank,
        "classes_held": int(w.shape[0]),
        "centres_mb": round(w.numel() * w.element_size() / MB, 1),
        "centres_grad_momentum_mb": round(
            (w.numel() * w.element_size() + w.grad.numel() * 4 + momentum.numel() * 4) / MB, 1
        ),
        "logits_mb": round(out.logits.numel() * out.logits.element_size() / MB, 1),
        "logits_shape": list(out.logits.shape),
        "loss": round(float(out.loss.detach()), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def worker(args) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = [
        one_step(args.classes, args.dim, args.batch, rate, world, rank) for rate in (1.0, args.rate)
    ]
    Path(args.worker_out, f"rank-{rank}.json").write_text(json.dumps(rows))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128, help="embeddings per process")
    ap.add_argument("--rate", type=float, default=0.1, help="the second sample rate")
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.worker_out:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", __file__, "--classes", str(args.classes), "--dim", str(args.dim), "--batch",
            str(args.batch), "--rate", str(args.rate), "--worker-out", tmp,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env)
        sharded = [json.loads(Path(tmp, f"rank-{r}.json").read_text()) for r in (0, 1)]
    # the baseline: one process, all classes, the global batch of both ranks
    full = [one_step(args.classes, args.dim, 2 * args.batch, r, 1, 0) for r in (1.0, args.rate)]
    report = {"config": vars(args) | {"worker_out": None}, "unsharded": full, "sharded": sharded}
    print(json.dumps(report, indent=2))
    for i, rate in enumerate((1.0, args.rate)):
        base = full[i]["centres_grad_momentum_mb"]
        per_rank = max(s[i]["centres_grad_momentum_mb"] for s in sharded)
        print(
            f"sample rate {rate:g}: centres+grad+momentum per process {per_rank} MB sharded "
            f"vs {base} MB unsharded ({per_rank / base:.2f}x); logits "
            f"{max(s[i]['logits_mb'] for s in sharded)} vs {full[i]['logits_mb']} MB"
        )


if __name__ == "__main__":
    main()
