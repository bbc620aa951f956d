"""Cross-validation folds (seg.data.layout: Folds, assign_folds, cv_split, split_for) and every reader's use of
them on the phantoms: the folds partition the training pool, no key is in two folds, the test split does not
move, the assignment depends on cv.seed only (not the training seed, model or loss), stratified by group."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from seg.data import open_dataset
from seg.data.datasets.acdc import acdc
from seg.data.datasets.covid import covid_infection
from seg.data.datasets.ct_heart import ct_heart
from seg.data.datasets.png_pairs import png_pairs
from seg.data.layout import Folds, assign_folds, cv_split, split_for, stratified_split
from seg.data.phantoms import write
from tests.helpers.compose import compose_cfg


def _cv(fold: int, folds: int = 3, seed: int = 0) -> dict:
    return {"folds": folds, "fold": fold, "seed": seed}


# ---------------------------------------------------------------------------------------------
# the fold logic

def test_three_strata_of_three_give_each_fold_one_of_each():
    keys = ["a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2", "c3"]
    strata = ["A"] * 3 + ["B"] * 3 + ["C"] * 3
    folds = assign_folds(keys, strata, 3, seed=0, what="patients")
    assert sorted(folds) == sorted(keys) and set(folds.values()) == {0, 1, 2}
    for f in range(3):
        members = [k for k, v in folds.items() if v == f]
        assert sorted(k[0] for k in members) == ["a", "b", "c"]


def test_folds_partition_and_balance_sizes_and_strata():
    keys = [f"p{i}" for i in range(1, 24)]                    # 23 keys: strata of 10, 8, 5
    strata = ["DCM"] * 10 + ["NOR"] * 8 + ["RV"] * 5
    folds = assign_folds(keys, strata, 4, seed=3, what="patients")
    sizes = Counter(folds.values())
    assert sum(sizes.values()) == 23 and max(sizes.values()) - min(sizes.values()) <= 1
    group = dict(zip(keys, strata))
    for g, n in (("DCM", 10), ("NOR", 8), ("RV", 5)):
        per = Counter(folds[k] for k in keys if group[k] == g)
        assert sum(per.values()) == n and len(per) == 4            # every stratum in every fold (n >= 4)
        assert max(per.values()) - min(per.values()) <= 1
    # the input order does not matter; the seed does
    assert assign_folds(list(reversed(keys)), list(reversed(strata)), 4, 3, "patients") == folds
    assert any(assign_folds(keys, strata, 4, s, "patients") != folds for s in range(4, 8))


def test_cv_split_makes_fold_i_the_validation_set_and_records_every_fold():
    keys = [f"k{i}" for i in range(1, 11)]
    parts = [cv_split(keys, ["s"] * 10, Folds(5, i, 1), "images") for i in range(5)]
    vals = [p[0]["val"] for p in parts]
    assert sorted(sum(vals, [])) == sorted(keys) and all(len(v) == 2 for v in vals)
    for i, (split, record) in enumerate(parts):
        assert set(split["train"]) == set(keys) - set(split["val"])
        assert record["members"] == vals and record["fold"] == i and (record["folds"], record["seed"]) == (5, 1)
    assert all(v == sorted(v, key=lambda k: int(k[1:])) for v in vals)


def test_split_for_keeps_the_test_of_seed_equal_to_cv_seed_and_folds_the_rest():
    keys = [f"img{i}" for i in range(1, 21)]
    plain = stratified_split(keys, ["all"] * 20, 0.2, 0.2, seed=4, what="images")
    for fold in range(3):
        split = split_for(keys, ["all"] * 20, 0.2, 0.2, seed=99, what="images", cv=_cv(fold, seed=4))
        assert split["test"] == plain["test"]
        assert set(split["train"]) | set(split["val"]) == set(plain["train"]) | set(plain["val"])
        assert not set(split["train"]) & set(split["val"])
    assert split_for(keys, ["all"] * 20, 0.2, 0.2, seed=4, what="images") == plain   # cv off: unchanged


@pytest.mark.parametrize("cv,message", [
    ({"folds": 1, "fold": 0}, "cv.folds=1: expected an integer >= 2"),
    ({"folds": 3, "fold": 3}, "cv.fold=3: expected an integer in 0..2 (cv.folds=3"),
    ({"folds": 3, "fold": None}, "cv.fold=null: expected an integer in 0..2 with cv.folds=3"),
    ({"folds": None, "fold": 1}, "cv.fold=1 without cv.folds"),
    ({"folds": 3, "fold": 0, "seed": -1}, "cv.seed=-1: expected an integer >= 0"),
    ({"folds": 3, "fold": 0, "k": 1}, "cv has unknown key(s) ['k']"),
])
def test_bad_cv_values_name_the_option(cv, message):
    with pytest.raises(ValueError) as err:
        Folds.of(cv)
    assert message in str(err.value)


def test_fewer_keys_than_folds_is_refused_naming_cv_folds():
    with pytest.raises(ValueError, match=r"cv.folds=5: PNG pairs has 3 key\(s\) to split, fewer than the folds"):
        assign_folds(["a", "b", "c"], ["s"] * 3, 5, 0, "PNG pairs")


def test_cv_off_is_none():
    assert Folds.of(None) is None and Folds.of({"folds": None, "fold": None, "seed": 0}) is None


# ---------------------------------------------------------------------------------------------
# the readers on the phantoms

@pytest.fixture(scope="module")
def acdc_root(phantom_cache):
    return write("acdc", phantom_cache / "phantom")


def test_acdc_folds_partition_the_training_patients_by_group_and_keep_testing(acdc_root):
    plain = acdc(str(acdc_root), 32, seed=0, augment=False)
    splits = [acdc(str(acdc_root), 32, seed=7, augment=False, cv=_cv(f)).split for f in range(3)]
    training = sorted(p.name for p in (acdc_root / "training").iterdir())
    vals = [s["val"] for s in splits]
    assert sorted(sum(vals, [])) == training                                # a partition of training/
    for s in splits:
        assert s["test"] == plain.split["test"] == sorted(p.name for p in (acdc_root / "testing").iterdir())
        assert sorted(s["train"] + s["val"]) == training and not set(s["train"]) & set(s["val"])
        assert s["cv"]["members"] == vals and s["cv"]["seed"] == 0
    groups = {p.name: (p / "Info.cfg").read_text().split("Group: ")[1].split()[0]
              for p in (acdc_root / "training").iterdir()}
    for v in vals:                              # 4 patients per group, 3 folds: every group in every fold
        assert set(groups[k] for k in v) == {"DCM", "HCM", "MINF", "NOR", "RV"}
    # the training seed does not move the folds; cv.seed does
    again = acdc(str(acdc_root), 32, seed=0, augment=False, cv=_cv(1)).split
    assert again == splits[1]
    other = acdc(str(acdc_root), 32, seed=7, augment=False, cv=_cv(1, seed=1)).split
    assert other["test"] == splits[1]["test"] and other["cv"]["members"] != splits[1]["cv"]["members"]


def test_covid_folds_pool_the_published_train_and_val_by_category_and_keep_test(phantom_cache):
    root = write("covid_qu_ex", phantom_cache / "phantom")
    plain = covid_infection(str(root), 32, augment=False)
    pool = sorted(plain.split["train"] + plain.split["val"])
    for f in range(3):
        data = covid_infection(str(root), 32, seed=f, augment=False, cv=_cv(f))
        s = data.split
        assert s["test"] == plain.split["test"] and sorted(s["train"] + s["val"]) == pool
        assert len(data.train) == len(s["train"]) and len(data.val) == len(s["val"])
        # COVID-19 / Non-COVID / Normal: 60 / 30 / 30 in Train+Val -> 20 / 10 / 10 per fold
        assert Counter(k.split("/")[1] for k in s["val"]) == {"COVID-19": 20, "Non-COVID": 10, "Normal": 10}
        assert sorted(c.case_id for c in data.val) == sorted(s["val"])


def test_ct_heart_and_png_pairs_fold_their_patients_and_images(phantom_cache, tmp_path):
    root = write("ct_heart", phantom_cache / "phantom")
    plain = ct_heart(str(root), 32, seed=0, augment=False)
    vals = []
    for f in range(2):
        s = ct_heart(str(root), 32, seed=5, augment=False, cv=_cv(f, folds=2)).split
        assert s["test"] == plain.split["test"] and s["dicom_series"] == plain.split["dicom_series"]
        assert sorted(s["train"] + s["val"]) == sorted(plain.split["train"] + plain.split["val"])
        vals.append(s["val"])
    assert not set(vals[0]) & set(vals[1])
    # png_pairs: images/ + masks/ (a copy of some phantom slices)
    import shutil

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    patient = sorted((root / "train").iterdir())[0]
    for i, png in enumerate(sorted((patient / "image").glob("*.png"))[:9]):
        shutil.copy(png, tmp_path / "images" / f"case_{i}.png")
        shutil.copy(patient / "mask" / png.name, tmp_path / "masks" / f"case_{i}.png")
    plain = png_pairs(str(tmp_path), 32, seed=2, augment=False)
    splits = [png_pairs(str(tmp_path), 32, seed=0, augment=False, cv=_cv(f, seed=2)).split for f in range(3)]
    assert all(s["test"] == plain.split["test"] for s in splits) and len(plain.split["test"]) == 2
    assert sorted(sum((s["val"] for s in splits), [])) == sorted(plain.split["train"] + plain.split["val"])


def test_open_dataset_passes_the_run_cv_node_and_split_json_records_it(acdc_root, phantom_cache):
    """The `cv` node of runs of any model, loss and training seed gives one fold assignment."""
    cfgs = [compose_cfg([f"model={m}", f"loss={l}", f"seed={s}", "dataset=acdc", "profile.image_size=32",
                         "cv.folds=3", "cv.fold=2"]) for m, l, s in (("unet", "dice", 0), ("transunet", "wce", 3))]
    assert cfgs[0].cv == cfgs[1].cv
    splits = [open_dataset(c.dataset, seed=c.seed, cache_dir=c.paths.cache, cv=c.cv).split for c in cfgs]
    assert splits[0] == splits[1] and splits[0]["cv"]["fold"] == 2
    assert json.loads(json.dumps(splits[0]))["cv"]["members"][2] == splits[0]["val"]
    off = compose_cfg(["dataset=acdc", "profile.image_size=32"])
    assert "cv" not in open_dataset(off.dataset, seed=0, cache_dir=off.paths.cache, cv=off.cv).split
