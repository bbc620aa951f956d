"""NIfTI files (nibabel) in (slice, row, col) order, with the voxel size checked as stored.

    read_nifti(path)     -> Volume: array (z, y, x) (or (t, z, y, x) for 4D), spacing (dz, dy, dx) mm, affine
    nifti_shape(path)    -> the stored array shape (x, y, z[, t]) from the header only

The voxel size is read from the header *as stored*: nibabel silently replaces a pixdim of 0 by
1 mm when it loads a file, which would turn a broken header into plausible distances; here a
pixdim <= 0 (or NaN / inf) on a spatial axis is refused, naming the file. Float images holding
NaN or infinite voxels are refused too (`finite=False` lets them through). Errors name the file:
FileNotFoundError if missing, ValueError if corrupt (truncated gzip, bad header, wrong rank).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


@dataclass(frozen=True)
class Volume:
    """A NIfTI image in (slice, row, col) order.

    array:   (z, y, x) for 3D files, (t, z, y, x) for 4D, (1, y, x) for 2D; the file's dtype
    spacing: (dz, dy, dx) in mm, matching the last three axes of `array`
    affine:  the file's voxel (x, y, z) -> world mm matrix, unchanged
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def open_nifti(path: Path) -> nib.Nifti1Image:
    """nibabel image with its header parsed (data not read yet); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib/gzip errors)
        raise ValueError(f"corrupt or unreadable NIfTI file {path}: {type(err).__name__}: {err}") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path} is a {type(img).__name__}, not a NIfTI-1/2 image")
    return img


def stored_pixdim(path: Path, img: nib.Nifti1Image) -> tuple[float, ...]:
    """pixdim[1..n] of the spatial axes exactly as stored in the file (nibabel's load replaces 0 by 1)."""
    try:
        with ImageOpener(path) as f:
            raw = img.header_class.from_fileobj(f, check=False)
    except Exception as err:  # a header nibabel parsed once parses again; keep the error readable anyway
        raise ValueError(f"corrupt or unreadable NIfTI header {path}: {type(err).__name__}: {err}") from err
    n = min(int(raw["dim"][0]), 3)
    return tuple(float(v) for v in raw["pixdim"][1:1 + n])


def nifti_shape(path: str | Path) -> tuple[int, ...]:
    """Array shape as stored, (x, y, z[, t]), from the header only; errors name the file."""
    return tuple(open_nifti(Path(path)).shape)


def read_nifti(path: str | Path, finite: bool = True) -> Volume:
    """NIfTI file (x, y, z[, t]) -> Volume (array (z, y, x) or (t, z, y, x), spacing (dz, dy, dx) mm).

    Spacing comes from the header zooms (pixdim), converted to mm by the header's spatial unit; a
    stored pixdim <= 0 or not finite on a spatial axis is a ValueError naming the file and the values.
    finite: refuse float images with NaN / infinite voxels (ValueError with their count).
    Errors name the file: FileNotFoundError if missing, ValueError if corrupt.
    """
    path = Path(path)
    img = _checked(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib/gzip errors)
        raise ValueError(f"corrupt or unreadable NIfTI file {path}: {type(err).__name__}: {err}") from err
    if data.ndim > 4:
        data = data.reshape(data.shape[:4]) if all(n == 1 for n in data.shape[4:]) else data
    if data.ndim not in (2, 3, 4):
        raise ValueError(f"{path}: expected a 2D, 3D or 4D NIfTI image, got shape {data.shape}")
    if finite and np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise ValueError(f"{path}: {bad} voxel(s) are NaN or infinite; expected finite intensities")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    if data.ndim == 2:
        data, zooms[2] = data[:, :, None], 1.0
    unit = _UNIT_TO_MM.get(img.header.get_xyzt_units()[0], 1.0)
    dx, dy, dz = (z * unit for z in zooms)
    if not all(math.isfinite(s) and s > 0 for s in (dx, dy, dz)):
        raise ValueError(f"{path}: invalid voxel size {tuple(zooms)} in the header")
    order = (2, 1, 0) if data.ndim == 3 else (3, 2, 1, 0)
    return Volume(np.ascontiguousarray(data.transpose(order)), (dz, dy, dx), img.affine)


def _checked(path: Path) -> nib.Nifti1Image:
    img = open_nifti(path)
    pixdim = stored_pixdim(path, img)
    if not all(math.isfinite(v) and v > 0 for v in pixdim):
        raise ValueError(f"{path}: voxel size (pixdim) {pixdim} in the header; every spatial voxel size must "
                         "be > 0 mm (nibabel would silently read 0 as 1 mm). Fix the header (e.g. with "
                         "nibabel: img.header.set_zooms(...)) and save the file again")
    return img
