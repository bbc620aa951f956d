"""What every phantom generator shares: the fixed seed, the write-once cache (atomic, race-safe,
cleaning up after killed writes), progress bars and smooth-noise helpers.

A tree is generated into a temporary sibling folder and renamed into place when complete, so two
processes of a parallel sweep may write at once: the loser discards its copy and uses the winner's.
A finished tree is returned at once. A write that was killed leaves its hidden temp folder behind;
the next write removes it (`remove_stale_temps`). The version in a tree's folder name changes
whenever its generator changes, so a stale cache is never read.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

SEED = 20240611


# ---------------------------------------------------------------------------------------------
# write-once cache
# ---------------------------------------------------------------------------------------------

def _write_once(cache_dir: str | os.PathLike, version: str, inner: str,
                build: Callable[[Path], int], what: str) -> Path:
    """Return <cache_dir>/<version>/<inner>, building it with build(tmp/<inner>) if absent.

    build writes the tree into the folder it is given and returns the number of files written.
    The tree appears atomically (rename of a complete temporary sibling folder).
    """
    if cache_dir is None:
        raise ValueError(f"cache_dir is None; give the folder where the {what} phantom is written")
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / version
    if (final / inner).is_dir():
        return final / inner
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cache_dir)
    tmp = cache_dir / f".{version}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    log.info("writing the %s phantom to %s (once; later runs reuse it)", what, final)
    try:
        n_files = build(tmp / inner)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / inner).is_dir():   # not a lost race: a real error
                raise
            log.info("another process wrote %s first; using its tree", final)
            return final / inner
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s phantom: %d files in %.1f s -> %s", what, n_files, time.perf_counter() - start,
             final / inner)
    return final / inner


_TEMP = re.compile(r"^\.(?P<version>.+)\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")
FOREIGN_TEMP_AGE_S = 6 * 3600      # a temp folder of another machine is stale after this long


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # another user's live process
        return True
    return True


def remove_stale_temps(cache_dir: str | os.PathLike) -> list[Path]:
    """Delete the hidden temp folders of interrupted phantom writes in cache_dir -> the folders removed.

    A write killed mid-way (kill -9, out of memory, power loss) cannot clean up after itself and
    leaves `.<version>.tmp-<host>-<pid>-<tag>/`. Such a folder is stale when its process is gone
    (same host), or, for another host's folder (a shared cache), when untouched for 6 hours.
    """
    removed = []
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return removed
    host = socket.gethostname()
    for path in cache_dir.iterdir():
        found = _TEMP.match(path.name)
        if not found or not path.is_dir():
            continue
        if found.group("host") in (None, host):
            stale = not _alive(int(found.group("pid")))
        else:
            try:
                stale = time.time() - path.stat().st_mtime > FOREIGN_TEMP_AGE_S
            except OSError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                log.info("removed %s, left by an interrupted phantom write", path)
                removed.append(path)
    return removed


def _progress(items: Iterable, total: int, desc: str) -> Iterable:
    # disable=None: the bar shows on a terminal and stays out of redirected logs
    return tqdm(items, total=total, desc=desc, unit="case", disable=None, leave=False)


# ---------------------------------------------------------------------------------------------
# small image helpers (float32 fields on a pixel grid)
# ---------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to zero mean and unit std: (H, W) float32."""
    field = rng.standard_normal(shape).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    field -= field.mean()
    return field / (field.std() + 1e-6)


def _low_freq(rng: np.random.Generator, shape: tuple[int, int], cells: int = 4) -> np.ndarray:
    """Very smooth field in [-1, 1] (bicubic upsampling of a cells x cells random grid)."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, shape[::-1], interpolation=cv2.INTER_CUBIC), -1, 1)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _soft(signed: np.ndarray, width: float) -> np.ndarray:
    """Soft inside indicator from a signed function (negative inside): 1 inside, 0 outside."""
    return np.clip(0.5 - signed / width, 0.0, 1.0)
