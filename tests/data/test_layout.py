"""seg.data.layout.stratified_split: per-stratum counts (round half up), a partition, by seed, natural order."""
from __future__ import annotations

import pytest

from seg.data.layout import stratified_split


def _keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(1, n + 1)]


def test_each_stratum_gives_its_rounded_share_to_val_and_test():
    keys = _keys("a", 10) + _keys("b", 4)
    strata = ["A"] * 10 + ["B"] * 4
    split = stratified_split(keys, strata, 0.2, 0.1, seed=0, what="images")
    count = lambda part, p: sum(k.startswith(p) for k in split[part])
    # A: val round(2.0) = 2, test round(1.0) = 1; B: val round(0.8) = 1, test round(0.4) = 0
    assert (count("val", "a"), count("test", "a"), count("train", "a")) == (2, 1, 7)
    assert (count("val", "b"), count("test", "b"), count("train", "b")) == (1, 0, 3)
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(keys)


def test_halves_round_up_not_to_even():
    split = stratified_split(_keys("k", 10), ["s"] * 10, 0.25, 0.25, seed=1, what="images")   # 2.5 -> 3, not 2
    assert (len(split["val"]), len(split["test"]), len(split["train"])) == (3, 3, 4)


def test_the_same_seed_gives_the_same_split_and_lists_are_in_natural_order():
    keys = _keys("p", 12)
    a = stratified_split(keys, ["s"] * 12, 0.25, 0.25, seed=3, what="patients")
    assert a == stratified_split(list(reversed(keys)), ["s"] * 12, 0.25, 0.25, seed=3, what="patients")
    others = [stratified_split(keys, ["s"] * 12, 0.25, 0.25, seed=s, what="patients") for s in range(4, 9)]
    assert any(o != a for o in others)
    for part in a.values():
        assert part == sorted(part, key=lambda k: int(k[1:]))                 # p2 before p10
    assert (len(a["val"]), len(a["test"]), len(a["train"])) == (3, 3, 6)


def test_tiny_data_still_gets_one_val_and_one_test_key():
    split = stratified_split(["x1", "x2", "x3"], ["s"] * 3, 0.1, 0.1, seed=0, what="images")
    assert (len(split["val"]), len(split["test"]), len(split["train"])) == (1, 1, 1)
    split = stratified_split(["x1", "x2"], ["s"] * 2, 0.1, 0.0, seed=0, what="images")
    assert (len(split["val"]), len(split["test"]), len(split["train"])) == (1, 0, 1)


@pytest.mark.parametrize("keys,val,test,message", [
    (4, 0.0, 0.1, "val_fraction=0.0, test_fraction=0.1: expected val_fraction > 0"),
    (4, 0.5, 0.5, "val_fraction + test_fraction < 1"),
    (4, 1.2, 0.1, "val_fraction=1.2; expected a share in [0, 1)"),
    (4, 0.2, -0.1, "test_fraction=-0.1; expected a share in [0, 1)"),
    (2, 0.2, 0.1, "images: need at least 3 to split into train/val/test, found 2"),
    (1, 0.2, 0.0, "images: need at least 2 to split into train/val, found 1"),
    (3, 0.5, 0.4, "images: val_fraction=0.5, test_fraction=0.4 leave no training data out of 3"),
])
def test_bad_fractions_or_too_few_keys_are_refused_naming_them(keys, val, test, message):
    with pytest.raises(ValueError) as err:
        stratified_split(_keys("k", keys), ["s"] * keys, val, test, seed=0, what="images")
    assert message in str(err.value)
