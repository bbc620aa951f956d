"""Readers round-trip what the phantom writers wrote; patient splits; paired transforms; clear errors."""
from __future__ import annotations

import gzip
import re
from collections import Counter

import cv2
import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path

from seg.data.datasets.acdc import acdc
from seg.data.io.nifti import read_nifti
from seg.data.base import Case
from seg.data.datasets.covid import covid_infection
from seg.data.io.png import read_png
from seg.data.transforms import PairedDataset, apply_image, build_transforms

S = 64


def _zscored(x: np.ndarray) -> bool:
    return abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2


# ---------------------------------------------------------------------------------------------
# COVID-QU-Ex
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def covid(phantom_dir, covid_root):
    return covid_infection(str(covid_root), S, seed=0)


def test_covid_reader_sizes_split_and_train_samples(covid, covid_root):
    assert covid.class_names == ["infection"]
    assert (len(covid.train), len(covid.val), len(covid.test)) == (96, 24, 32)
    assert {k: len(v) for k, v in covid.split.items()} == {"train": 96, "val": 24, "test": 32}
    for key, folder in (("train", "Train"), ("val", "Val"), ("test", "Test")):
        for case_id in covid.split[key]:
            assert re.fullmatch(rf"{folder}/(COVID-19|Non-COVID|Normal)/[^/]+\.png", case_id)
            split, category, name = case_id.split("/")
            assert (covid_root / split / category / "images" / name).is_file()
    assert not set(covid.split["train"]) & set(covid.split["test"])
    for i in (0, 50, 95):
        image, mask = covid.train[i]
        assert image.shape == (1, S, S) and image.dtype == torch.float32
        assert mask.shape == (S, S) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= {0, 1}
        assert _zscored(image.numpy())


def test_covid_cases_keep_the_label_at_original_size(covid, covid_root):
    for cases in (covid.val, covid.test):
        for case in cases:
            assert isinstance(case, Case) and not case.is_3d and case.spacing == (1.0, 1.0)
            assert case.image.shape == (1, 1, S, S) and case.image.dtype == np.float32
            assert _zscored(case.image)
            split, category, name = case.case_id.split("/")
            assert case.meta["category"] == category
            mask = cv2.imread(str(covid_root / split / category / "infection masks" / name), cv2.IMREAD_UNCHANGED)
            assert case.label.dtype == np.uint8 and case.label.shape == (1, 256, 256)
            assert np.array_equal(case.label[0], (mask > 0).astype(np.uint8))
    assert len(covid.test[2:5]) == 3 and covid.test[-1].case_id == covid.split["test"][-1]


def test_covid_root_may_be_the_folder_or_its_parent(covid, covid_root):
    for root in (covid_root, covid_root.parent):
        data = covid_infection(str(root), S)
        assert data.split == covid.split


def test_covid_only_keeps_covid_images(covid_root):
    data = covid_infection(str(covid_root), S, covid_only=True)
    assert (len(data.train), len(data.val), len(data.test)) == (48, 12, 16)
    assert all("/COVID-19/" in i for ids in data.split.values() for i in ids)
    assert all(data.train[i][1].any() for i in range(0, 48, 8))


def test_covid_without_augmentation_trains_on_the_eval_transform(covid_root):
    data = covid_infection(str(covid_root), S, augment=False)
    evaluate = build_transforms(S, train=False)
    for i in (0, 40):
        split, category, name = data.split["train"][i].split("/")
        expected = apply_image(evaluate, read_png(covid_root / split / category / "images" / name))
        assert np.allclose(data.train[i][0][0].numpy(), expected, atol=1e-5)


def test_covid_augmentation_is_seeded(covid_root):
    a, b, c = (covid_infection(str(covid_root), S, seed=s).train for s in (0, 0, 1))
    first = [a[i][0] for i in range(6)]
    assert all(torch.equal(x, b[i][0]) for i, x in enumerate(first))
    assert not all(torch.equal(x, c[i][0]) for i, x in enumerate(first))


# ---------------------------------------------------------------------------------------------
# ACDC
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cardiac(phantom_dir, acdc_root):
    return acdc(str(acdc_root), S, seed=0)


def _info(folder):
    return dict(line.split(": ") for line in (folder / "Info.cfg").read_text().splitlines())


def _gt(folder, frame):
    return nib.load(folder / f"{folder.name}_frame{int(frame):02d}_gt.nii.gz")


def test_acdc_train_slices_are_all_ed_es_slices_of_train_patients(cardiac, acdc_root):
    assert cardiac.class_names == ["rv", "myo", "lv"]
    n_slices = sum(_gt(acdc_root / "training" / pid, _info(acdc_root / "training" / pid)[ph]).shape[2]
                   for pid in cardiac.split["train"] for ph in ("ED", "ES"))
    assert len(cardiac.train) == n_slices
    seen = set()
    for i in range(0, len(cardiac.train), 7):
        image, mask = cardiac.train[i]
        assert image.shape == (1, S, S) and image.dtype == torch.float32 and _zscored(image.numpy())
        assert mask.shape == (S, S) and mask.dtype == torch.int64
        seen |= set(mask.unique().tolist())
    assert seen == {0, 1, 2, 3}
    empty = [i for i in range(len(cardiac.train)) if not cardiac.train.load(i)[1].any()]
    assert empty, "slices above the base have no labels and are kept"


def test_acdc_cases_hold_the_gt_at_original_resolution(cardiac, acdc_root):
    assert (len(cardiac.val), len(cardiac.test)) == (2 * len(cardiac.split["val"]), 20)
    for cases, part in ((cardiac.val, "training"), (cardiac.test, "testing")):
        for case in cases:
            pid, phase = case.meta["patient"], case.meta["phase"]
            folder = acdc_root / part / pid
            gt = _gt(folder, _info(folder)[phase])
            assert case.case_id == f"{pid}_{phase}" and case.is_3d
            assert case.meta["group"] == _info(folder)["Group"]
            assert case.label.dtype == np.uint8
            assert np.array_equal(case.label, np.asanyarray(gt.dataobj).transpose(2, 1, 0))
            dx, dy, dz = (float(z) for z in gt.header.get_zooms())
            assert case.spacing == (dz, dy, dx) and dz > dx
            depth, height, width = case.label.shape
            assert case.image.shape == (depth, 1, S, S) and case.image.dtype == np.float32
            assert all(_zscored(case.image[k]) for k in range(depth))


def test_acdc_split_is_by_patient_stratified_and_seeded(cardiac, acdc_root):
    split = cardiac.split
    train, val, test = (set(split[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val == {p.name for p in (acdc_root / "training").iterdir()}
    assert test == {p.name for p in (acdc_root / "testing").iterdir()}
    groups = {pid: _info(acdc_root / "training" / pid)["Group"] for pid in train | val}
    assert Counter(groups[p] for p in val) == {g: 1 for g in ("DCM", "HCM", "MINF", "NOR", "RV")}
    assert set(groups[p] for p in train) == set(groups.values())
    # slices of val patients never reach training
    assert {pid for pid, _, _ in cardiac.train.index} == train
    assert acdc(str(acdc_root), S, seed=0).split == split
    assert acdc(str(acdc_root.parent), S, seed=1).split["val"] != split["val"]


def test_acdc_without_testing_carves_the_test_set_by_patient(acdc_root, acdc_copy):
    training = sorted(p.name for p in (acdc_root / "training").iterdir())
    root = acdc_copy(training=training)
    data = acdc(str(root), S, seed=3, val_fraction=0.25)
    parts = [set(data.split[k]) for k in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 20
    for part in parts[1:]:
        assert len(part) == 5 and len({_info(root / "training" / p)["Group"] for p in part}) == 5
    assert {c.meta["patient"] for c in data.test} == parts[2]


@pytest.mark.parametrize("labels, names", [([3], ["lv"]), ([1], ["rv"]), ([2, 3], ["myo", "lv"])])
def test_acdc_label_subsets(acdc_root, labels, names):
    data = acdc(str(acdc_root), S, labels=labels)
    assert data.class_names == names
    case = data.test[0]
    folder = acdc_root / "testing" / case.meta["patient"]
    gt = np.asanyarray(_gt(folder, case.meta["frame"]).dataobj).transpose(2, 1, 0)
    expected = np.zeros_like(gt)
    for index, value in enumerate(labels, start=1):
        expected[gt == value] = index
    assert np.array_equal(case.label, expected)
    assert int(data.train[5][1].max()) <= len(labels)


@pytest.mark.parametrize("labels", [[0], [4], [3, 3], [], ["lv"]])
def test_acdc_rejects_bad_labels(acdc_root, labels):
    with pytest.raises(ValueError, match="labels"):
        acdc(str(acdc_root), S, labels=labels)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_acdc_rejects_bad_val_fraction(acdc_root, fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        acdc(str(acdc_root), S, val_fraction=fraction)


def test_read_nifti_on_real_files_shipped_with_nibabel():
    for name in ("example4d.nii.gz", "anatomical.nii", "standard.nii.gz"):
        img = nib.load(data_path / name)
        volume = read_nifti(data_path / name)
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        assert volume.spacing == (zooms[2], zooms[1], zooms[0])
        order = tuple(range(img.ndim))[::-1]
        assert np.array_equal(volume.array, np.asanyarray(img.dataobj).transpose(order))
        assert np.array_equal(volume.affine, img.affine)
    assert read_nifti(data_path / "example4d.nii.gz").array.shape == (2, 24, 96, 128)
    assert read_nifti(data_path / "standard.nii.gz").spacing == (2.0, 3.0, 1.0)


# ---------------------------------------------------------------------------------------------
# paired transforms
# ---------------------------------------------------------------------------------------------

def _disk_scene(h=101, w=133):
    """Bright ring (label 1) around a brighter disk (label 2) off centre; odd, non-square size."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - 40, xx - 80)
    mask = np.where(r < 14, 2, np.where(r < 22, 1, 0)).astype(np.uint8)
    image = np.where(mask == 2, 1.0, np.where(mask == 1, 0.6, 0.1)).astype(np.float32)
    return image, mask


@pytest.mark.parametrize("train", [True, False])
def test_masks_are_resized_nearest_and_follow_the_image(train):
    image, mask = _disk_scene()
    transform = build_transforms(S, train=train, seed=0)
    for _ in range(40 if train else 1):
        out = transform(image=image, mask=mask)
        img, msk = np.asarray(out["image"]).reshape(S, S), out["mask"]
        assert msk.dtype == np.uint8 and msk.shape == (S, S)
        assert set(np.unique(msk)) <= {0, 1, 2}, "no interpolated label values"
        assert img[msk == 2].mean() > img[msk == 1].mean() > img[msk == 0].mean()
        # geometry: the bright object in the image overlays the mask (same flip / angle / scale)
        bright = img > (img[msk == 1].mean() + img[msk == 2].mean()) / 2
        iou = (bright & (msk == 2)).sum() / (bright | (msk == 2)).sum()
        assert iou > 0.7, iou


def test_resize_keeps_a_one_pixel_label_grid_exact():
    """Nearest resize by an integer factor reproduces each label block (no half-pixel shift)."""
    mask = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4) % 4, np.ones((8, 8), np.uint8))   # 32x32
    out = build_transforms(16, train=False)(image=mask.astype(np.float32), mask=mask)["mask"]
    assert np.array_equal(out, np.kron(np.arange(16).reshape(4, 4) % 4, np.ones((4, 4))).astype(np.uint8))


def _edge_and_stripes() -> np.ndarray:
    """50x50 mask: top half an edge between classes 1 and 3 (a linear resize invents a 2 there),
    bottom half one-pixel stripes 0/1 (a resize that is not pixel-centre aligned shifts them)."""
    mask = np.ones((50, 50), np.uint8)
    mask[:25, 25:] = 3
    mask[25:, 1::2] = 0
    return mask


def _mask_steps(compose) -> dict[str, int]:
    return {type(t).__name__: t.mask_interpolation for t in compose.transforms if hasattr(t, "mask_interpolation")}


def test_mask_upscale_50_to_96_is_pixel_centre_nearest_without_new_classes():
    mask = _edge_and_stripes()
    out = build_transforms(96, train=False)(image=mask.astype(np.float32), mask=mask)["mask"]
    src = np.floor((np.arange(96) + 0.5) * 50 / 96).astype(int)       # the source pixel whose centre is nearest
    assert set(np.unique(out)) == {0, 1, 3}                            # LINEAR would add 2 along the edge
    assert np.array_equal(out, mask[src][:, src])                      # INTER_NEAREST shifts the stripes


def test_every_mask_step_interpolates_nearest():
    """Resize: INTER_NEAREST_EXACT. Affine and Elastic: INTER_NEAREST, the only nearest mode of OpenCV's
    warps (albumentations refuses INTER_NEAREST_EXACT for them); never LINEAR."""
    compose = build_transforms(96, train=True, seed=0, elastic=0.5)
    steps = _mask_steps(compose)
    assert steps == {"Resize": cv2.INTER_NEAREST_EXACT, "Affine": cv2.INTER_NEAREST,
                     "ElasticTransform": cv2.INTER_NEAREST}
    mask = _edge_and_stripes()
    for _ in range(30):                                                 # warps never invent a class either
        out = compose(image=mask.astype(np.float32), mask=mask)["mask"]
        assert set(np.unique(out)) <= {0, 1, 3}


class _Same(PairedDataset):
    def __init__(self, n=8):
        super().__init__(build_transforms(32, train=True, seed=0))
        self.image, self.mask = _disk_scene()
        self.n = n

    def __len__(self):
        return self.n

    def load(self, index):
        return self.image, self.mask


def test_dataloader_workers_draw_different_reproducible_augmentations():
    def epoch():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(_Same(), batch_size=1, num_workers=2)
        return [x[0] for x, _ in loader]

    first, again = epoch(), epoch()
    assert all(torch.equal(a, b) for a, b in zip(first, again)), "same torch seed -> same epoch"
    assert not torch.equal(first[0], first[1]), "worker 0 and worker 1 draw different augmentations"


@pytest.mark.parametrize("size", [0, 7, 32.0, True, "96"])
def test_build_transforms_rejects_bad_size(size):
    with pytest.raises(ValueError, match="image_size=.*expected an int >= 8"):
        build_transforms(size, train=True)


# ---------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------

def test_missing_roots_name_the_path_and_the_layout(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError) as err:
        covid_infection(str(missing), S)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    assert "Infection Segmentation Data/" in str(err.value) and "infection masks/" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        acdc(str(missing), S)
    assert str(missing) in str(err.value)
    assert "training/patientNNN/" in str(err.value) and "patientNNN_frameNN_gt.nii.gz" in str(err.value)


def test_roots_not_in_the_layout_are_refused(tmp_path):
    (tmp_path / "Train" / "COVID-19" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="expected layout"):
        covid_infection(str(tmp_path), S)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        acdc(str(tmp_path), S)


def test_a_reader_without_root_names_the_option():
    # readers only read: the phantom switch (root unset) is seg.data.open_dataset's job
    with pytest.raises(ValueError, match=r"no root given; set dataset\.root="):
        covid_infection(None, S)
    with pytest.raises(ValueError, match=r"no root given; set dataset\.root="):
        acdc(None, S)


def test_corrupt_png_names_the_file(covid_copy):
    images = covid_copy / "Val" / "Normal" / "images"
    garbage = sorted(images.iterdir())[0]
    garbage.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=re.escape(str(garbage))):
        covid_infection(str(covid_copy.parent), S)
    garbage.write_bytes((images.parent / "lung masks" / garbage.name).read_bytes())   # repair
    truncated = sorted((covid_copy / "Test" / "COVID-19" / "infection masks").iterdir())[1]
    data = truncated.read_bytes()
    truncated.write_bytes(data[:200])   # header intact, data cut: named up front (no IEND chunk)
    with pytest.raises(ValueError, match=re.escape(str(truncated)) + ".*truncated|truncated.*" + re.escape(str(truncated))):
        covid_infection(str(covid_copy.parent), S)
    # a file whose end survived but whose data is corrupt is named when it is read
    truncated.write_bytes(data[:60] + b"\0" * (len(data) - 72) + data[-12:])
    covid = covid_infection(str(covid_copy.parent), S)
    index = covid.split["test"].index(f"Test/COVID-19/{truncated.name}")
    with pytest.raises(ValueError, match=re.escape(str(truncated))):
        covid.test[index]


def test_image_without_mask_names_the_image(covid_copy):
    image = sorted((covid_copy / "Train" / "COVID-19" / "images").iterdir())[3]
    (covid_copy / "Train" / "COVID-19" / "infection masks" / image.name).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(image))):
        covid_infection(str(covid_copy), S)


def test_corrupt_nifti_names_the_file(acdc_copy):
    root = acdc_copy(training=[f"patient{i:03d}" for i in range(1, 21)],
                     testing=[f"patient{i:03d}" for i in range(101, 111)], copy=("patient103",))
    gt = next((root / "testing" / "patient103").glob("*_gt.nii.gz"))
    gt.write_bytes(b"\x00" * 400)                          # unreadable header (test set: checked early)
    with pytest.raises(ValueError, match=re.escape(str(gt))):
        acdc(str(root), S)
    gt.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(gt))):
        acdc(str(root), S)


def test_truncated_nifti_names_the_file(acdc_copy):
    root = acdc_copy(training=[f"patient{i:03d}" for i in range(1, 21)], copy=("patient002",))
    frame = root / "training" / "patient002" / "patient002_frame01.nii.gz"
    raw = gzip.decompress(frame.read_bytes())
    frame.write_bytes(gzip.compress(raw[: len(raw) // 2]))        # header fine, voxels missing
    with pytest.raises(ValueError, match=re.escape(str(frame))):
        data = acdc(str(root), S, seed=0)                          # train patients load eagerly
        for i in range(len(data.val)):                             # val patients when read
            data.val[i]


@pytest.mark.parametrize("text", ["ED: 1\nES twelve\nGroup: NOR\n", "ED: 1\nGroup: NOR\n", "ED: x\nES: 5\n"])
def test_malformed_info_cfg_names_the_file(acdc_copy, text):
    root = acdc_copy(training=["patient001", "patient002", "patient005"], copy=("patient002",))
    cfg = root / "training" / "patient002" / "Info.cfg"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(cfg))):
        acdc(str(root), S)
