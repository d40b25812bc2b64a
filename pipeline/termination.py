"""SIGTERM ends a command the way Ctrl-C does.

Python's default for SIGTERM is to die on the spot: no ``finally`` block and no ``atexit``
hook runs. A flow run without ``PREFECT_API_URL`` starts a temporary Prefect server as a
child process and stops it from ``atexit``, so ``kill`` (or a batch system's stop) left
that server running as an orphan, while Ctrl-C cleaned up. Raising ``SystemExit`` from the
handler unwinds the same way Ctrl-C does; the exit status is 143 (128 + SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


def _exit(signum, frame) -> None:
    sys.exit(128 + signum)


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit(143)`` in the main thread.

    A handler someone else installed (a caller, a test runner) is left alone, and the
    previous handler comes back afterwards, so library callers of ``main()`` keep theirs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return
    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
