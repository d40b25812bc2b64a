"""Progress bars for long work, for a person watching a terminal.

A bar is drawn on stderr only when stderr is a terminal and ``synthface --quiet`` (the
environment variable ``SYNTHFACE_QUIET``, which child processes inherit) is not set; under
Prefect workers, in logs, pipes and tests it is a no-op, so libraries may always ask for one.
"""

from __future__ import annotations

import os
import sys

QUIET_ENV = "SYNTHFACE_QUIET"


def enabled() -> bool:
    if os.environ.get(QUIET_ENV, "") not in ("", "0"):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(
    total: int | None = None,
    *,
    desc: str,
    unit: str = "img",
    leave: bool = True,
    initial: int = 0,
):
    """A tqdm bar (a context manager with ``update(n)``), disabled as the module says.

    Every bar of the project comes from here: a tqdm made elsewhere would ignore ``--quiet``.
    """
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled(),
        dynamic_ncols=True,
        leave=leave,
        smoothing=0.1,
    )
