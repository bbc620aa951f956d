"""The phantom writers produce exactly the published layouts, deterministically, once."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

import seg.data.phantoms as phantom
from seg.data.phantoms import (ACDC_GROUPS, COVID_CATEGORIES, COVID_COUNTS, COVID_SPLITS, COVID_SUBDIRS,
                              write_acdc, write_covid_qu_ex)

NAME_PATTERNS = {"COVID-19": r"covid_\d+\.png", "Non-COVID": r"non_COVID \(\d+\)\.png",
                 "Normal": r"Normal \(\d+\)\.png"}
INFO_PATTERN = (r"ED: (\d+)\nES: (\d+)\nGroup: (DCM|HCM|MINF|NOR|RV)\nHeight: \d+\.\d\n"
                r"NbFrame: (\d+)\nWeight: \d+\.\d\n")


def _png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


# ---------------------------------------------------------------------------------------------
# COVID-QU-Ex
# ---------------------------------------------------------------------------------------------

def test_covid_tree_has_the_published_layout(covid_root):
    assert covid_root.name == "Infection Segmentation Data"
    assert sorted(p.name for p in covid_root.iterdir()) == sorted(COVID_SPLITS)
    for split in COVID_SPLITS:
        assert sorted(p.name for p in (covid_root / split).iterdir()) == sorted(COVID_CATEGORIES)
        for c, category in enumerate(COVID_CATEGORIES):
            folder = covid_root / split / category
            assert sorted(p.name for p in folder.iterdir()) == sorted(COVID_SUBDIRS)
            names = [sorted(p.name for p in (folder / sub).iterdir()) for sub in COVID_SUBDIRS]
            assert names[0] == names[1] == names[2], f"{folder}: file names not paired"
            assert len(names[0]) == COVID_COUNTS[split][c]
            assert all(re.fullmatch(NAME_PATTERNS[category], n) for n in names[0]), names[0][:3]


def test_covid_pngs_are_8bit_256_and_masks_binary(covid_root):
    for path in covid_root.rglob("*.png"):
        image = _png(path)
        assert image.shape == (256, 256) and image.dtype == np.uint8, path
        if path.parent.name != "images":
            assert set(np.unique(image)) <= {0, 255}, path
    image = _png(next((covid_root / "Train" / "Normal" / "images").iterdir()))
    assert image.std() > 20, "an image should have contrast"


@pytest.mark.parametrize("split", COVID_SPLITS)
def test_covid_infection_only_in_covid_and_inside_the_lungs(covid_root, split):
    for category in COVID_CATEGORIES:
        folder = covid_root / split / category
        for path in sorted((folder / "images").iterdir()):
            infection = _png(folder / "infection masks" / path.name) > 0
            lung = _png(folder / "lung masks" / path.name) > 0
            assert 0.05 < lung.mean() < 0.5, path
            if category == "COVID-19":
                assert infection.any(), f"{path}: COVID-19 image without infection"
                assert not (infection & ~lung).any(), f"{path}: infection outside the lung mask"
            else:
                assert not infection.any(), f"{path}: {category} image with an infection mask"


def test_covid_infection_is_low_contrast(covid_root):
    """The patches are only a little brighter than the lung around them (the task is not trivial)."""
    folder = covid_root / "Train" / "COVID-19"
    gaps = []
    for path in sorted((folder / "images").iterdir())[:10]:
        image = _png(path).astype(float)
        infection = _png(folder / "infection masks" / path.name) > 0
        lung = _png(folder / "lung masks" / path.name) > 0
        gaps.append((image[infection].mean() - image[lung & ~infection].mean()) / image[lung].std())
    assert 0.3 < np.mean(gaps) < 2.0, gaps   # visible, yet within the lung texture


def test_covid_writer_is_deterministic(covid_root, tmp_path):
    again = write_covid_qu_ex(tmp_path)
    assert again != covid_root
    files = sorted(p.relative_to(covid_root) for p in covid_root.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    for rel in files:
        assert np.array_equal(_png(covid_root / rel), _png(again / rel)), rel


# ---------------------------------------------------------------------------------------------
# ACDC
# ---------------------------------------------------------------------------------------------

def _patients(acdc_root):
    return sorted((acdc_root / part / f"patient{pid:03d}", part)
                  for part, ids in (("training", phantom.ACDC_TRAINING), ("testing", phantom.ACDC_TESTING))
                  for pid in ids)


def _info(folder: Path) -> tuple[int, int, str, int]:
    text = (folder / "Info.cfg").read_text()
    match = re.fullmatch(INFO_PATTERN, text)
    assert match, f"{folder / 'Info.cfg'}:\n{text}"
    ed, es, group, nframes = match.groups()
    return int(ed), int(es), group, int(nframes)


def test_acdc_tree_has_the_published_layout(acdc_root):
    assert acdc_root.name == "database"
    assert sorted(p.name for p in acdc_root.iterdir()) == ["testing", "training"]
    assert sorted(p.name for p in (acdc_root / "training").iterdir()) == [f"patient{i:03d}" for i in range(1, 21)]
    assert sorted(p.name for p in (acdc_root / "testing").iterdir()) == [f"patient{i:03d}" for i in range(101, 111)]
    groups = []
    for folder, part in _patients(acdc_root):
        ed, es, group, nframes = _info(folder)
        assert ed == 1 and 1 < es < nframes
        groups.append((part, group))
        pid = folder.name
        expected = {"Info.cfg", f"{pid}_4d.nii.gz"} | {
            f"{pid}_frame{f:02d}{gt}.nii.gz" for f in (ed, es) for gt in ("", "_gt")}
        assert {p.name for p in folder.iterdir()} == expected
    for part in ("training", "testing"):
        assert {g for p, g in groups if p == part} == set(ACDC_GROUPS)


def test_acdc_nifti_shapes_spacing_and_labels(acdc_root):
    shapes = set()
    for folder, _ in _patients(acdc_root):
        ed, es, _, nframes = _info(folder)
        pid = folder.name
        vol4d = nib.load(folder / f"{pid}_4d.nii.gz")
        assert vol4d.ndim == 4 and vol4d.shape[3] == nframes
        data4d = np.asanyarray(vol4d.dataobj)
        for frame in (ed, es):
            image = nib.load(folder / f"{pid}_frame{frame:02d}.nii.gz")
            gt = nib.load(folder / f"{pid}_frame{frame:02d}_gt.nii.gz")
            nx, ny, nz = image.shape
            shapes.add((nx, ny))
            assert gt.shape == image.shape == vol4d.shape[:3]
            assert 96 <= nx <= 140 and 96 <= ny <= 140 and 6 <= nz <= 10
            dx, dy, dz = image.header.get_zooms()
            assert 1.3 <= dx == dy <= 1.7 and 5 <= dz <= 10, "anisotropic: thick slices"
            assert gt.header.get_zooms() == image.header.get_zooms()
            assert np.allclose(gt.affine, image.affine) and np.allclose(vol4d.affine, image.affine)
            assert np.array_equal(np.asanyarray(image.dataobj), data4d[..., frame - 1])
            labels = np.asanyarray(gt.dataobj)
            assert gt.get_data_dtype() == np.uint8
            assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert len(shapes) > 10, "the in-plane matrix varies per patient"
    assert any(nx != ny for nx, ny in shapes), "some matrices are not square"


def test_acdc_lv_shrinks_from_ed_to_es_and_towards_the_apex(acdc_root):
    for folder, _ in _patients(acdc_root):
        ed, es, _, _ = _info(folder)
        lv = {f: np.asanyarray(nib.load(folder / f"{folder.name}_frame{f:02d}_gt.nii.gz").dataobj) == 3
              for f in (ed, es)}
        assert lv[es].sum() < 0.9 * lv[ed].sum(), folder
        per_slice = lv[ed].sum(axis=(0, 1))          # (z,): base first
        labelled = per_slice[per_slice > 0]
        assert labelled[-1] < labelled[0], folder


def test_acdc_writer_is_deterministic(acdc_root, tmp_path):
    again = write_acdc(tmp_path)
    files = sorted(p.relative_to(acdc_root) for p in acdc_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        if rel.name == "Info.cfg":
            assert (acdc_root / rel).read_text() == (again / rel).read_text()
        else:
            a, b = nib.load(acdc_root / rel), nib.load(again / rel)
            assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)), rel
            assert np.array_equal(a.affine, b.affine), rel


# ---------------------------------------------------------------------------------------------
# written once, atomically
# ---------------------------------------------------------------------------------------------

def test_finished_tree_is_returned_as_it_is_not_rewritten(covid_root, acdc_root, phantom_dir):
    files = [p for root in (covid_root, acdc_root) for p in sorted(root.rglob("*")) if p.is_file()]
    stamps = [(p, p.stat().st_mtime_ns) for p in files]
    assert write_covid_qu_ex(phantom_dir) == covid_root
    assert write_acdc(phantom_dir) == acdc_root
    assert files and [(p, p.stat().st_mtime_ns) for p in files] == stamps      # no file written again
    assert phantom.COVID_VERSION in str(covid_root) and phantom.ACDC_VERSION in str(acdc_root)


def test_racing_writers_share_one_tree(tmp_path):
    calls = []

    def build(folder: Path) -> int:
        calls.append(threading.get_ident())
        folder.mkdir(parents=True)
        time.sleep(0.2)                                  # both writers are busy at once
        (folder / "data.txt").write_text(f"written by {threading.get_ident()}")
        return 1

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        phantom._write_once(tmp_path, "toy-v1", "tree", build, "toy"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2 and results[0] == results[1] == tmp_path / "toy-v1" / "tree"
    assert (results[0] / "data.txt").read_text().startswith("written by")
    assert [p.name for p in tmp_path.iterdir()] == ["toy-v1"], "temporary folders are removed"


def test_writer_needs_a_cache_dir():
    with pytest.raises(ValueError, match="cache_dir"):
        write_covid_qu_ex(None)


def _quick_build(folder: Path) -> int:
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text("done")
    return 1


def test_a_write_killed_mid_way_leaves_no_hidden_temp_folder_behind(tmp_path):
    """kill -9 during a phantom write: the next write removes the dead writer's hidden temp folder."""
    import os
    import signal
    import subprocess
    import sys

    from seg import PROJECT_ROOT

    code = ("import sys, time\nfrom pathlib import Path\nfrom seg.data.phantoms import common as writers\n"
            "def build(folder):\n    folder.mkdir(parents=True)\n    (folder / 'half.txt').write_text('x')\n"
            "    print('writing', flush=True)\n    time.sleep(120)\n"
            f"writers._write_once({str(tmp_path)!r}, 'toy-v1', 'tree', build, 'toy')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and re.fullmatch(rf"\.toy-v1\.tmp-.+-{proc.pid}-[0-9a-f]{{8}}", left[0]), left
    assert phantom._write_once(tmp_path, "toy-v1", "tree", _quick_build, "toy") == tmp_path / "toy-v1" / "tree"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-v1"]


def test_only_stale_temp_folders_are_removed(tmp_path):
    import os
    import socket

    host = socket.gethostname()
    live = tmp_path / f".toy-v1.tmp-{host}-{os.getpid()}-0123abcd"            # a writer still at work
    foreign_new = tmp_path / ".toy-v1.tmp-otherhost-12-0123abcd"            # another machine, recent
    foreign_old = tmp_path / ".toy-v1.tmp-otherhost-13-0123abcd"            # another machine, 7 h untouched
    other = tmp_path / ".not-a-phantom-temp"
    for path in (live, foreign_new, foreign_old, other):
        path.mkdir()
    old = time.time() - 7 * 3600
    os.utime(foreign_old, (old, old))
    assert phantom.remove_stale_temps(tmp_path) == [foreign_old]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, foreign_new, other))
