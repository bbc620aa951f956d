"""The real-dataset readers on generated trees in the published layouts: counts, shapes, label sets,
spacing, patient-level splits; configurable normalisation; bad input named; `seg.data.check`."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from seg import PROJECT_ROOT
from seg.config import build
from seg.data.datasets.acdc import acdc
from seg.data.io.nifti import read_nifti
from seg.data import open_dataset
from seg.data.check import check, main as check_main
from seg.data.phantoms import WRITERS
from seg.data.datasets.covid import covid_infection, covid_lung
from seg.data.datasets.ct_heart import ct_heart, dicom_input
from seg.data.io.dicom import ct_window
from seg.data.datasets.radiography import covid_radiography
from seg.data.transforms import build_transforms, transforms_pair
from tests.conftest import compose_cfg

S = 32
CONF = PROJECT_ROOT / "conf" / "dataset"


# ---------------------------------------------------------------------------------------------
# every dataset config composes with the documented keys
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_dataset_config_names_root_normalisation_and_pipeline(name):
    cfg = compose_cfg([f"dataset={name}"])
    ds = cfg.dataset
    assert ds.name == name and ds.in_channels == 1 and ds.num_classes >= 1
    assert "root" in ds and ds.root is None and "root" not in ds.source   # open_dataset hands the root over
    assert ds.source.transforms.normalize == ("window" if name == "ct_heart" else "zscore")
    assert dict(ds.source.transforms) == dict(cfg.transforms)              # the conf/transforms/ group
    assert {"hflip", "rotate", "scale", "brightness_contrast", "elastic"} <= set(ds.source.transforms)
    if name == "png_pairs":
        assert "phantom" not in ds
    else:
        assert ds.phantom.writer in WRITERS and ds.phantom.experiment.startswith("phantom_")
        assert cfg.tracking.experiment == ds.phantom.experiment              # root unset: the phantom's experiment
        assert compose_cfg([f"dataset={name}", "dataset.root=/data/x"]).tracking.experiment == name


@pytest.mark.parametrize("name", ["acdc", "covid_infection", "covid_lung", "covid_radiography", "ct_heart"])
def test_real_dataset_reader_without_root_says_which_option_to_set(name):
    cfg = compose_cfg([f"dataset={name}"])
    with pytest.raises(ValueError, match=r"dataset\.root="):
        build(cfg.dataset.source, seed=0, root=None)


def test_dataset_without_phantom_and_root_says_which_option_to_set(tmp_path):
    cfg = compose_cfg(["dataset=png_pairs"])
    with pytest.raises(ValueError, match=r"^dataset png_pairs: dataset.root is unset and this dataset has no "
                                         r"embedded phantom; set dataset.root=/path/to/the/data$"):
        open_dataset(cfg.dataset, seed=0, cache_dir=tmp_path)


def test_labels_of_the_binary_acdc_configs():
    assert compose_cfg(["dataset=acdc"]).dataset.source.labels is None
    assert list(compose_cfg(["dataset=acdc_lv"]).dataset.source.labels) == [3]
    assert list(compose_cfg(["dataset=acdc_rv"]).dataset.source.labels) == [1]
    assert compose_cfg(["dataset=acdc_lv"]).dataset.num_classes == 1


# ---------------------------------------------------------------------------------------------
# COVID-QU-Ex lung, COVID-19 Radiography Database
# ---------------------------------------------------------------------------------------------

def test_covid_lung_reads_the_lung_tree(lung_root):
    data = covid_lung(str(lung_root.parent), S)
    assert data.class_names == ["lung"]
    assert (len(data.train), len(data.val), len(data.test)) == (48, 12, 16)
    for case in data.test[:4]:
        split, category, name = case.case_id.split("/")
        mask = cv2.imread(str(lung_root / split / category / "lung masks" / name), cv2.IMREAD_UNCHANGED)
        assert case.label.shape == (1, 256, 256) and case.spacing == (1.0, 1.0)
        assert np.array_equal(case.label[0], (mask == 255).astype(np.uint8)) and case.label.any()
    image, mask = data.train[0]
    assert tuple(image.shape) == (1, S, S) and set(mask.unique().tolist()) == {0, 1}
    # the infection reader refuses the lung tree and names the folder it expected
    with pytest.raises(FileNotFoundError, match="Infection Segmentation Data"):
        covid_infection(str(lung_root), S)


def test_covid_radiography_split_by_seed_stratified_and_resized_to_the_mask(radiography_root):
    data = covid_radiography(str(radiography_root), S, seed=0)
    assert data.class_names == ["lung"]
    ids = {k: set(v) for k, v in data.split.items()}
    assert {k: len(v) for k, v in ids.items()} == {"train": 40, "val": 4, "test": 4}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert len(ids["train"] | ids["val"] | ids["test"]) == 48
    for part in ("val", "test"):      # one per class (10 % of 12, stratified)
        assert sorted(i.split("/")[0] for i in ids[part]) == sorted(["COVID", "Lung_Opacity", "Normal",
                                                                     "Viral Pneumonia"])
    assert covid_radiography(str(radiography_root.parent), S, seed=0).split == data.split
    assert covid_radiography(str(radiography_root), S, seed=1).split != data.split
    case = data.test[0]
    cls, name = case.case_id.split("/")
    assert cv2.imread(str(radiography_root / cls / "images" / name), 0).shape == (299, 299)
    mask = cv2.imread(str(radiography_root / cls / "masks" / name), 0)
    assert case.label.shape == (1, 256, 256) and np.array_equal(case.label[0], (mask > 127).astype(np.uint8))
    assert case.image.shape == (1, 1, S, S)
    only = covid_radiography(str(radiography_root), S, classes=["COVID"])
    assert all(i.startswith("COVID/") for v in only.split.values() for i in v)
    with pytest.raises(ValueError, match="classes"):
        covid_radiography(str(radiography_root), S, classes=["Pneumonia"])


# ---------------------------------------------------------------------------------------------
# ACDC single-structure tasks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels,value", [([3], 3), ([1], 1)])
def test_acdc_binary_tasks_keep_one_structure(acdc_root, labels, value):
    data = acdc(str(acdc_root), S, labels=labels)
    case = data.test[0]
    gt = read_nifti(acdc_root / "testing" / case.meta["patient"] /
                    f"{case.meta['patient']}_frame{case.meta['frame']:02d}_gt.nii.gz").array
    assert set(np.unique(case.label).tolist()) == {0, 1}
    assert np.array_equal(case.label, (gt == value).astype(np.uint8))
    assert case.is_3d and len(case.spacing) == 3


# ---------------------------------------------------------------------------------------------
# CT heart
# ---------------------------------------------------------------------------------------------

def test_ct_heart_split_by_patient_and_slices_match_the_pngs(ct_root):
    data = ct_heart(str(ct_root), S, seed=0, pixel_spacing=0.7)
    assert data.class_names == ["heart"]
    patients = {k: set(data.split[k]) for k in ("train", "val", "test")}
    assert {k: len(v) for k, v in patients.items()} == {"train": 4, "val": 2, "test": 2}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])
    assert len(data.train) == 4 * 20 and len(data.val) == 2 * 20 and len(data.test) == 2 * 20
    assert data.split["dicom_series"] == ["test/patient09/series1", "test/patient10/series1"]
    for case in data.test[8:12]:
        pid, name = case.case_id.split("/")
        assert pid in patients["test"] and case.meta["category"] == pid
        mask = cv2.imread(str(ct_root / "train" / pid / "mask" / name), 0)
        assert np.array_equal(case.label[0], (mask == 255).astype(np.uint8))
        assert case.spacing == (0.7, 0.7)
        # normalize: window keeps the windowed intensities in [0, 1]: the PNG / 255, resized
        png = cv2.imread(str(ct_root / "train" / pid / "image" / name), 0)
        expect = cv2.resize(png, (S, S), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        np.testing.assert_allclose(case.image[0, 0], expect, atol=1e-6)
    assert ct_heart(str(ct_root), S, seed=1).split["train"] != data.split["train"]
    assert ct_heart(str(ct_root), S).test[0].spacing == (1.0, 1.0)


def test_ct_heart_dicom_scans_window_to_the_png_intensities(ct_root):
    volume, x = dicom_input(ct_root / "test" / "patient09" / "series1")
    assert x.shape == volume.pixels.shape == (20, 128, 128) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(x, ct_window(volume.pixels, 400, 40))
    assert volume.spacing[1] == volume.spacing[2] and 2.5 <= volume.spacing[1] <= 3.0
    assert volume.pixels.min() >= -1024 and volume.pixels.max() > 500       # HU: air ... bone
    with pytest.raises(ValueError, match="window.width"):
        dicom_input(ct_root / "test" / "patient09" / "series1", width=-1)
    with pytest.raises(ValueError, match="window"):
        ct_heart(str(ct_root), S, window={"widht": 400})


def test_ct_heart_bad_input(ct_root, tmp_path, caplog):
    root = tmp_path / "ct"
    shutil.copytree(ct_root, root)
    # wrong level: a child and a grandparent of the expected folder
    with pytest.raises(FileNotFoundError, match=rf"pass {re.escape(str(root))} instead"):
        ct_heart(str(root / "train"), S)
    with pytest.raises(FileNotFoundError, match=rf"pass {re.escape(str(root))} instead"):
        ct_heart(str(tmp_path), S)
    # an orphan mask is a logged, counted skip naming the file
    orphan = root / "train" / "patient01" / "mask" / "999.png"
    shutil.copy(root / "train" / "patient01" / "mask" / "000.png", orphan)
    with caplog.at_level(logging.WARNING):
        ct_heart(str(root), S)
    assert str(orphan) in caplog.text and "1 problem(s) skipped" in caplog.text
    # an image without its mask is an error naming the image
    image = root / "train" / "patient02" / "image" / "005.png"
    (root / "train" / "patient02" / "mask" / "005.png").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(image))):
        ct_heart(str(root), S)


# ---------------------------------------------------------------------------------------------
# wrong levels and bad masks, for the PNG readers
# ---------------------------------------------------------------------------------------------

def test_wrong_level_roots_name_the_folder_to_pass(covid_root, lung_root, radiography_root, acdc_root, tmp_path):
    cases = [(covid_infection, covid_root, covid_root / "Train"),
             (covid_lung, lung_root, lung_root / "Val" / "Normal"),
             (covid_radiography, radiography_root, radiography_root / "COVID" / "images"),
             (acdc, acdc_root, acdc_root / "training")]
    for reader, root, child in cases:
        with pytest.raises(FileNotFoundError, match=rf"inside the dataset; pass {re.escape(str(root))} instead"):
            reader(str(child), S)
    # the Kaggle zip nests the folder twice: COVID-QU-Ex_Dataset/X/X/Train; its top folder works as root
    kaggle = tmp_path / "COVID-QU-Ex_Dataset"
    (kaggle / covid_root.name).mkdir(parents=True)
    (kaggle / covid_root.name / covid_root.name).symlink_to(covid_root, target_is_directory=True)
    for root in (kaggle, kaggle / covid_root.name, kaggle / covid_root.name / covid_root.name):
        assert len(covid_infection(str(root), S).split["test"]) == 32
    # pointed two levels up: the layout is found further down and named
    with pytest.raises(FileNotFoundError, match=rf"further down: pass {re.escape(str(acdc_root))}"):
        acdc(str(acdc_root.parent.parent), S)


def test_mask_values_outside_the_binary_set_name_the_file(lung_root, tmp_path):
    root = tmp_path / "Lung Segmentation Data"
    shutil.copytree(lung_root, root)
    mask = root / "Test" / "Normal" / "lung masks" / sorted((root / "Test" / "Normal" / "lung masks").iterdir())[0].name
    values = cv2.imread(str(mask), 0)
    values[values == 255] = 200
    values[:4, :4] = 128
    cv2.imwrite(str(mask), values)
    data = covid_lung(str(root), S)
    index = data.split["test"].index(f"Test/Normal/{mask.name}")
    with pytest.raises(ValueError, match=re.escape(str(mask)) + r".*values \[128, 200\].*strict_masks"):
        data.test[index]
    lenient = covid_lung(str(root), S, strict_masks=False).test[index]
    assert np.array_equal(lenient.label[0], (values > 127).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# configurable normalisation and augmentation
# ---------------------------------------------------------------------------------------------

def test_fixed_and_window_normalisation_values():
    image = np.full((10, 12), 0.6, np.float32)
    fixed = build_transforms(16, train=False, normalize="fixed", mean=0.5, std=0.25)
    np.testing.assert_allclose(fixed(image=image)["image"], 0.4, atol=1e-6)            # (0.6 - 0.5) / 0.25
    np.testing.assert_allclose(fixed(image=np.full((10, 12), 153, np.uint8))["image"], 0.4, atol=1e-6)
    window = build_transforms(16, train=False, normalize="window")
    np.testing.assert_allclose(window(image=np.full((10, 12), 51, np.uint8))["image"], 0.2, atol=1e-6)
    with pytest.raises(ValueError, match="normalize='fixed' needs mean"):
        build_transforms(16, train=False, normalize="fixed")
    with pytest.raises(ValueError, match="normalize='minmax'"):
        build_transforms(16, train=False, normalize="minmax")
    with pytest.raises(ValueError, match=r"unknown transforms option\(s\) \['flip'\]"):
        transforms_pair(16, True, 0, {"flip": 0.5})


def test_elastic_and_vertical_flip_keep_masks_in_the_label_set():
    rng = np.random.default_rng(0)
    image = rng.random((40, 50)).astype(np.float32)
    mask = (rng.random((40, 50)) * 4).astype(np.uint8)
    train, _ = transforms_pair(32, True, 3, {"elastic": 1.0, "vflip": 1.0, "hflip": 0.0, "rotate": 0,
                                             "scale": 0, "shift": 0})
    names = [type(t).__name__ for t in train.transforms]
    assert "ElasticTransform" in names and "VerticalFlip" in names and "Affine" not in names
    for _ in range(5):
        out = train(image=image, mask=mask)
        assert out["mask"].shape == (32, 32) and set(np.unique(out["mask"]).tolist()) <= {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------------
# python -m seg.data.check
# ---------------------------------------------------------------------------------------------

def test_check_counts_a_clean_tree(ct_root, acdc_root, capsys):
    report = check("ct_heart", ct_root)
    assert not report.problems
    assert sum(report.counts["train"].values()) == 160 and report.counts["train"]["patient01"] == 20
    assert report.sizes["image"] == {(128, 128): 160}
    assert set(report.labels) == {0, 255}
    assert len(report.counts["test (DICOM series, slices)"]) == 2
    assert check_main(["acdc", str(acdc_root)]) == 0
    out = capsys.readouterr().out
    assert "training: 20  (DCM 4, HCM 4, MINF 4, NOR 4, RV 4)" in out and "testing: 10" in out
    assert "OK: no problems found" in out


def test_check_lists_every_problem_with_file_names(lung_root, ct_root, tmp_path, capsys):
    root = tmp_path / "Lung Segmentation Data"
    shutil.copytree(lung_root, root)
    masks = sorted((root / "Train" / "COVID-19" / "lung masks").iterdir())
    masks[0].unlink()                                                      # missing mask
    values = cv2.imread(str(masks[1]), 0)
    values[0, 0] = 7
    cv2.imwrite(str(masks[1]), values)                                     # bad label value
    masks[2].write_bytes(masks[2].read_bytes()[:300])                      # truncated PNG
    shutil.copytree(ct_root, tmp_path / "ct")
    dcm = tmp_path / "ct" / "test" / "patient10" / "series1" / "0003.dcm"
    dcm.write_bytes(dcm.read_bytes()[:-500])                               # truncated DICOM
    assert check_main(["covid_lung", str(root)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS: 3" in out and "Train: 47" in out
    for path in masks[:3]:
        assert str(path.name) in out
    assert "values [0, 7, 255]" in out and "truncated PNG" in out and "missing mask" in out
    assert check_main(["ct_heart", str(tmp_path / "ct")]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS: 1" in out and str(dcm) in out


def test_check_cli_exit_status_for_a_wrong_root(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "seg.data.check", "acdc", str(tmp_path / "nowhere")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert str(tmp_path / "nowhere") in proc.stderr and "training/patientNNN/" in proc.stderr


# ---------------------------------------------------------------------------------------------
# nibabel's shipped NIfTI files through our readers
# ---------------------------------------------------------------------------------------------

NIB_FILES = ["anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii",
             "reoriented_anat_moved.nii", "resampled_anat_moved.nii", "standard.nii.gz"]


@pytest.mark.parametrize("name", NIB_FILES)
def test_read_nifti_matches_nibabel_on_its_shipped_files(name):
    import nibabel as nib
    from nibabel.testing import data_path

    img = nib.load(data_path / name)
    vol = read_nifti(data_path / name, finite=False)
    data = np.asanyarray(img.dataobj)
    assert np.array_equal(vol.array, data.transpose(tuple(range(data.ndim))[::-1]), equal_nan=True)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    assert vol.spacing == pytest.approx((zooms[2], zooms[1], zooms[0]))
    np.testing.assert_array_equal(vol.affine, img.affine)


def test_read_nifti_refuses_nan_voxels_naming_the_file_and_their_count():
    """nibabel's resampled_anat_moved.nii holds NaN outside the resampled field of view."""
    import nibabel as nib
    from nibabel.testing import data_path

    path = data_path / "resampled_anat_moved.nii"
    n_nan = int(np.isnan(np.asanyarray(nib.load(path).dataobj)).sum())
    assert n_nan == 153
    with pytest.raises(ValueError, match=re.escape(f"{path}: 153 voxel(s) are NaN or infinite")):
        read_nifti(path)


def test_read_nifti_refuses_cifti_naming_the_file():
    from nibabel.testing import data_path

    with pytest.raises(ValueError, match=r"row_major\.dconn\.nii is a Cifti2Image"):
        read_nifti(data_path / "row_major.dconn.nii")


def test_acdc_reader_on_a_database_built_from_nibabels_anatomical_file(tmp_path):
    """Real (big-endian, non-square, 25-slice) NIfTI data through the whole ACDC reader."""
    import nibabel as nib
    from nibabel.testing import data_path

    img = nib.load(data_path / "anatomical.nii")
    data = np.asanyarray(img.dataobj)
    gt = np.digitize(data, np.percentile(data, [60, 75, 90])).astype(np.uint8)      # 0..3
    for part, pid in (("training", 1), ("training", 2), ("testing", 101)):
        folder = tmp_path / "database" / part / f"patient{pid:03d}"
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text("ED: 1\nES: 2\nGroup: NOR\n")
        for frame in (1, 2):
            shutil.copy(data_path / "anatomical.nii", folder / f"patient{pid:03d}_frame{frame:02d}.nii")
            nib.save(nib.Nifti1Image(gt, img.affine, img.header), folder / f"patient{pid:03d}_frame{frame:02d}_gt.nii.gz")
    out = acdc(str(tmp_path), S, labels=[3])
    assert out.split == {"train": ["patient001"], "val": ["patient002"], "test": ["patient101"]}
    case = out.test[0]
    zooms = [float(z) for z in img.header.get_zooms()]
    assert case.label.shape == (25, 41, 33) and case.spacing == pytest.approx(zooms[::-1])
    assert np.array_equal(case.label, (gt == 3).transpose(2, 1, 0).astype(np.uint8))
    assert len(out.train) == 2 * 25


@pytest.mark.parametrize("writer", ["write_ct_heart", "write_covid_radiography"])
def test_new_phantom_writers_are_deterministic(writer, tmp_path):
    import seg.data.phantoms as phantom

    a, b = (getattr(phantom, writer)(tmp_path / d) for d in ("a", "b"))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and len(files) > 40
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert getattr(phantom, writer)(tmp_path / "a") == a          # written once: the same tree comes back


def test_check_acdc_lists_bad_labels_and_truncated_frames(acdc_copy, capsys):
    import nibabel as nib

    root = acdc_copy(training=["patient001", "patient002", "patient005"], testing=["patient101"],
                     copy=["patient001", "patient002"])
    gt = root / "training" / "patient001" / "patient001_frame01_gt.nii.gz"
    img = nib.load(gt)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(data, img.affine, img.header), gt)
    frame = sorted((root / "training" / "patient002").glob("*_frame??.nii.gz"))[0]
    frame.write_bytes(frame.read_bytes()[:400])
    (root / "training" / "patient005").unlink()            # a symlink: replace it by a folder without Info.cfg
    (root / "training" / "patient005").mkdir()
    assert check_main(["acdc", str(root)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS: 3" in out
    assert f"{gt}: label values [5] outside 0..3" in out
    assert str(frame) in out and str(root / "training" / "patient005" / "Info.cfg") in out
    assert "training: 2" in out and "testing: 1" in out
