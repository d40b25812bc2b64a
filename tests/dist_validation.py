"""Run under ``accelerate launch --multi_gpu --num_processes 2 -m tests.dist_validation OUT BIN``.

Each rank opens the validation set (the local main process decodes it, the other waits)
and embeds its slice; rank 0 saves the gathered embeddings to ``OUT/gathered.npy`` and
every rank records whether it decoded the set in ``OUT/rank-R.txt``. A second .bin that
is not a pickle must raise on both ranks (``OUT/error-R.txt``), not hang one of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from synthface.pipeline.errors import InputError
from tests.test_validation_cache import _backbone, _cfg


def main(out: Path, bin_path: Path) -> None:
    from synthface.recognition.training.loop import _accelerator
    from synthface.recognition.training.validation import embed_sharded, open_sets

    torch.set_num_threads(1)
    cfg = _cfg(out, [bin_path])
    acc = _accelerator(cfg)
    rank = acc.process_index
    (s,) = open_sets(cfg, acc)
    emb = embed_sharded(_backbone(), s.images, cfg, acc)
    if emb is not None:
        np.save(out / "gathered.npy", emb)
    (out / f"rank-{rank}.txt").write_text(f"built={s.built} main={emb is not None}\n")
    bad = out / "bad.bin"
    if acc.is_main_process:
        bad.write_bytes(b"not a pickle")
    acc.wait_for_everyone()
    try:
        open_sets(_cfg(out, [bad]), acc)
    except InputError as exc:
        (out / f"error-{rank}.txt").write_text(str(exc))
    # Left to interpreter exit, gloo's teardown can race the other rank and abort this
    # one ("terminate called without an active exception", SIGABRT: a CI failure).
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
