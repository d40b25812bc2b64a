"""Seconds the QC report takes with and without a real reference (``report.reference``).

What ``make demo``'s report step pays for its real rows: a stand-in for the demo's
generated dataset (a world of 24 identities x 6 images, 32 px, seed 1) gets its report
written without and with the demo's world (96 identities x 12 images, 32 px, seed 0) as
the reference; median of ``--repeats`` runs each. The worlds are rendered once into a
temporary folder (not timed).

    .venv/bin/python bench/report_reference.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from synthface.pipeline.report import write_report
    from synthface.pipeline.world import make_world_dataset

    with tempfile.TemporaryDirectory() as tmp:
        gen, ref = Path(tmp) / "generated", Path(tmp) / "world"
        make_world_dataset(gen, identities=24, per_identity=6, size=32, seed=1)
        make_world_dataset(ref, identities=96, per_identity=12, size=32, seed=0)
        kw = {"contact_identities": 8, "contact_samples": 6}  # the demo's report section
        for name, extra in (("without reference", {}), ("with reference", {"reference": ref})):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                paths = write_report(gen, **kw, **extra)
                times.append(time.perf_counter() - t0)
            size = paths["contact_sheet"].stat().st_size
            print(
                f"{name}: median {statistics.median(times) * 1000:.0f} ms "
                f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}; "
                f"contact sheet {size} bytes)"
            )


if __name__ == "__main__":
    main()
