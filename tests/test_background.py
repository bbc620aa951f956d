"""seg.background.prefetched: the next items made by a thread while the caller works, exactly the items a plain
loop takes, errors where the plain loop meets them, the thread stopped when the caller stops."""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from seg.background import prefetched


class Counting:
    """An iterable that records how many items were taken from it, by which thread, and at which nice value."""

    def __init__(self, n: int, fail_at: int | None = None, delay: float = 0.0):
        self.n, self.fail_at, self.delay = n, fail_at, delay
        self.taken: list[int] = []
        self.threads: set[str] = set()
        self.nice: set[int] = set()

    def __iter__(self):
        for i in range(self.n):
            self.threads.add(threading.current_thread().name)
            if sys.platform.startswith("linux"):
                self.nice.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            if i == self.fail_at:
                raise OSError(f"cannot read sample {i}: truncated PNG")
            time.sleep(self.delay)
            self.taken.append(i)
            yield i


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_items_come_in_order_from_a_named_low_priority_thread_taking_no_more_than_the_limit():
    src = Counting(10)
    assert list(prefetched(src, limit=4, name="test-prefetch")) == [0, 1, 2, 3]
    assert src.taken == [0, 1, 2, 3]                              # the 5th is never made: its random draws stay
    assert src.threads == {"test-prefetch"} and not _threads("test-prefetch")
    if sys.platform.startswith("linux"):
        assert src.nice == {19} and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 19
    assert list(prefetched(Counting(3))) == [0, 1, 2]             # no limit: the whole iterable
    assert list(prefetched([], limit=5)) == []


def test_the_iterables_error_is_raised_after_the_items_before_it():
    got = []
    with pytest.raises(OSError, match="cannot read sample 2: truncated PNG"):
        for item in prefetched(Counting(5, fail_at=2), name="test-prefetch"):
            got.append(item)
    assert got == [0, 1] and not _threads("test-prefetch")


def test_stopping_early_stops_the_thread_after_the_item_it_is_making():
    src = Counting(100, delay=0.01)
    items = prefetched(src, name="test-prefetch")
    assert next(items) == 0
    time.sleep(0.1)                                               # the thread runs ahead, then waits for room
    assert len(src.taken) <= 3                                    # one handed out, one queued, one made
    items.close()                                                 # what a break or an exception in the loop does
    assert not _threads("test-prefetch") and len(src.taken) <= 3
    src = Counting(100, delay=0.01)
    with pytest.raises(ZeroDivisionError):
        for item in prefetched(src, name="test-prefetch"):
            1 / (item - 1)                                        # the caller's own error, at its second item
    assert not _threads("test-prefetch") and len(src.taken) <= 4
