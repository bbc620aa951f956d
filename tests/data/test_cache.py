"""seg.data.cache: decoded samples kept once per process, bounded, invalidated by file changes, read-only;
augmentation stays random per epoch (the cache holds samples before augmentation)."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from seg.data import cache as cache_mod
from seg.data.cache import SampleCache
from seg.data.pairs import PairItem, PairTrain
from seg.data.transforms import build_transforms


def _png(path, value: int, size: int = 8):
    cv2.imwrite(str(path), np.full((size, size), value, np.uint8))
    return path


def test_each_key_is_decoded_once_and_returned_read_only(tmp_path):
    f = _png(tmp_path / "a.png", 7)
    cache, calls = SampleCache(1 << 20), []

    def decode():
        calls.append(1)
        return np.full((4, 4), 3, np.uint8), np.zeros((4, 4), np.uint8)

    first = cache.get("a", [f], decode)
    second = cache.get("a", [f], decode)
    assert len(calls) == 1 and cache.hits == 1 and cache.misses == 1 and cache.bytes == 32
    assert second[0] is first[0] and not first[0].flags.writeable
    with pytest.raises(ValueError):
        first[0][0, 0] = 1                       # a transform writing in place cannot corrupt later epochs


def test_a_file_changed_on_disk_is_decoded_again(tmp_path):
    f = _png(tmp_path / "a.png", 7)
    cache = SampleCache(1 << 20)
    assert cache.get("a", [f], lambda: np.array([1])).tolist() == [1]
    os.utime(f, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns + 10**9))   # rewritten: new mtime
    assert cache.get("a", [f], lambda: np.array([2])).tolist() == [2]


def test_least_recently_used_entries_go_beyond_the_budget(tmp_path):
    f = _png(tmp_path / "a.png", 7)
    cache = SampleCache(250)                                 # room for two 100-byte entries
    for key in ("x", "y"):
        cache.get(key, [f], lambda: np.zeros(100, np.uint8))
    cache.get("x", [f], lambda: np.zeros(100, np.uint8))     # x used last: y is the oldest
    cache.get("z", [f], lambda: np.zeros(100, np.uint8))
    assert len(cache) == 2 and cache.bytes == 200
    misses = cache.misses
    cache.get("x", [f], lambda: np.zeros(100, np.uint8))
    assert cache.misses == misses                            # x kept
    cache.get("y", [f], lambda: np.zeros(100, np.uint8))
    assert cache.misses == misses + 1                        # y was evicted
    big = cache.get("big", [f], lambda: np.zeros(1000, np.uint8))   # larger than the budget: not kept
    assert big.size == 1000 and cache.bytes <= 250


def test_zero_budget_keeps_nothing_and_a_negative_one_is_refused(tmp_path, monkeypatch):
    f = _png(tmp_path / "a.png", 7)
    cache = SampleCache(0)
    cache.get("a", [f], lambda: np.zeros(4))
    cache.get("a", [f], lambda: np.zeros(4))
    assert len(cache) == 0 and cache.misses == 2
    with pytest.raises(ValueError, match="max_bytes=-1"):
        SampleCache(-1)
    monkeypatch.setattr(cache_mod, "_SHARED", None)
    monkeypatch.setenv("SEGSWEEP_SAMPLE_CACHE_MB", "lots")
    with pytest.raises(ValueError, match=r"\$SEGSWEEP_SAMPLE_CACHE_MB='lots'; expected a number of megabytes"):
        cache_mod.decoded_samples()


def test_training_samples_decode_once_but_augment_anew_every_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "_SHARED", SampleCache(1 << 20))
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    image = (rng.random((32, 32)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "images" / "a.png"), image)
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), ((rng.random((32, 32)) > 0.5) * 255).astype(np.uint8))
    item = PairItem("a.png", tmp_path / "images" / "a.png", tmp_path / "masks" / "a.png", "x")
    ds = PairTrain([item], build_transforms(16, train=True, seed=0))
    draws = [ds[0][0] for _ in range(6)]                     # six "epochs" of the same sample
    shared = cache_mod.decoded_samples()
    assert shared.misses == 1 and shared.hits == 5
    assert any(not np.array_equal(draws[0].numpy(), d.numpy()) for d in draws[1:])


def test_acdc_validation_volumes_are_decoded_once_and_the_test_volumes_every_time(acdc_root, acdc_copy, monkeypatch):
    """Validation reads its cases at every validation: after the first, an ACDC validation case only resizes and
    normalises its cached slices (the NIfTI files are not read again) and equals a fresh read; a rewritten file is
    read again; the test split, read once per run, is not kept."""
    from seg.data.datasets import acdc as acdc_mod

    monkeypatch.setattr(cache_mod, "_SHARED", SampleCache(64 << 20))
    training = sorted(p.name for p in (acdc_root / "training").iterdir())
    root = acdc_copy(training=training, testing=sorted(p.name for p in (acdc_root / "testing").iterdir())[:2],
                     copy=training)                                     # copies: one of their files is touched
    data = acdc_mod.acdc(str(root), 32, seed=0)
    reads = []
    real = acdc_mod.read_nifti
    monkeypatch.setattr(acdc_mod, "read_nifti", lambda path: reads.append(path) or real(path))
    first = [data.val[i] for i in range(len(data.val))]
    assert len(reads) == 2 * len(data.val)                              # image + label of each phase, once
    again = [data.val[i] for i in range(len(data.val))]
    assert len(reads) == 2 * len(data.val)
    fresh = acdc_mod.AcdcCases([e[0] for e in data.val.entries[::2]], data.val.lut, data.val.transform)
    for a, b, c in zip(first, again, [fresh[i] for i in range(len(fresh))]):
        assert a.case_id == b.case_id == c.case_id and a.spacing == b.spacing == c.spacing
        assert np.array_equal(a.image, c.image) and np.array_equal(b.image, c.image)
        assert np.array_equal(b.label, c.label) and not b.label.flags.writeable
    reads.clear()
    image_file = data.val.entries[0][0].files(data.val.entries[0][1])[0]
    os.utime(image_file, ns=(os.stat(image_file).st_atime_ns, os.stat(image_file).st_mtime_ns + 10**9))
    data.val[0]
    assert reads == [image_file, data.val.entries[0][0].files(data.val.entries[0][1])[1]]
    reads.clear()
    data.test[0], data.test[0]
    assert len(reads) == 4
