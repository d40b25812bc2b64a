"""One error line on the console for flows run from the ``synthface`` CLI.

Prefect logs a failing task and flow itself — the exception with its traceback at ERROR,
then "Finished in state Failed(...)" — before the exception reaches the CLI, which prints
its own ``synthface: error: ...`` line. Without ``--debug`` :func:`one_error_line` keeps
those records off the *console* only: the Prefect API (UI, ``prefect flow-run logs``)
still receives every record with its traceback, and ordinary progress logs still print.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

_FAILED = ("Finished in state Failed", "Finished in state Crashed")


class _DropFailureRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        if record.levelno >= logging.ERROR:
            return False
        return not record.getMessage().startswith(_FAILED)


def _console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import APILogHandler

    seen = []
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, APILogHandler
            ):
                seen.append(handler)
    return seen


@contextlib.contextmanager
def one_error_line(debug: bool) -> Iterator[None]:
    """Keep Prefect's failure records (and tracebacks) off the console unless ``debug``."""
    if debug:
        yield
        return
    import prefect.main  # noqa: F401 - sets up Prefect's logging handlers

    handlers = _console_handlers()
    drop = _DropFailureRecords()
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)
