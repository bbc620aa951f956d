"""DICOM reading and writing (pydicom): single slices, slice series -> volumes, CT windowing.

    read_dicom(path)                   one file -> DicomImage, pixels (H, W) float32 in modality
                                       units (Hounsfield units for CT: RescaleSlope/Intercept applied)
    read_dicom_series(folder_or_files) one series -> DicomVolume, pixels (D, H, W) float32, slices
                                       sorted along the slice normal, spacing (dz, dy, dx) mm, affine
    ct_window(hu, width, level)        HU -> float32 in [0, 1] (default heart/mediastinum W 400 / L 40)
    write_dicom_slice(path, ...)       a valid CT/MR file (Explicit VR Little Endian) for tests/phantoms

Axis conventions (DICOM, patient coordinates LPS: +x to the patient's Left, +y Posterior, +z Superior):

- A slice's pixels are (row, col). ImageOrientationPatient = (row direction cosine, 3 values: the
  direction of increasing *column* index; column direction cosine: increasing *row* index).
  PixelSpacing = (row spacing = distance between rows = dy, column spacing = dx), in mm.
- A volume is (D, H, W) = (slice k, row r, col c). `DicomVolume.affine` maps the voxel index
  (k, r, c, 1) to world mm in **RAS** (NIfTI convention: the DICOM LPS x and y are negated):

      world_LPS = P0 + k * step + r * dy * colcos + c * dx * rowcos
      affine    = diag(-1, -1, 1, 1) @ [[step, dy*colcos, dx*rowcos, P0], [0, 0, 0, 1]]

  with P0 the ImagePositionPatient of slice 0 and step the position difference between
  consecutive sorted slices. So `nibabel.Nifti1Image(vol.pixels, vol.affine)` is a correctly
  placed NIfTI of the array as it is, in (D, H, W) order. `vol.to_nifti()` instead writes the
  conventional NIfTI order (x, y, z) = (col, row, slice), as the ACDC files are stored; reading
  that back with `seg.data.io.nifti.read_nifti` gives `vol.pixels` again.

Errors name the file (or folder): FileNotFoundError if missing, ValueError if the file is not
DICOM, truncated, multi-frame or colour, or a folder mixes series / slice sizes / orientations.
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_SOP_CLASS = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}
_IDENTITY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class DicomImage:
    """One DICOM slice.

    pixels:      float32 (H, W) in modality units (HU for CT; the stored values if no rescale)
    spacing:     (row spacing dy, column spacing dx) in mm from PixelSpacing; (1.0, 1.0) if absent
    position:    ImagePositionPatient (x, y, z) LPS mm of the first pixel's centre, or None
    orientation: ImageOrientationPatient (6 direction cosines: row then column direction), or None
    instance:    InstanceNumber or None
    modality:    Modality ("CT", "MR", ...; "" if absent)
    path:        the file read
    """

    pixels: np.ndarray
    spacing: tuple[float, float]
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    modality: str
    path: Path
    series_uid: str | None = None


@dataclass
class DicomVolume:
    """One series as a volume.

    pixels:  float32 (D, H, W) in modality units, slices sorted along the slice normal
    spacing: (dz, dy, dx) mm; dz = distance between consecutive slice positions (SpacingBetweenSlices,
             then SliceThickness, then 1.0 when positions are missing)
    affine:  4x4, voxel index (k, r, c) of `pixels` -> world mm in RAS (see the module docstring)
    files:   the files in slice order (files[k] is pixels[k])
    """

    pixels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    files: list[Path] = field(default_factory=list)
    modality: str = ""

    def to_nifti(self):
        """-> nibabel Nifti1Image with array (x, y, z) = (col, row, slice), float32, RAS affine, mm."""
        import nibabel as nib

        affine = self.affine[:, [2, 1, 0, 3]]
        img = nib.Nifti1Image(np.ascontiguousarray(self.pixels.transpose(2, 1, 0)), affine)
        img.header.set_xyzt_units("mm")
        return img


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

def _floats(value, n: int, path: Path, tag: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed {tag} {value!r}: {err}") from err
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{path}: {tag} must hold {n} finite numbers, got {value!r}")
    return out


def read_dicom(path: str | Path) -> DicomImage:
    """One single-frame grayscale DICOM file -> DicomImage (pixels float32 (H, W) in modality units).

    The Modality LUT is applied with pydicom's `apply_modality_lut` (RescaleSlope/Intercept -> HU
    for CT). FileNotFoundError if the file is missing; ValueError naming the file if it is not
    DICOM, truncated (pixel data shorter than Rows x Columns), multi-frame, colour, or has
    malformed PixelSpacing / position / orientation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {path}")
    try:
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError as err:
            # no 128-byte preamble + "DICM" (old ACR-NEMA style files): accept it only if it parses
            # into an image; anything else is not DICOM
            ds = pydicom.dcmread(path, force=True)
            if "PixelData" not in ds or "Rows" not in ds:
                raise ValueError(f"not a DICOM file: {path} ({err})") from err
            log.debug("%s has no DICOM preamble; read with force=True", path)
    except ValueError:
        raise
    except Exception as err:  # truncated headers raise EOFError, struct.error, OSError, ...
        raise ValueError(f"corrupt or unreadable DICOM file {path}: {type(err).__name__}: {err}") from err
    if "PixelData" not in ds:
        raise ValueError(f"DICOM file {path} holds no image (no PixelData element; truncated file?)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ValueError(f"DICOM file {path} is multi-frame ({frames} frames); expected one slice per file")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"DICOM file {path} is colour ({ds.get('PhotometricInterpretation')}); "
                         "expected a grayscale (MONOCHROME) image")
    try:
        stored = ds.pixel_array
        pixels = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    except Exception as err:  # truncated pixel data, unsupported compression (no decoder), ...
        raise ValueError(f"corrupt or unreadable pixel data in DICOM file {path}: "
                         f"{type(err).__name__}: {err}") from err
    if pixels.ndim != 2:
        raise ValueError(f"DICOM file {path}: expected a 2D image, got pixel array shape {pixels.shape}")
    spacing = _floats(ds.get("PixelSpacing"), 2, path, "PixelSpacing") or (1.0, 1.0)
    if not all(s > 0 for s in spacing):
        raise ValueError(f"{path}: PixelSpacing must be positive, got {spacing}")
    instance = ds.get("InstanceNumber")
    return DicomImage(
        pixels=pixels,
        spacing=(spacing[0], spacing[1]),
        position=_floats(ds.get("ImagePositionPatient"), 3, path, "ImagePositionPatient"),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6, path, "ImageOrientationPatient"),
        instance=int(instance) if instance not in (None, "") else None,
        modality=str(ds.get("Modality", "")),
        path=path,
        series_uid=str(ds.SeriesInstanceUID) if "SeriesInstanceUID" in ds else None,
    )


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_dicom_files(folder: str | Path) -> list[Path]:
    """The *.dcm files of a folder (case-insensitive suffix, not recursive, hidden files skipped);
    if there are none, every regular non-hidden file but DICOMDIR (series stored without suffix)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM series folder not found: {folder}")
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    dcm = [p for p in files if p.suffix.lower() == ".dcm"]
    chosen = dcm or [p for p in files if p.name.upper() != "DICOMDIR" and p.suffix == ""]
    return sorted(chosen, key=lambda p: _natural_key(p.name))


def read_dicom_series(folder_or_files: str | Path | Sequence[str | Path]) -> DicomVolume:
    """A folder of one series (or a list of its files) -> DicomVolume (pixels float32 (D, H, W)).

    Slices are sorted by their position along the slice normal (rowcos x colcos) when every slice
    has ImagePositionPatient and ImageOrientationPatient; else by InstanceNumber when every slice
    has one; else by file name (natural order). ValueError naming the folder if the files belong to
    several series (SeriesInstanceUID), differ in size, orientation or pixel spacing, or two slices
    share one position; errors of single files name the file (see `read_dicom`).
    """
    if isinstance(folder_or_files, (str, Path)):
        where = Path(folder_or_files)
        files = list_dicom_files(where)
        if not files:
            raise FileNotFoundError(f"no DICOM files (*.dcm) in {where}")
    else:
        files = [Path(p) for p in folder_or_files]
        if not files:
            raise ValueError("read_dicom_series: empty list of files")
        parents = {p.parent for p in files}
        where = parents.pop() if len(parents) == 1 else Path(str(files[0].parent) + " (and others)")
    slices = [read_dicom(p) for p in files]

    series = Counter(s.series_uid for s in slices)
    if len(series) > 1:
        parts = ", ".join(f"{uid}: {n} files" for uid, n in series.most_common())
        raise ValueError(f"{where} mixes {len(series)} DICOM series (SeriesInstanceUID {parts}); "
                         "put each series in its own folder")
    shapes = Counter(s.pixels.shape for s in slices)
    if len(shapes) > 1:
        odd = next(s for s in slices if s.pixels.shape != shapes.most_common(1)[0][0])
        raise ValueError(f"{where}: slices differ in size ({dict(shapes)}), e.g. {odd.path} is "
                         f"{odd.pixels.shape}; a series needs one Rows x Columns")
    if any(not np.allclose(s.spacing, slices[0].spacing, rtol=1e-3) for s in slices):
        odd = next(s for s in slices if not np.allclose(s.spacing, slices[0].spacing, rtol=1e-3))
        raise ValueError(f"{where}: PixelSpacing differs between slices ({slices[0].path}: "
                         f"{slices[0].spacing}, {odd.path}: {odd.spacing})")

    geometric = all(s.position is not None and s.orientation is not None for s in slices)
    if geometric:
        iop = np.array(slices[0].orientation)
        for s in slices[1:]:
            if not np.allclose(s.orientation, iop, atol=1e-4):
                raise ValueError(f"{where}: ImageOrientationPatient differs between slices "
                                 f"({slices[0].path}: {tuple(iop)}, {s.path}: {s.orientation})")
        rowcos, colcos = iop[:3], iop[3:]
        normal = np.cross(rowcos, colcos)
        order = sorted(range(len(slices)), key=lambda i: float(np.dot(slices[i].position, normal)))
    elif all(s.instance is not None for s in slices):
        log.warning("%s: slices lack ImagePositionPatient/ImageOrientationPatient; sorted by "
                    "InstanceNumber, identity orientation assumed for the affine", where)
        order = sorted(range(len(slices)), key=lambda i: slices[i].instance)
    else:
        log.warning("%s: slices lack position and InstanceNumber; sorted by file name", where)
        order = sorted(range(len(slices)), key=lambda i: _natural_key(slices[i].path.name))
    slices = [slices[i] for i in order]

    dy, dx = slices[0].spacing
    if geometric:
        positions = np.array([s.position for s in slices])               # (D, 3) LPS
        along = positions @ normal
        gaps = np.diff(along)
        if gaps.size and gaps.min() < 1e-3:
            k = int(np.argmin(gaps))
            raise ValueError(f"{where}: slices {slices[k].path} and {slices[k + 1].path} share one "
                             "position; a series has one slice per position (several phases or "
                             "series mixed in one folder?)")
        if len(slices) > 1:
            if gaps.max() - gaps.min() > 0.01 * gaps.mean() + 1e-3:
                log.warning("%s: uneven slice spacing (%.3f to %.3f mm); the mean is used",
                            where, gaps.min(), gaps.max())
            step = (positions[-1] - positions[0]) / (len(slices) - 1)
        else:
            step = normal * _slice_gap(slices[0].path)
        dz = float(np.linalg.norm(step))
        origin = positions[0]
    else:
        rowcos, colcos = np.array(_IDENTITY_ORIENTATION[:3]), np.array(_IDENTITY_ORIENTATION[3:])
        dz = _slice_gap(slices[0].path)
        step = np.array([0.0, 0.0, dz])
        origin = np.array(slices[0].position if slices[0].position is not None else (0.0, 0.0, 0.0))

    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = dy * colcos
    lps[:3, 2] = dx * rowcos
    lps[:3, 3] = origin
    return DicomVolume(
        pixels=np.stack([s.pixels for s in slices]).astype(np.float32),
        spacing=(dz, float(dy), float(dx)),
        affine=_LPS_TO_RAS @ lps,
        files=[s.path for s in slices],
        modality=slices[0].modality,
    )


def _slice_gap(path: Path) -> float:
    """SpacingBetweenSlices, else SliceThickness, else 1.0 (mm) of one file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(tag)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def ct_window(hu: np.ndarray, width: float = 400.0, level: float = 40.0) -> np.ndarray:
    """Hounsfield units -> float32 in [0, 1]: (hu - (level - width/2)) / width, clipped.

    Default W 400 / L 40 (heart / mediastinum): -160 HU -> 0, 240 HU -> 1. Linear, not the DICOM
    PS3.3 C.11.2.1.2 formula with its half-unit offsets (they differ by < 1/width).
    """
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"ct_window: width={width!r}; expected a positive window width in HU")
    if not (isinstance(level, (int, float)) and math.isfinite(level)):
        raise ValueError(f"ct_window: level={level!r}; expected a finite window level in HU")
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(width),
                   0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# writing (tests, phantoms)
# ---------------------------------------------------------------------------------------------

def write_dicom_slice(path: str | Path, pixels: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0),
                      position: tuple[float, float, float] | None = (0.0, 0.0, 0.0),
                      instance: int | None = 1, slope: float = 1.0, intercept: float = -1024.0,
                      modality: str = "CT", orientation: tuple[float, ...] | None = _IDENTITY_ORIENTATION,
                      slice_thickness: float | None = None, series_uid: str | None = None,
                      study_uid: str | None = None, patient_id: str = "PHANTOM",
                      window: tuple[float, float] | None = None) -> Path:
    """Write one grayscale slice as a DICOM file (Explicit VR Little Endian, with file meta).

    pixels: (H, W) int16 (signed) or uint16 stored values; the modality value is
            stored * slope + intercept (HU for CT). spacing: (row dy, col dx) mm -> PixelSpacing.
    position / orientation / instance: ImagePositionPatient / ImageOrientationPatient /
            InstanceNumber (None leaves the element out, to test fallbacks).
    series_uid / study_uid: None derives deterministic UIDs from patient_id and the parent folder
            name, so all slices written into one folder form one series and repeated runs
            write identical files. window: (width, level) -> WindowWidth / WindowCenter.
    Returns the path. pydicom reads it back (`read_dicom`).
    """
    path = Path(path)
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.int16, np.uint16):
        raise ValueError(f"write_dicom_slice: pixels must be a 2D int16 or uint16 array, got "
                         f"{pixels.dtype} {pixels.shape}")
    modality = str(modality)
    sop_class = _SOP_CLASS.get(modality.upper())
    if sop_class is None:
        raise ValueError(f"write_dicom_slice: modality={modality!r}; expected one of {sorted(_SOP_CLASS)}")
    study_uid = study_uid or generate_uid(entropy_srcs=["study", patient_id])
    series_uid = series_uid or generate_uid(entropy_srcs=["series", patient_id, path.parent.name])
    sop_uid = generate_uid(entropy_srcs=["sop", series_uid, str(instance), path.name])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["frame", study_uid])
    ds.Modality = modality.upper()
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.SeriesNumber = 1
    if instance is not None:
        ds.InstanceNumber = int(instance)
    if position is not None:
        ds.ImagePositionPatient = [f"{float(v):.6g}" for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [f"{float(v):.6g}" for v in orientation]
    ds.PixelSpacing = [f"{float(v):.6g}" for v in spacing]
    if slice_thickness is not None:
        ds.SliceThickness = f"{float(slice_thickness):.6g}"
    ds.RescaleSlope = f"{float(slope):.6g}"
    ds.RescaleIntercept = f"{float(intercept):.6g}"
    if ds.Modality == "CT":
        ds.RescaleType = "HU"
    if window is not None:
        ds.WindowWidth, ds.WindowCenter = (f"{float(v):.6g}" for v in window)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"))).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
