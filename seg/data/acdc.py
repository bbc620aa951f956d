"""ACDC cardiac cine-MRI reader (NIfTI, ED and ES frames with ground truth).

Layout of the real database (and of the embedded phantom, `seg.data.phantom.write_acdc`):

    database/{training,testing}/patientNNN/
        Info.cfg                                 "ED: 1", "ES: 12", "Group: DCM", ...
        patientNNN_frameNN.nii.gz                ED and ES frames, array (x, y, z)
        patientNNN_frameNN_gt.nii.gz             0 background, 1 RV, 2 myocardium, 3 LV

Splits are by patient: training/ patients are split into train/val by `seed`, stratified by
Group; testing/ patients are the test set (if testing/ is absent, the test set is carved from
training/ the same way). In memory volumes are (slice, row, col) = (z, y, x), i.e. the file's
(x, y, z) array transposed, with spacing (dz, dy, dx) in mm from the header.
"""
from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import nibabel as nib
import numpy as np

from seg.data.base import Case, SegData
from seg.data.phantom import write_acdc
from seg.data.layout import resolve_root
from seg.data.transforms import PairedDataset, apply_image, transforms_pair

log = logging.getLogger(__name__)

TOP = "database"
STRUCTURES = {1: "rv", 2: "myo", 3: "lv"}      # ACDC label value -> structure name
PHASES = ("ED", "ES")
LAYOUT = f"""\
  {TOP}/                                (root may be this folder or its parent)
    training/patientNNN/                split into train/val by patient, stratified by Group
      Info.cfg                          lines 'ED: 1', 'ES: 12', 'Group: DCM', ...
      patientNNN_frameNN.nii.gz         the ED and ES frames (NN two digits, 1-based)
      patientNNN_frameNN_gt.nii.gz      labels 0 background, 1 RV, 2 myocardium, 3 LV
    testing/patientNNN/                 same files; the test set (optional)"""


# ---------------------------------------------------------------------------------------------
# low-level NIfTI loading
# ---------------------------------------------------------------------------------------------

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


_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


def _open_nifti(path: Path) -> nib.Nifti1Image:
    """nibabel image with its header parsed (data not read yet); errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib/gzip errors)
        raise ValueError(f"corrupt or unreadable NIfTI file {path}: {type(err).__name__}: {err}") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path} is a {type(img).__name__}, not a NIfTI-1/2 image")
    return img


def nifti_shape(path: str | Path) -> tuple[int, ...]:
    """Array shape as stored, (x, y, z[, t]), from the header only; errors name the file."""
    return tuple(_open_nifti(Path(path)).shape)


def read_nifti(path: str | Path) -> Volume:
    """NIfTI file (x, y, z[, t]) -> Volume (array (z, y, x) or (t, z, y, x), spacing (dz, dy, dx) mm).

    Spacing comes from the header zooms (pixdim), converted to mm by the header's spatial unit.
    Errors name the file: FileNotFoundError if missing, ValueError if corrupt.
    """
    path = Path(path)
    img = _open_nifti(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib/gzip errors)
        raise ValueError(f"corrupt or unreadable NIfTI file {path}: {type(err).__name__}: {err}") from err
    if data.ndim > 4:
        data = data.reshape(data.shape[:4]) if all(n == 1 for n in data.shape[4:]) else data
    if data.ndim not in (2, 3, 4):
        raise ValueError(f"{path}: expected a 2D, 3D or 4D NIfTI image, got shape {data.shape}")
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


def _as_labels(volume: Volume, path: Path) -> np.ndarray:
    """Label volume -> uint8 with values in {0, 1, 2, 3}; ValueError naming the file otherwise."""
    arr = volume.array
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if not np.allclose(arr, rounded):
            raise ValueError(f"{path}: label file holds non-integer values")
        arr = rounded
    bad = np.setdiff1d(np.unique(arr), list(range(4)))
    if bad.size:
        raise ValueError(f"{path}: label values {bad.tolist()[:10]} outside 0..3 "
                         "(0 background, 1 RV, 2 myocardium, 3 LV)")
    return arr.astype(np.uint8)


def _unit_slices(image: np.ndarray) -> np.ndarray:
    """(z, y, x) any dtype -> float32, each slice min-max scaled to [0, 1] (constant -> 0)."""
    image = image.astype(np.float32)
    lo = image.min(axis=(1, 2), keepdims=True)
    span = image.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (image - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the database: patients, Info.cfg, splits
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Patient:
    pid: str                        # "patient001"
    folder: Path
    group: str                      # DCM, HCM, MINF, NOR, RV ("unknown" if Info.cfg has no Group)
    frames: dict[str, int]          # {"ED": 1, "ES": 12}

    def files(self, phase: str) -> tuple[Path, Path]:
        """(image, gt) paths of a phase's frame."""
        stem = f"{self.pid}_frame{self.frames[phase]:02d}"
        return _nii(self.folder / stem), _nii(self.folder / f"{stem}_gt")


def _nii(stem: Path) -> Path:
    gz = stem.with_name(stem.name + ".nii.gz")
    plain = stem.with_name(stem.name + ".nii")
    return plain if not gz.exists() and plain.exists() else gz


def read_info(path: str | Path) -> dict[str, str]:
    """Info.cfg ('Key: value' lines) -> dict; ED and ES checked to be positive integers.

    ValueError naming the file if a line is malformed or ED / ES is missing or not an integer.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"malformed {path}: not a text file ({err})") from err
    info: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"malformed {path}, line {lineno}: {line!r}; expected 'Key: value' "
                             "lines like 'ED: 1', 'ES: 12', 'Group: DCM'")
        info[key.strip()] = value.strip()
    for key in PHASES:
        value = info.get(key)
        if value is None or not re.fullmatch(r"\d+(\.0*)?", value) or int(float(value)) < 1:
            raise ValueError(f"malformed {path}: {key} must be a frame number >= 1, "
                             f"got {value!r} (expected lines like 'ED: 1', 'ES: 12')")
    return info


def _resolve_root(root: Path) -> Path:
    return resolve_root(root, TOP, ["training"], LAYOUT, "ACDC database")


def _patients(folder: Path) -> list[Patient]:
    """Patients of training/ or testing/, with Info.cfg parsed and frame files checked."""
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"patient\d+", p.name)):
        cfg = sub / "Info.cfg"
        if not cfg.is_file():
            raise FileNotFoundError(f"{cfg} not found; every patient folder needs an Info.cfg.\n"
                                    f"Expected layout:\n{LAYOUT}")
        info = read_info(cfg)
        patient = Patient(sub.name, sub, info.get("Group", "unknown"),
                          {ph: int(float(info[ph])) for ph in PHASES})
        for phase in PHASES:
            for path in patient.files(phase):
                if not path.is_file():
                    raise FileNotFoundError(f"{path} not found ({phase} frame {patient.frames[phase]} "
                                            f"from {cfg}).\nExpected layout:\n{LAYOUT}")
        out.append(patient)
    return out


def _holdout(patients: Sequence[Patient], fraction: float, rng: np.random.Generator,
             what: str) -> tuple[list[Patient], list[Patient]]:
    """Stratified by group: (kept, held out), round(fraction * n) held out per group.

    Every group keeps at least one patient; at least one patient is held out overall.
    """
    by_group: dict[str, list[Patient]] = defaultdict(list)
    for p in sorted(patients, key=lambda p: p.pid):
        by_group[p.group].append(p)
    if len(patients) < 2:
        raise ValueError(f"need at least 2 ACDC training patients to split off a {what} set, "
                         f"got {len(patients)}")
    held: list[Patient] = []
    for group in sorted(by_group):
        members = by_group[group]
        order = rng.permutation(len(members))
        n = min(math.floor(fraction * len(members) + 0.5), len(members) - 1)
        held += [members[i] for i in order[:n]]
    if not held:   # tiny database: take one from the largest group
        group = max(sorted(by_group), key=lambda g: len(by_group[g]))
        held = [by_group[group][int(rng.integers(len(by_group[group])))]]
    held_ids = {p.pid for p in held}
    kept = [p for p in sorted(patients, key=lambda p: p.pid) if p.pid not in held_ids]
    return kept, sorted(held, key=lambda p: p.pid)


def _label_map(labels: Sequence[int] | None) -> tuple[np.ndarray, list[str]]:
    """labels -> (lookup table ACDC value -> class index, class names)."""
    if labels is None:
        labels = sorted(STRUCTURES)
    labels = list(labels)
    valid = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v in STRUCTURES for v in labels)
    if not labels or not valid or len(set(labels)) != len(labels):
        raise ValueError(f"labels={labels!r}; expected None (all structures) or distinct values from "
                         f"{sorted(STRUCTURES)} ({', '.join(f'{k} {v}' for k, v in STRUCTURES.items())})")
    lut = np.zeros(256, np.uint8)
    for index, value in enumerate(labels, start=1):
        lut[value] = index
    return lut, [STRUCTURES[v] for v in labels]


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------

def _load_phase(patient: Patient, phase: str, lut: np.ndarray) -> tuple[Volume, np.ndarray]:
    """-> (image Volume (z, y, x), label uint8 (z, y, x) mapped through lut)."""
    image_path, gt_path = patient.files(phase)
    image, gt = read_nifti(image_path), read_nifti(gt_path)
    if image.array.ndim != 3:
        raise ValueError(f"{image_path}: expected a 3D frame (x, y, z), got {image.array.ndim}D")
    if np.issubdtype(image.array.dtype, np.floating) and not np.isfinite(image.array).all():
        raise ValueError(f"{image_path}: image holds NaN or infinite values")
    if image.array.shape != gt.array.shape:
        raise ValueError(f"{image_path} has shape {image.array.shape[::-1]} (x, y, z) but its ground "
                         f"truth {gt_path} has {gt.array.shape[::-1]}")
    return image, lut[_as_labels(gt, gt_path)]


class AcdcTrain(PairedDataset):
    """2D slices of the ED and ES frames of the train patients, all kept (also empty ones).

    i -> (image float32 tensor (1, S, S) z-scored per slice, mask int64 tensor (S, S) class indices)
    """

    def __init__(self, patients: Sequence[Patient], lut: np.ndarray, transform: A.Compose):
        super().__init__(transform)
        self.index: list[tuple[str, str, int]] = []    # (patient, phase, slice)
        self._images: list[np.ndarray] = []             # (y, x) float32 in [0, 1]
        self._masks: list[np.ndarray] = []               # (y, x) uint8
        for patient in patients:
            for phase in PHASES:
                image, label = _load_phase(patient, phase, lut)
                scaled = _unit_slices(image.array)
                for k in range(scaled.shape[0]):
                    self.index.append((patient.pid, phase, k))
                    self._images.append(scaled[k])
                    self._masks.append(np.ascontiguousarray(label[k]))

    def __len__(self) -> int:
        return len(self._images)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._images[index], self._masks[index]


class AcdcCases(Sequence):
    """Val/test: one Case per patient and phase, read lazily.

    i -> Case("patient101_ED", image float32 (D, 1, S, S) each slice z-scored, label uint8
    (D, H0, W0) at the original resolution, spacing (dz, dy, dx) mm, is_3d True,
    meta {"patient", "phase", "group", "frame"}).
    """

    def __init__(self, patients: Sequence[Patient], lut: np.ndarray, transform: A.Compose):
        self.entries = [(p, phase) for p in patients for phase in PHASES]
        self.lut = lut
        self.transform = transform
        for patient, phase in self.entries:   # fail early on unreadable headers / shape mismatch
            image_path, gt_path = patient.files(phase)
            shapes = [nifti_shape(p)[:3] for p in (image_path, gt_path)]
            if shapes[0] != shapes[1]:
                raise ValueError(f"{image_path} has shape {shapes[0]} (x, y, z) but its ground truth "
                                 f"{gt_path} has {shapes[1]}")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        patient, phase = self.entries[index]
        image, label = _load_phase(patient, phase, self.lut)
        scaled = _unit_slices(image.array)
        x = np.stack([apply_image(self.transform, s) for s in scaled])[:, None]   # (D, 1, S, S)
        return Case(case_id=f"{patient.pid}_{phase}", image=x, label=label, spacing=image.spacing,
                    is_3d=True, meta={"patient": patient.pid, "phase": phase, "group": patient.group,
                                      "frame": patient.frames[phase]})


def acdc(root: str | None, image_size: int, seed: int = 0, phantom_dir: str | None = None,
         augment: bool = True, val_fraction: float = 0.2, labels: Sequence[int] | None = None,
         transforms: dict | None = None) -> SegData:
    """ACDC short-axis cine MRI, ED + ES frames -> SegData.

    root: the `database` folder or its parent; None = the embedded phantom, written once into
          phantom_dir (`seg.data.phantom.write_acdc`).
    image_size: S, the model input side; slices resized bilinearly (masks nearest) to S x S.
    seed: fixes the patient split and the training augmentations.
    val_fraction: share of training/ patients per Group held out for validation (0 < f < 1;
          at least one overall). Without testing/, the same share is first held out as test set.
    labels: None = all structures, classes 0 bg, 1 RV, 2 myo, 3 LV, class_names ["rv", "myo", "lv"];
          else the ACDC values to keep, in order, e.g. [3] -> binary LV (class_names ["lv"]).
    transforms: `seg.data.transforms.build_transforms` options (normalize, hflip, elastic, ...).

    train: slices (image float32 (1, S, S), mask int64 (S, S)); each slice is min-max scaled to
    [0, 1], augmented (if augment), resized, then z-scored per slice.
    val/test: Case per patient and phase (see AcdcCases); split: patient ids per split.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r}; expected a share strictly between 0 and 1")
    lut, class_names = _label_map(labels)
    if root is None:
        if phantom_dir is None:
            raise ValueError("acdc: root and phantom_dir are both None; give root (an ACDC "
                             "database, dataset.root=...) or phantom_dir (where the phantom is written)")
        root = write_acdc(phantom_dir)
    base = _resolve_root(Path(root))
    training = _patients(base / "training")
    if not training:
        raise FileNotFoundError(f"no patientNNN folders in {base / 'training'}.\nExpected layout:\n{LAYOUT}")
    rng = np.random.default_rng(seed)
    testing = _patients(base / "testing") if (base / "testing").is_dir() else []
    if testing:
        test = testing
    else:
        log.info("ACDC %s has no testing/ patients: holding out %.0f%% of training/ as test set",
                 base, 100 * val_fraction)
        training, test = _holdout(training, val_fraction, rng, "test")
    train, val = _holdout(training, val_fraction, rng, "validation")
    train_tf, evaluate = transforms_pair(image_size, augment, seed, transforms)
    train_set = AcdcTrain(train, lut, train_tf)
    data = SegData(
        train=train_set,
        val=AcdcCases(val, lut, evaluate),
        test=AcdcCases(test, lut, evaluate),
        class_names=class_names,
        split={"train": [p.pid for p in train], "val": [p.pid for p in val], "test": [p.pid for p in test]},
    )
    log.info("ACDC %s: train %d patients (%d slices), val %d patients (%d cases), test %d patients "
             "(%d cases); classes %s", base, len(train), len(train_set), len(val), len(data.val),
             len(test), len(data.test), class_names)
    return data
