"""A bounded in-memory cache of decoded samples: each image file is decoded once per process.

    cache = SampleCache(max_bytes=256 * 2**20)
    image, mask = cache.get(key, files, lambda: read_pair(item))

Only the *decoded* arrays (before augmentation) are kept, so the paired augmentation still draws
new random parameters every epoch. Entries are keyed by the caller's key plus the size and
modification time of every file they were decoded from (a file rewritten on disk is decoded again),
evicted least-recently-used beyond `max_bytes`, and returned read-only (a transform that wrote into
a cached array would change every later epoch's input; albumentations returns new arrays).

`decoded_samples()` is the process-wide cache the PNG readers use; its budget comes from
$SEGSWEEP_SAMPLE_CACHE_MB (default 512; 0 turns caching off). DataLoader workers are processes:
each has its own cache (with the cpu profile's num_workers=0 the main process decodes each image
once per run).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np

DEFAULT_MB = 512
ENV = "SEGSWEEP_SAMPLE_CACHE_MB"


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _freeze(value):
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
        return value
    if isinstance(value, tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, list):
        return [_freeze(v) for v in value]
    return value


class SampleCache:
    """LRU of decoded samples (numpy arrays or tuples of them), at most max_bytes of array data.

    max_bytes 0: nothing is kept (every get decodes). Thread-safe (one lock around the dict).
    hits / misses / bytes: counters for the benchmarks and tests.
    """

    def __init__(self, max_bytes: int):
        if int(max_bytes) < 0:
            raise ValueError(f"max_bytes={max_bytes}; expected an integer >= 0 (0: no caching)")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    @staticmethod
    def _stamp(files: Sequence[Path]) -> tuple:
        out = []
        for f in files:
            st = os.stat(f)
            out.append((str(f), st.st_size, st.st_mtime_ns))
        return tuple(out)

    def get(self, key: Hashable, files: Sequence[str | Path], decode: Callable[[], object]):
        """The decoded value of `key` (decode() on a miss or when one of `files` changed on disk)."""
        if self.max_bytes == 0:
            self.misses += 1
            return decode()
        full = (key, self._stamp(files))
        with self._lock:
            value = self._entries.get(full)
            if value is not None:
                self._entries.move_to_end(full)
                self.hits += 1
                return value[0]
        value = _freeze(decode())
        size = _nbytes(value)
        with self._lock:
            self.misses += 1
            if size > self.max_bytes:
                return value
            if full not in self._entries:
                self._entries[full] = (value, size)
                self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, old) = self._entries.popitem(last=False)
                self.bytes -= old
        return value


_SHARED: SampleCache | None = None


def decoded_samples() -> SampleCache:
    """The process-wide cache of decoded image / mask pairs ($SEGSWEEP_SAMPLE_CACHE_MB, default 512)."""
    global _SHARED
    if _SHARED is None:
        raw = os.environ.get(ENV, str(DEFAULT_MB))
        try:
            mb = float(raw)
        except ValueError:
            raise ValueError(f"${ENV}={raw!r}; expected a number of megabytes >= 0 (0: no caching)") from None
        if mb < 0:
            raise ValueError(f"${ENV}={raw!r}; expected a number of megabytes >= 0 (0: no caching)")
        _SHARED = SampleCache(int(mb * 2**20))
    return _SHARED
