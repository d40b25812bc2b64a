"""Run under ``accelerate launch --multi_gpu --num_processes 2 -m tests.dist_recognition_train``.

Trains a tiny recognizer with its class centres sharded over the two processes, once
straight for 4 steps and once stopped at step 2 and resumed; each rank writes
``OUT/rank-R.pt`` with its head shard and backbone weights after both runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from synthface.pipeline.config import validate_config
from synthface.recognition.config import TrainConfig
from synthface.recognition.training import train


def config(data: Path, out: Path) -> TrainConfig:
    return validate_config(
        {
            "data": {"train": str(data), "batch_size": 4, "num_workers": 0, "shuffle_buffer": 64},
            "model": {"backbone": "tiny", "input_size": 16, "embedding_dim": 8},
            "head": {"name": "arcface", "params": {"scale": 16, "margin": 0.2,
                     "sample_rate": 0.5}, "shard_classes": True},
            "optim": {"lr": 0.1},
            "train": {"output_dir": str(out), "max_steps": 4, "device": "cpu"},
            "checkpoint": {"every_steps": 2, "keep": 3},
            "logging": {"every_steps": 1, "progress": False},
        },
        TrainConfig,
    )  # fmt: skip


def main(out: Path, data: Path) -> None:
    torch.set_num_threads(1)
    captured = {}
    import synthface.recognition.training.callbacks as cb

    close = cb.Checkpointer.close

    def keep(self, step, run):  # every rank's live weights at the end of the run
        model = run.accelerator.unwrap_model(run.model)
        captured[run.cfg.train.output_dir] = {
            k: v.detach().clone() for k, v in model.state_dict().items()
        }
        return close(self, step, run)

    cb.Checkpointer.close = keep
    first = train(config(data, out / "a"))
    train(config(data, out / "b"), stop_after=2)
    second = train(config(data, out / "b"), resume="latest")
    from accelerate import PartialState

    rank = PartialState().process_index
    torch.save(
        {
            "steps": [first.global_step, second.global_step],
            "metrics": first.metrics,
            "a": captured.get(str(out / "a"), {}),
            "b": captured.get(str(out / "b"), {}),
        },
        out / f"rank-{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
