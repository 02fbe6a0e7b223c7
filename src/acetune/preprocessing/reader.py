"""Decode songs ahead of the encoders, in order, with a bounded look-ahead.

Threads, not processes: decoding (libsndfile / FFmpeg through cffi and PyAV) and resampling (torch)
run in C with the GIL released, so threads overlap them with the encoders on every OS without
pickling ~140 MB of 6-minute 48 kHz audio between processes; measured in benchmarks/preprocess.py.
At most `workers + 1` decoded songs wait at any time, so memory does not grow with the part.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Done:
    """A finished call run inline (`workers == 0`), with the `Future.result()` interface."""

    def __init__(self, fn: Callable[[T], R], item: T):
        self._value, self._error = None, None
        try:
            self._value = fn(item)
        except Exception as err:  # noqa: BLE001 - re-raised by result(), as a Future would
            self._error = err

    def result(self):
        if self._error is not None:
            raise self._error
        return self._value


def prefetch(items: Sequence[T], fn: Callable[[T], R], workers: int) -> Iterator[tuple[T, Future | _Done]]:
    """Yield (item, handle) in order; `handle.result()` is fn(item) or raises what fn raised.

    With workers >= 1, fn runs in that many threads for up to workers + 1 items ahead of the one
    yielded; with 0 it runs inline when the item is reached. A handle is dropped as soon as the
    next item is requested, so its result (decoded audio) can be freed.
    """
    if workers <= 0:
        for item in items:
            yield item, _Done(fn, item)
        return
    ahead = workers + 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        queue: deque[Future] = deque(pool.submit(fn, item) for item in items[:ahead])
        for i, item in enumerate(items):
            if i + ahead < len(items):
                queue.append(pool.submit(fn, items[i + ahead]))
            yield item, queue.popleft()
