"""``ordered_map``: a thread pool whose results come back in input order, a bounded window ahead.

Image loading is dominated by code that releases the GIL (PIL's JPEG/PNG decoders,
OpenCV's warp), so threads overlap it without the pickling and start-up cost of worker
processes. Results are yielded in the order of ``items`` whatever order the threads finish
in, so anything built from them (embeddings, a cache file) is the same for any worker
count; at most ``ahead`` calls are in flight, so memory stays flat for any input length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from synthface.pipeline.errors import InputError

__all__ = ["ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int = 1, *, ahead: int | None = None
) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads (1: in this thread); input order kept.

    ``ahead`` bounds the calls submitted but not yet yielded (default ``4 * workers``). An
    exception in ``fn`` is raised here at that item's turn; later calls are cancelled.
    """
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        yield from map(fn, items)
        return
    window = max(ahead or 4 * workers, workers)
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthface-load") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
