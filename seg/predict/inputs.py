"""INPUT arguments -> jobs (files, DICOM series grouped by SeriesInstanceUID, folders walked) -> pixels."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from seg.data.io.nifti import read_nifti
from seg.data.io.dicom import read_dicom, read_dicom_series
from seg.data.io.png import read_png
from seg.predict.cardiac import acdc_phases

log = logging.getLogger("seg.predict")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")

@dataclass
class Job:
    """One input to segment: a 2D image, a DICOM file or series, or a NIfTI volume (not read yet)."""

    kind: str                   # image | dicom | dicom_series | nifti
    name: str                   # output stem
    paths: list[Path]           # the file(s); a series: its files
    shown: str                  # how it is named in messages and the CSV


@dataclass
class Loaded:
    """An input read into memory.

    pixels:  (D, H, W) raw values: uint8 for 8-bit images, float32 modality units otherwise (the
             file's dtype for NIfTI); a 4D cine file: (T * Z, H, W)
    spacing: mm per axis of pixels' last two (2D) or three (3D) axes; None when unknown (PNG)
    nifti:   (affine, header, file shape) for NIfTI output, None for 2D outputs
    """

    pixels: np.ndarray
    spacing: tuple[float, ...] | None
    is_3d: bool
    nifti: tuple[np.ndarray, nib.Nifti1Header | None, tuple[int, ...]] | None = None
    frames: int = 1             # a 4D cine NIfTI: pixels holds frames x z slices, frame after frame
    meta: dict = field(default_factory=dict)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    suffix = _suffix(path)
    return path.name[:-len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.name


def _has_dicm_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _series_uid(path: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:   # unreadable: its own input, reported by read_dicom
        return f"<unreadable {path.name}>"
    return str(ds.get("SeriesInstanceUID", "<none>"))


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Job], list[tuple[str, str]]]:
    """INPUT arguments -> (jobs, failures [(input, reason)]). Folders are walked recursively; files
    in them that are no image are counted in the log, explicit ones of unknown type are failures."""
    jobs: list[Job] = []
    failures: list[tuple[str, str]] = []
    ignored: dict[str, int] = {}
    for arg in inputs:
        path = Path(arg).expanduser()
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files = sorted(f for f in files if not f.startswith("."))
                jobs += _folder_jobs(Path(folder), [Path(folder, f) for f in files], ignored)
        elif path.is_file():
            suffix = _suffix(path)
            if suffix in IMAGE_SUFFIXES:
                jobs.append(Job("image", _stem(path), [path], str(path)))
            elif suffix in NIFTI_SUFFIXES:
                jobs.append(Job("nifti", _stem(path), [path], str(path)))
            elif suffix in DICOM_SUFFIXES or _has_dicm_marker(path):
                jobs.append(Job("dicom", _stem(path), [path], str(path)))
            else:
                failures.append((str(path), "unsupported input type; expected .png / .jpg / .jpeg, .nii / "
                                            ".nii.gz, a DICOM file (.dcm or the DICM marker) or a folder"))
        else:
            failures.append((str(path), "no such file or folder"))
    if ignored:
        log.info("ignored %d file(s) in input folders that are not images: %s", sum(ignored.values()),
                 ", ".join(f"{n} {s or '(no suffix)'}" for s, n in sorted(ignored.items())))
    used: dict[str, int] = {}
    for job in jobs:   # unique output names
        n = used.get(job.name, 0)
        used[job.name] = n + 1
        if n:
            job.name = f"{job.name}_{n + 1}"
            while job.name in used:
                job.name += "_"
            used[job.name] = 1
    return jobs, failures


def _folder_jobs(folder: Path, files: list[Path], ignored: dict[str, int]) -> list[Job]:
    jobs, dicoms = [], []
    for f in files:
        suffix = _suffix(f)
        if suffix in IMAGE_SUFFIXES:
            jobs.append(Job("image", _stem(f), [f], str(f)))
        elif suffix in NIFTI_SUFFIXES and _stem(f).endswith("_gt"):
            ignored["_gt label maps"] = ignored.get("_gt label maps", 0) + 1   # ACDC ground truth, not images
        elif suffix in NIFTI_SUFFIXES:
            jobs.append(Job("nifti", _stem(f), [f], str(f)))
        elif suffix in DICOM_SUFFIXES or (suffix == "" and f.name.upper() != "DICOMDIR" and _has_dicm_marker(f)):
            dicoms.append(f)
        else:
            ignored[suffix] = ignored.get(suffix, 0) + 1
    groups: dict[str, list[Path]] = {}
    for f in dicoms:
        groups.setdefault(_series_uid(f), []).append(f)
    for i, (uid, members) in enumerate(groups.items()):
        if len(members) == 1 or uid.startswith("<unreadable"):
            jobs += [Job("dicom", _stem(f), [f], str(f)) for f in members]
        else:
            name = folder.name if len(groups) == 1 else f"{folder.name}_series{i + 1}"
            shown = f"{folder}/ ({len(members)} DICOM files, series {uid})"
            jobs.append(Job("dicom_series", name, members, shown))
    return jobs



def load_job(job: Job) -> Loaded:
    """Read one input; errors name the file (ValueError / FileNotFoundError)."""
    if job.kind == "image":
        path = job.paths[0]
        try:
            image = read_png(path)       # OpenCV decodes PNG and JPEG alike, as 8-bit grayscale like the readers
        except ValueError:
            if _suffix(path) == ".png":
                raise
            raise ValueError(f"corrupt or unreadable JPEG file: {path}") from None
        return Loaded(image[None], None, False)
    if job.kind == "dicom":
        dcm = read_dicom(job.paths[0])
        return Loaded(dcm.pixels[None], tuple(dcm.spacing), False, meta={"modality": dcm.modality})
    if job.kind == "dicom_series":
        vol = read_dicom_series(job.paths)
        affine = vol.affine[:, [2, 1, 0, 3]]     # NIfTI order (x, y, z) = (col, row, slice), as vol.to_nifti()
        return Loaded(vol.pixels, tuple(vol.spacing), True, nifti=(affine, None, vol.pixels.shape[::-1]),
                      meta={"modality": vol.modality})
    path = job.paths[0]
    volume = read_nifti(path)
    header = nib.load(path).header
    array, frames = volume.array, 1
    if array.ndim == 4:                          # cine (t, z, y, x): every frame, slice by slice
        frames = array.shape[0]
        array = array.reshape(-1, *array.shape[2:])
    return Loaded(array, tuple(volume.spacing), True, nifti=(volume.affine, header, tuple(header.get_data_shape())),
                  frames=frames, meta=acdc_phases(path))
