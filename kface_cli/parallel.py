"""Per-photo work (decode, detect, align) on a few threads, results in the photos' order.

Decoding (OpenCV), detection (mediapipe graphs, one per thread) and embedding (ONNX Runtime or
torch, in the caller's thread) release the GIL, so threads overlap them and a folder of photos is
processed about as many times faster as there are cores::

    for photo, faces in map_ordered(find_faces, photos):   # same order as `photos`
        ...
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from kface_cli.defaults import auto_workers

T = TypeVar("T")
R = TypeVar("R")

#: Items submitted ahead of the one being consumed, per thread (bounds the decoded photos held).
AHEAD_PER_WORKER = 2


def default_workers() -> int:
    """Threads for per-photo work (each runs its own detector graphs): :func:`~kface_cli.defaults.auto_workers`."""
    return auto_workers()


def map_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``fn(item)`` for every item, computed on ``workers`` threads, yielded in the items' order.

    ``items`` is consumed lazily (a video or a huge folder is fine): at most
    ``AHEAD_PER_WORKER * workers`` results wait at once. ``workers`` None: :func:`default_workers`;
    with 1 worker, or a single item, everything runs in the calling thread. An exception from
    ``fn`` is raised when its item's turn comes; leaving the loop early cancels the items not started.
    """
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    source = iter(items)
    head = [] if workers == 1 else list(itertools.islice(source, 2))
    if workers == 1 or len(head) < 2:  # one photo: no thread (its detector graphs stay cached here)
        yield from map(fn, itertools.chain(head, source))
        return
    source = itertools.chain(head, source)
    pool = _pool(workers)
    pending: deque[Future[R]] = deque(
        pool.submit(fn, item) for _, item in zip(range(AHEAD_PER_WORKER * workers), source)
    )
    try:
        while pending:
            result = pending.popleft().result()
            for item in source:  # one in, one out
                pending.append(pool.submit(fn, item))
                break
            yield result
    finally:
        for future in pending:
            future.cancel()


def submit(fn: Callable[..., R], *args: object, workers: int | None = None) -> Future[R]:
    """``fn(*args)`` started now on a thread of the pool that ``map_ordered(..., workers)`` uses
    (what that thread keeps, such as detector graphs, serves the later items too)."""
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return _pool(workers).submit(fn, *args)


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    """One pool per thread count, kept for the process: its threads, and what each keeps per
    thread (mediapipe graphs, about 45 MB a thread), serve every later call instead of being
    made again (and, for the graphs, never freed) each time."""
    return ThreadPoolExecutor(workers, thread_name_prefix=f"kface-worker{workers}")
