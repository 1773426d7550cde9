"""Several decoding streams in one process: each iterator runs in its own thread and their
items are yielded as they come (with NVDEC, several streams keep its engines busy; PyAV
releases the GIL while FFmpeg decodes)."""

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

Item = TypeVar("Item")

# Items a stream may have ready before the consumer takes them (batches: bounds memory).
PENDING_PER_STREAM = 2
_POLL_SECONDS = 0.1


class _Finished:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def in_threads(iterators: list[Iterator[Item]]) -> Iterator[Item]:
    """The items of all `iterators`, each iterated in its own thread, in the order they are
    ready (each iterator's own order kept). An exception in one stops the others and is raised
    here; closing this generator stops them too."""
    ready: queue.Queue = queue.Queue(maxsize=PENDING_PER_STREAM * max(1, len(iterators)))
    stop = threading.Event()

    def hand_over(value: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(value, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def run(iterator: Iterator[Item]) -> None:
        error = None
        try:
            for value in iterator:
                if not hand_over(value):
                    return
        except BaseException as raised:  # handed to the consumer, which raises it
            error = raised
        finally:
            close = getattr(iterator, "close", None)
            try:
                if close is not None:
                    close()
            except BaseException as raised:  # the end marker must still reach the consumer
                error = error or raised
            hand_over(_Finished(error))

    threads = [
        threading.Thread(target=run, args=(iterator,), name=f"vfe-stream-{index}", daemon=True)
        for index, iterator in enumerate(iterators)
    ]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            value = ready.get()
            if isinstance(value, _Finished):
                running -= 1
                if value.error is not None:
                    raise value.error
                continue
            yield value
    finally:
        stop.set()
        for thread in threads:
            thread.join()
