"""Timing shared by the bench scripts (run as ``python bench/NAME.py``, which puts this
folder on ``sys.path``)."""

from __future__ import annotations

import time


def best(fn, repeat: int) -> tuple[float, object]:
    """(fastest of ``repeat`` calls in seconds, the last call's result): the minimum is the
    figure least disturbed by whatever else the machine was doing."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out
