"""seg.data.io.dicom: pydicom's shipped CT/MR files, our writer, series sorting, affine, windowing, errors."""
from __future__ import annotations

import logging
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian

from seg.data.io.nifti import read_nifti
from seg.data.io.dicom import (ct_window, list_dicom_files, read_dicom, read_dicom_series,
                            write_dicom_slice)

CT_SMALL = get_testdata_file("CT_small.dcm")
MR_SMALL = get_testdata_file("MR_small.dcm")


def _ras(lps) -> np.ndarray:
    return np.array(lps, float) * [-1, -1, 1]


# ---------------------------------------------------------------------------------------------
# pydicom's shipped files
# ---------------------------------------------------------------------------------------------

def test_ct_small_hounsfield_units_match_pydicom_modality_lut():
    img = read_dicom(CT_SMALL)
    ds = pydicom.dcmread(CT_SMALL)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (128, 128)
    np.testing.assert_array_equal(img.pixels, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    # the rescale really is applied: CT_small stores intercept -1024, slope 1
    np.testing.assert_array_equal(img.pixels, ds.pixel_array.astype(np.float32) - 1024)
    assert img.modality == "CT" and img.instance == 1
    assert img.spacing == pytest.approx((0.661468, 0.661468))
    assert img.position == pytest.approx((-158.135803, -179.035797, -75.699997))
    assert img.orientation == pytest.approx((1, 0, 0, 0, 1, 0))
    assert str(img.path) == CT_SMALL


def test_mr_small_without_rescale_keeps_stored_values():
    img = read_dicom(MR_SMALL)
    ds = pydicom.dcmread(MR_SMALL)
    assert "RescaleSlope" not in ds
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (64, 64)
    np.testing.assert_array_equal(img.pixels, ds.pixel_array.astype(np.float32))
    np.testing.assert_array_equal(img.pixels, apply_modality_lut(ds.pixel_array, ds))
    assert img.modality == "MR" and img.spacing == pytest.approx((0.3125, 0.3125))
    assert img.position == pytest.approx((-83.9063, -91.2, 6.6406))


def test_ct_small_as_a_one_slice_series_places_voxels_in_ras(tmp_path):
    shutil.copy(CT_SMALL, tmp_path / "CT_small.dcm")
    vol = read_dicom_series(tmp_path)
    assert vol.pixels.shape == (1, 128, 128)
    assert vol.spacing == pytest.approx((5.0, 0.661468, 0.661468))   # SpacingBetweenSlices 5
    pos = np.array([-158.135803, -179.035797, -75.699997])
    # identity orientation: voxel (k=0, r, c) is at LPS pos + (c dx, r dy, 0)
    for r, c in ((0, 0), (10, 3), (127, 127)):
        lps = pos + [c * 0.661468, r * 0.661468, 0]
        np.testing.assert_allclose(vol.affine @ [0, r, c, 1], [*_ras(lps), 1], atol=1e-4)


def test_file_without_preamble_is_still_read(tmp_path):
    raw = open(CT_SMALL, "rb").read()
    assert raw[128:132] == b"DICM"
    (tmp_path / "nopreamble.dcm").write_bytes(raw[132:])
    img = read_dicom(tmp_path / "nopreamble.dcm")
    np.testing.assert_array_equal(img.pixels, read_dicom(CT_SMALL).pixels)


def test_pixel_spacing_absent_defaults_to_one(tmp_path):
    ds = pydicom.dcmread(MR_SMALL)
    del ds.PixelSpacing
    ds.save_as(tmp_path / "nospacing.dcm")
    assert read_dicom(tmp_path / "nospacing.dcm").spacing == (1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# the writer
# ---------------------------------------------------------------------------------------------

def test_writer_round_trips_through_pydicom(tmp_path):
    stored = (np.arange(6 * 5, dtype=np.int16).reshape(6, 5) * 37 - 300).astype(np.int16)
    path = write_dicom_slice(tmp_path / "a" / "x.dcm", stored, spacing=(0.8, 0.6),
                             position=(1.5, -2.0, 30.0), instance=7, slope=2.0, intercept=-1024,
                             window=(400, 40))
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"                      # preamble + prefix: a real Part 10 file
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    np.testing.assert_array_equal(ds.pixel_array, stored)
    img = read_dicom(path)
    np.testing.assert_array_equal(img.pixels, apply_modality_lut(ds.pixel_array, ds))
    np.testing.assert_array_equal(img.pixels, stored.astype(np.float32) * 2 - 1024)
    assert img.spacing == pytest.approx((0.8, 0.6)) and img.position == pytest.approx((1.5, -2.0, 30.0))
    assert img.instance == 7 and img.modality == "CT"
    assert float(ds.WindowWidth) == 400 and float(ds.WindowCenter) == 40
    # deterministic: the same call writes the same bytes
    again = write_dicom_slice(tmp_path / "b" / "x.dcm", stored, spacing=(0.8, 0.6),
                              position=(1.5, -2.0, 30.0), instance=7, slope=2.0, intercept=-1024,
                              window=(400, 40), series_uid=ds.SeriesInstanceUID)
    assert again.read_bytes() == raw


def test_writer_mr_uint16_and_bad_arguments(tmp_path):
    stored = np.full((4, 4), 1000, np.uint16)
    img = read_dicom(write_dicom_slice(tmp_path / "m.dcm", stored, modality="MR", slope=1, intercept=0))
    assert img.modality == "MR" and img.pixels.max() == 1000
    with pytest.raises(ValueError, match="int16 or uint16"):
        write_dicom_slice(tmp_path / "f.dcm", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="modality='US'"):
        write_dicom_slice(tmp_path / "u.dcm", np.zeros((4, 4), np.int16), modality="US")


# ---------------------------------------------------------------------------------------------
# series -> volume
# ---------------------------------------------------------------------------------------------

def _oblique(deg: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines rotated about the LPS z axis, then tilted."""
    t = np.deg2rad(deg)
    rowcos = np.array([np.cos(t), np.sin(t), 0.0])
    colcos = np.array([-np.sin(t) * np.cos(0.3), np.cos(t) * np.cos(0.3), np.sin(0.3)])
    return rowcos, colcos


def test_series_sorted_along_the_normal_and_affine_maps_every_voxel(tmp_path):
    rowcos, colcos = _oblique()
    normal = np.cross(rowcos, colcos)
    origin, dz, dy, dx = np.array([-50.0, 20.0, 100.0]), 2.5, 0.9, 0.7
    # file names and instance numbers in the opposite order of the positions
    for k in range(5):
        stored = np.full((6, 8), 100 * k, np.int16)
        stored[1, 2] = 7
        write_dicom_slice(tmp_path / f"IM{k:02d}.dcm", stored, spacing=(dy, dx),
                          position=tuple(origin + (4 - k) * dz * normal), instance=5 - k,
                          orientation=(*rowcos, *colcos))
    vol = read_dicom_series(tmp_path)
    assert vol.pixels.shape == (5, 6, 8) and vol.pixels.dtype == np.float32
    assert vol.spacing == pytest.approx((dz, dy, dx), abs=1e-4)
    assert [f.name for f in vol.files] == [f"IM{k:02d}.dcm" for k in (4, 3, 2, 1, 0)]
    np.testing.assert_array_equal(vol.pixels[:, 0, 0], [100 * k - 1024 for k in (4, 3, 2, 1, 0)])
    for k, r, c in ((0, 0, 0), (2, 5, 7), (4, 1, 2), (3, 0, 6)):
        lps = origin + k * dz * normal + r * dy * colcos + c * dx * rowcos
        np.testing.assert_allclose(vol.affine @ [k, r, c, 1], [*_ras(lps), 1], atol=1e-3)
    # to_nifti: conventional (x, y, z) = (col, row, slice) order; read_nifti gives pixels back
    nii = vol.to_nifti()
    assert nii.shape == (8, 6, 5)
    np.testing.assert_allclose(nib.affines.apply_affine(nii.affine, [2, 5, 1]),
                               _ras(origin + 1 * dz * normal + 5 * dy * colcos + 2 * dx * rowcos), atol=1e-3)
    nib.save(nii, tmp_path / "vol.nii.gz")
    back = read_nifti(tmp_path / "vol.nii.gz")
    np.testing.assert_array_equal(back.array, vol.pixels)
    assert back.spacing == pytest.approx(vol.spacing, abs=1e-4)


def test_series_from_a_file_list_and_fallback_orders(tmp_path, caplog):
    stored = [np.full((3, 3), v, np.int16) for v in (10, 20, 30)]
    # no position / orientation: InstanceNumber decides
    for name, inst, s in (("a.dcm", 3, stored[2]), ("b.dcm", 1, stored[0]), ("c.dcm", 2, stored[1])):
        write_dicom_slice(tmp_path / "inst" / name, s, position=None, orientation=None, instance=inst,
                          slice_thickness=3.0, intercept=0)
    with caplog.at_level(logging.WARNING):
        vol = read_dicom_series(tmp_path / "inst")
    assert "InstanceNumber" in caplog.text
    np.testing.assert_array_equal(vol.pixels[:, 0, 0], [10, 20, 30])
    assert vol.spacing == pytest.approx((3.0, 1.0, 1.0))
    # neither position nor instance: natural file-name order (s2 before s10)
    for name, s in (("s10.dcm", stored[2]), ("s2.dcm", stored[0]), ("s3.dcm", stored[1])):
        write_dicom_slice(tmp_path / "names" / name, s, position=None, orientation=None, instance=None,
                          intercept=0)
    files = list(reversed(list_dicom_files(tmp_path / "names")))
    vol = read_dicom_series(files)
    assert [f.name for f in vol.files] == ["s2.dcm", "s3.dcm", "s10.dcm"]
    np.testing.assert_array_equal(vol.pixels[:, 0, 0], [10, 20, 30])


def test_mixed_series_sizes_and_duplicate_positions_name_the_folder(tmp_path):
    for k in range(2):
        write_dicom_slice(tmp_path / "mixed" / f"{k}.dcm", np.zeros((4, 4), np.int16),
                          position=(0, 0, k), series_uid=f"1.2.3.{k + 1}")
    with pytest.raises(ValueError, match=r"mixed mixes 2 DICOM series"):
        read_dicom_series(tmp_path / "mixed")
    write_dicom_slice(tmp_path / "sizes" / "0.dcm", np.zeros((4, 4), np.int16), position=(0, 0, 0))
    write_dicom_slice(tmp_path / "sizes" / "1.dcm", np.zeros((4, 5), np.int16), position=(0, 0, 1))
    with pytest.raises(ValueError, match=r"sizes: slices differ in size.*1\.dcm"):
        read_dicom_series(tmp_path / "sizes")
    for k in range(2):
        write_dicom_slice(tmp_path / "dup" / f"{k}.dcm", np.zeros((4, 4), np.int16), position=(0, 0, 5))
    with pytest.raises(ValueError, match=r"dup.*0\.dcm and .*1\.dcm share one position"):
        read_dicom_series(tmp_path / "dup")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM files"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_dicom_series(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# corrupt input
# ---------------------------------------------------------------------------------------------

def test_truncated_and_non_dicom_files_are_named(tmp_path):
    good = write_dicom_slice(tmp_path / "good.dcm", np.zeros((32, 32), np.int16))
    data = good.read_bytes()
    (tmp_path / "cut_pixels.dcm").write_bytes(data[:-100])
    (tmp_path / "cut_header.dcm").write_bytes(data[:200])
    (tmp_path / "text.dcm").write_bytes(b"not a dicom file at all" * 10)
    for name in ("cut_pixels.dcm", "cut_header.dcm", "text.dcm"):
        with pytest.raises(ValueError, match=rf"{tmp_path}/{name}"):
            read_dicom(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        read_dicom(tmp_path / "missing.dcm")
    # one bad file in a series names that file
    series = tmp_path / "series"
    for k in range(3):
        write_dicom_slice(series / f"{k}.dcm", np.zeros((32, 32), np.int16), position=(0, 0, k))
    (series / "1.dcm").write_bytes((series / "1.dcm").read_bytes()[:-50])
    with pytest.raises(ValueError, match=r"series/1\.dcm"):
        read_dicom_series(series)


# ---------------------------------------------------------------------------------------------
# windowing
# ---------------------------------------------------------------------------------------------

def test_ct_window_maps_the_window_to_unit_range():
    hu = np.array([-1024, -160, -60, 40, 140, 240, 3000], np.int16)
    out = ct_window(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-6)
    np.testing.assert_allclose(ct_window(np.array([-1000.0, -350.0, 300.0]), width=1500, level=-600),
                               [(-1000 + 1350) / 1500, (-350 + 1350) / 1500, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="width=0"):
        ct_window(hu, width=0)


def test_in_plane_affine_agrees_with_nibabels_dicom_wrapper(tmp_path):
    """Independent reference: nibabel.nicom maps (row, col) -> LPS mm; ours maps (k, row, col) -> RAS."""
    import warnings

    rowcos, colcos = _oblique(40.0)
    for k in range(3):
        write_dicom_slice(tmp_path / f"{k}.dcm", np.zeros((6, 8), np.int16), spacing=(0.9, 0.7),
                          position=tuple([-50.0, 20.0, 100.0] + k * 2.5 * np.cross(rowcos, colcos)),
                          instance=k + 1, orientation=(*rowcos, *colcos), slice_thickness=2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "The DICOM readers are highly experimental" (Siemens mosaics)
        from nibabel.nicom import dicomwrappers

        reference = dicomwrappers.wrapper_from_data(pydicom.dcmread(tmp_path / "0.dcm")).affine
    ours_lps = np.diag([-1, -1, 1, 1]) @ read_dicom_series(tmp_path).affine
    np.testing.assert_allclose(ours_lps[:3, [1, 2, 3]], reference[:3, [0, 1, 3]], atol=1e-4)
