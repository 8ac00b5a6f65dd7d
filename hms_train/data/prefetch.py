"""Running a generator on a background thread, a few items ahead of its consumer.

Threads, not processes: Blosc and zstd decoding, file reads and large copies release the GIL, and a
forked process would inherit locks held by other threads (fsspec's and zarr's event loops among them).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


def in_background(produce: Callable[[], Generator[T, None, None]], depth: int = 4) -> Iterator[T]:
    """The items of `produce()`, made on a daemon thread at most `depth` ahead. An exception in the
    thread is raised in the consumer; a consumer that stops early (closes the generator) stops the
    thread at its next item."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        """Put `item` for the consumer unless it has gone away; False when it has."""
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run():
        items = produce()
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_END)
        except BaseException as err:  # surfaced in the consumer, never swallowed
            offer(err)
        finally:
            items.close()  # runs the producer's own clean-up (its thread pool) now

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        while (item := results.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
