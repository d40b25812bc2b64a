"""Run under ``accelerate launch --multi_gpu --num_processes 2 -m tests.dist_generator_train``.

Trains the tiny generator on a toy shard dataset three times in the same two processes:
``a`` for 4 steps straight, ``b`` for 2 steps and then resumed to 4. Each rank writes
``OUT/rank-R.json``: the sample keys of every batch it trained on (per run) and a
checksum of its final raw weights. ``tests/test_generators_distributed.py`` reads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import synthface.generators.training as training
from synthface.generators.data import ShardSource
from tests.generators_helpers import tiny_config, tiny_encoder


def main(out: Path, data: Path) -> None:
    torch.set_num_threads(1)
    seen: dict[str, list[list[str]]] = {}
    models: dict[str, torch.nn.Module] = {}
    current = {"run": ""}
    make_batch, ema_update = training.make_batch, training.EMA.update

    def recording_make_batch(samples, cfg, encoder):
        seen.setdefault(current["run"], []).append([s["__key__"] for s in samples])
        return make_batch(samples, cfg, encoder)

    def recording_update(self, model, step):
        models[current["run"]] = model  # this rank's live (unwrapped) denoiser
        return ema_update(self, model, step)

    training.make_batch = recording_make_batch
    training.EMA.update = recording_update
    enc = tiny_encoder()
    source = ShardSource(data, shuffle_buffer=4)
    for run, steps in (("a", None), ("b", 2), ("b-resumed", None)):
        current["run"] = run
        cfg = tiny_config(out / run.split("-")[0], train={"batch_size": 2})
        training.train_generator(cfg, data=source, encoder=enc, steps=steps)
    from accelerate import PartialState

    state = PartialState()
    record = {
        "rank": state.process_index,
        "world": state.num_processes,
        "keys": seen,
        "weights": {
            run: [float(v.double().sum()) for v in m.state_dict().values()]
            for run, m in models.items()
        },
    }
    (out / f"rank-{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
