"""Data validated before epoch 1 (issue 19, points 6 and 7): every validation and test file is read
and checked when the dataset is built, and `seg.data.check` reports the same problems.

Each bad file is written into a copy of the ACDC phantom's test set (testing/patient103), so a
reader that still read test files lazily would only fail after training.
"""
from __future__ import annotations

import gzip
import re
import struct

import nibabel as nib
import numpy as np
import pytest

from seg.data import open_dataset
from seg.data.base import Case, SegData
from seg.data.check import check
from seg.data.datasets.acdc import acdc
from seg.data.io.nifti import read_nifti
from seg.data.validate import validate_cases
from tests.conftest import compose_cfg

S = 32
TRAINING = [f"patient{i:03d}" for i in range(1, 21)]
TESTING = [f"patient{i:03d}" for i in range(101, 111)]


@pytest.fixture
def bad_test_patient(acdc_copy):
    """-> (database root, testing/patient103 folder, its ED image path, its ED label path); patient103 copied."""
    root = acdc_copy(training=TRAINING, testing=TESTING, copy=("patient103",))
    folder = root / "testing" / "patient103"
    ed = int(dict(line.split(": ") for line in (folder / "Info.cfg").read_text().splitlines())["ED"])
    return root, folder, folder / f"patient103_frame{ed:02d}.nii.gz", folder / f"patient103_frame{ed:02d}_gt.nii.gz"


def _rewrite(path, data=None, affine=None, zooms=None):
    """Save `path` again with new voxel data / affine / voxel size (header otherwise kept)."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj) if data is None else data
    out = nib.Nifti1Image(data, img.affine if affine is None else affine, img.header)
    out.set_data_dtype(data.dtype)
    if zooms is not None:
        out.header.set_zooms(zooms)
    out.to_filename(path)


def _set_stored_pixdim(path, axis: int, value: float) -> None:
    """Write pixdim[axis] into the gzipped header as is (nibabel itself refuses to save a 0)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    assert struct.unpack("<i", raw[:4])[0] == 348                 # little-endian NIfTI-1, as the phantom writes
    raw[76 + 4 * axis: 80 + 4 * axis] = struct.pack("<f", value)
    path.write_bytes(gzip.compress(bytes(raw)))


def _label(gt, value):
    data = np.asanyarray(nib.load(gt).dataobj).astype(np.float64)
    data[data == 2] = value                                       # the myocardium gets a stray value
    return data


def _open(root):
    cfg = compose_cfg(["dataset=acdc", f"dataset.root={root}", f"profile.image_size={S}"])
    return open_dataset(cfg.dataset, seed=0, cache_dir=None)


CORRUPTIONS = {
    # name: (how to break the test patient's ED frame, the message expected, which file it names)
    "truncated label": (lambda img, gt: gt.write_bytes(gzip.compress(gzip.decompress(gt.read_bytes())[:5000])),
                        r"corrupt or unreadable NIfTI file", "gt"),
    "float label": (lambda img, gt: _rewrite(gt, _label(gt, 1.5).astype(np.float32)),
                    r"label file holds non-integer values", "gt"),
    "label 7": (lambda img, gt: _rewrite(gt, _label(gt, 7).astype(np.uint8)),
                r"label values \[7\] outside 0\.\.3", "gt"),
    "label 5": (lambda img, gt: _rewrite(gt, _label(gt, 5).astype(np.uint8)),
                r"label values \[5\] outside 0\.\.3", "gt"),
    "pixdim 0": (lambda img, gt: _set_stored_pixdim(img, 3, 0.0),
                 r"voxel size \(pixdim\) \(.*, 0\.0\) in the header; every spatial voxel size must be > 0", "img"),
    "label spacing differs": (lambda img, gt: _rewrite(gt, zooms=tuple(np.array(nib.load(gt).header.get_zooms()) * (1, 1, 2)),
                                                       affine=nib.load(gt).affine @ np.diag([1, 1, 2, 1])),
                              r"has voxel size .* but its image .* has .*: the label was not drawn on this image's grid",
                              "gt"),
    "NaN voxels": (lambda img, gt: _rewrite(img, np.where(np.arange(np.prod(nib.load(img).shape)).reshape(
        nib.load(img).shape) == 7, np.nan, np.asanyarray(nib.load(img).dataobj)).astype(np.float32)),
                   r"1 voxel\(s\) are NaN or infinite", "img"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_bad_test_file_fails_when_the_dataset_is_built_naming_it(bad_test_patient, name):
    root, _, image, gt = bad_test_patient
    corrupt, message, which = CORRUPTIONS[name]
    corrupt(image, gt)
    path = re.escape(str(gt if which == "gt" else image))
    pattern = rf"(?s)(?=.*{path})(?=.*{message})"
    with pytest.raises(ValueError, match=pattern):          # the reader itself: before any training
        acdc(str(root), S, seed=0)
    with pytest.raises(ValueError, match=pattern):          # and what training calls
        _open(root)
    report = check("acdc", root)                             # check-data reports the same problem
    assert any(re.search(pattern, p) for p in report.problems), report.problems


def test_a_clean_copy_passes_and_every_case_is_read(bad_test_patient):
    root, *_ = bad_test_patient
    data = _open(root)
    assert (len(data.val), len(data.test)) == (10, 20)       # 5 val (one per group) and 10 test patients x (ED, ES)
    assert check("acdc", root).problems == []


def test_label_5_is_refused_in_a_training_patient_too(acdc_copy):
    """The ACDC reader's label-range guard: a 5 must not become background through the lookup table."""
    root = acdc_copy(training=TRAINING, testing=TESTING, copy=("patient004",))
    gt = sorted((root / "training" / "patient004").glob("*_gt.nii.gz"))[0]
    _rewrite(gt, _label(gt, 5).astype(np.uint8))
    for labels in (None, [3], [1]):                          # acdc, acdc_lv, acdc_rv
        with pytest.raises(ValueError, match=re.escape(str(gt)) + r": label values \[5\] outside 0\.\.3"):
            acdc(str(root), S, seed=0, labels=labels)


def test_read_nifti_refuses_a_stored_pixdim_of_zero_that_nibabel_reads_as_one(bad_test_patient):
    _, _, image, _ = bad_test_patient
    _set_stored_pixdim(image, 1, 0.0)
    assert float(nib.load(image).header.get_zooms()[0]) == 1.0   # what nibabel alone would make of it
    with pytest.raises(ValueError, match=re.escape(str(image)) + r": voxel size \(pixdim\) \(0\.0, "):
        read_nifti(image)


# ---------------------------------------------------------------------------------------------
# the generic case checks (any dataset, also a new one)
# ---------------------------------------------------------------------------------------------

def _data(*cases, class_names=("lv",)):
    return SegData(train=[], val=list(cases), test=[], class_names=list(class_names), split={})


def _case(**changes):
    base = dict(case_id="c1", image=np.zeros((2, 1, 8, 8), np.float32), label=np.zeros((2, 6, 6), np.uint8),
                spacing=(5.0, 1.5, 1.5), is_3d=True, meta={"label_file": "/data/c1_gt.nii.gz"})
    return Case(**{**base, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"spacing": (5.0, 0.0, 1.5)}, r"spacing \(5\.0, 0\.0, 1\.5\), expected 3 positive sizes in mm"),
    ({"spacing": (1.0, 1.0)}, r"spacing \(1\.0, 1\.0\), expected 3 positive sizes"),
    ({"image": np.full((2, 1, 8, 8), np.nan, np.float32)}, r"image holds NaN or infinite values"),
    ({"label": np.full((2, 6, 6), 2, np.uint8)}, r"label values up to 2, expected 0\.\.1"),
    ({"label": np.zeros((2, 6, 6), np.int64)}, r"label dtype int64, expected uint8"),
    ({"image": np.zeros((3, 1, 8, 8), np.float32)}, r"image shape \(3, 1, 8, 8\) does not match label shape"),
])
def test_validate_cases_names_the_case_its_file_and_the_problem(changes, message):
    with pytest.raises(ValueError, match=r"(?s)1 problem\(s\).*val: case c1 \(/data/c1_gt\.nii\.gz\): " + message):
        validate_cases(_data(_case(**changes)))
    assert validate_cases(_data(_case(), _case(case_id="c2"))) == 2
