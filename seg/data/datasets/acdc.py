"""ACDC cardiac cine-MRI reader (NIfTI, ED and ES frames with ground truth).

Layout of the real database:

    database/{training,testing}/patientNNN/
        Info.cfg                                 "ED: 1", "ES: 12", "Group: DCM", ...
        patientNNN_frameNN.nii.gz                ED and ES frames, array (x, y, z)
        patientNNN_frameNN_gt.nii.gz             0 background, 1 RV, 2 myocardium, 3 LV

Splits are by patient: training/ patients are split into train/val by `seed`, stratified by
Group; testing/ patients are the test set (if testing/ is absent, the test set is carved from
training/ the same way). In memory volumes are (slice, row, col) = (z, y, x), i.e. the file's
(x, y, z) array transposed, with spacing (dz, dy, dx) in mm from the header.

Everything about ACDC lives here: the reader (`acdc`, the config's `_target_`), its check
(`check`, for `python -m seg.data.check acdc ROOT`), the preprocessing of `seg.predict`
(`predict_reader`), the class names and the published results (`references`).

Validation and test volumes are read in full when the reader is built: a truncated file, a
non-integer or out-of-range label (a label 5 is never silently background), a voxel size of 0,
NaN voxels, or an image and ground truth of different shape / voxel size / affine fail before
training, naming the file.
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
import numpy as np

from seg.data.base import Case, Published, Reader, Reference, SegData
from seg.data.cache import decoded_samples
from seg.data.io.nifti import Volume, nifti_shape, read_nifti  # noqa: F401  (nifti_shape re-exported)
from seg.data.layout import Folds, resolve_root, split_with_folds
from seg.data.transforms import PairedDataset, apply_image, transforms_pair, unit_slices
from seg.data.validate import Report, check_nifti_pair, nifti_geometry_problems, progress

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
# labels and intensities
# ---------------------------------------------------------------------------------------------

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


_unit_slices = unit_slices      # the older private name, still imported by seg.predict


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


def _resolve_root(root: str | Path | None) -> Path:
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
    image, gt = read_nifti(image_path), read_nifti(gt_path)      # pixdim > 0, finite voxels: checked there
    if image.array.ndim != 3:
        raise ValueError(f"{image_path}: expected a 3D frame (x, y, z), got {image.array.ndim}D")
    problems = nifti_geometry_problems(image, image_path, gt, gt_path)
    if problems:
        raise ValueError(problems[0])
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
                scaled = unit_slices(image.array)
                for k in range(scaled.shape[0]):
                    self.index.append((patient.pid, phase, k))
                    self._images.append(scaled[k])
                    self._masks.append(np.ascontiguousarray(label[k]))

    def __len__(self) -> int:
        return len(self._images)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._images[index], self._masks[index]


class AcdcCases(Sequence):
    """Val/test: one Case per patient and phase; every file is read and checked here, the cases
    are then re-read lazily (memory stays one volume). With keep_decoded (the validation split, read
    again at every validation) each phase's decoded volume (slices scaled to [0, 1], labels, spacing) goes
    to the process-wide decoded-sample cache (seg.data.cache, $SEGSWEEP_SAMPLE_CACHE_MB), so a later
    read only resizes and normalises its slices; the test split, read once, is not kept.

    i -> Case("patient101_ED", image float32 (D, 1, S, S) each slice z-scored, label uint8
    (D, H0, W0) at the original resolution (read-only when kept), spacing (dz, dy, dx) mm, is_3d True,
    meta {"patient", "phase", "group", "frame", "image_file", "label_file"}).
    """

    def __init__(self, patients: Sequence[Patient], lut: np.ndarray, transform: A.Compose,
                 keep_decoded: bool = False):
        self.entries = [(p, phase) for p in patients for phase in PHASES]
        self.lut = lut
        self.transform = transform
        self.keep_decoded = keep_decoded
        for patient, phase in self.entries:   # before training: every file read, labels and geometry checked
            _load_phase(patient, phase, lut)

    def __len__(self) -> int:
        return len(self.entries)

    def _decode(self, patient: Patient, phase: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        """-> (slices scaled to [0, 1] float32 (D, H0, W0), label uint8 (D, H0, W0), spacing (dz, dy, dx))."""
        image, label = _load_phase(patient, phase, self.lut)
        return unit_slices(image.array), label, tuple(float(v) for v in image.spacing)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        patient, phase = self.entries[index]
        image_path, gt_path = patient.files(phase)
        if self.keep_decoded:
            key = ("acdc", str(image_path), str(gt_path), self.lut.tobytes())
            scaled, label, spacing = decoded_samples().get(key, (image_path, gt_path),
                                                           lambda: self._decode(patient, phase))
        else:
            scaled, label, spacing = self._decode(patient, phase)
        x = np.stack([apply_image(self.transform, s) for s in scaled])[:, None]   # (D, 1, S, S)
        return Case(case_id=f"{patient.pid}_{phase}", image=x, label=label, spacing=spacing,
                    is_3d=True, meta={"patient": patient.pid, "phase": phase, "group": patient.group,
                                      "frame": patient.frames[phase], "image_file": str(image_path),
                                      "label_file": str(gt_path)})


def acdc(root: str, image_size: int, seed: int = 0, augment: bool = True, val_fraction: float = 0.2, labels: Sequence[int] | None = None,
         transforms: dict | None = None, cv: dict | None = None) -> SegData:
    """ACDC short-axis cine MRI, ED + ES frames -> SegData.

    root: the `database` folder or its parent.
    image_size: S, the model input side; slices resized bilinearly (masks nearest) to S x S.
    seed: fixes the patient split and the training augmentations.
    val_fraction: share of training/ patients per Group held out for validation (0 < f < 1;
          at least one overall). Without testing/, the same share is first held out as test set.
    labels: None = all structures, classes 0 bg, 1 RV, 2 myo, 3 LV, class_names ["rv", "myo", "lv"];
          else the ACDC values to keep, in order, e.g. [3] -> binary LV (class_names ["lv"]).
    transforms: `seg.data.transforms.build_transforms` options (normalize, hflip, elastic, ...).
    cv: cross-validation {"folds": K, "fold": i, "seed": S} (seg.data.layout.Folds; None: off): the
          training/ patients are dealt into K folds stratified by Group (by S, not `seed`), fold i is
          validation, the rest train; the test set is testing/ (without testing/: the val_fraction share
          held out by S, as a run with seed=S holds it out). split["cv"] records the folds.

    train: slices (image float32 (1, S, S), mask int64 (S, S)); each slice is min-max scaled to
    [0, 1], augmented (if augment), resized, then z-scored per slice.
    val/test: Case per patient and phase (see AcdcCases); split: patient ids per split.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r}; expected a share strictly between 0 and 1")
    lut, class_names = _label_map(labels)
    base = _resolve_root(root)
    training = _patients(base / "training")
    if not training:
        raise FileNotFoundError(f"no patientNNN folders in {base / 'training'}.\nExpected layout:\n{LAYOUT}")
    folds = Folds.of(cv)
    rng = np.random.default_rng(seed if folds is None else folds.seed)   # CV: the test set never moves with seed
    testing = _patients(base / "testing") if (base / "testing").is_dir() else []
    if testing:
        test = testing
    else:
        log.info("ACDC %s has no testing/ patients: holding out %.0f%% of training/ as test set",
                 base, 100 * val_fraction)
        training, test = _holdout(training, val_fraction, rng, "test")
    fold_record = None
    if folds is None:
        train, val = _holdout(training, val_fraction, rng, "validation")
    else:
        split = split_with_folds([p.pid for p in training], [p.group for p in training], [p.pid for p in test],
                                 folds, "ACDC training patients")
        by_id = {p.pid: p for p in training}
        train, val = [by_id[k] for k in split["train"]], [by_id[k] for k in split["val"]]
        fold_record = split["cv"]
    train_tf, evaluate = transforms_pair(image_size, augment, seed, transforms)
    train_set = AcdcTrain(train, lut, train_tf)
    data = SegData(
        train=train_set,
        val=AcdcCases(val, lut, evaluate, keep_decoded=True),
        test=AcdcCases(test, lut, evaluate),
        class_names=class_names,
        split={"train": [p.pid for p in train], "val": [p.pid for p in val], "test": [p.pid for p in test],
               **({"cv": fold_record} if fold_record is not None else {})},
    )
    log.info("ACDC %s: train %d patients (%d slices), val %d patients (%d cases), test %d patients "
             "(%d cases); classes %s", base, len(train), len(train_set), len(val), len(data.val),
             len(test), len(data.test), class_names)
    return data


# ---------------------------------------------------------------------------------------------
# the dataset's other jobs: check, predict preprocessing, class names, published references
# ---------------------------------------------------------------------------------------------

READERS = ("acdc",)            # the reader functions a config's `dataset.source._target_` may name


def class_names(source: dict) -> list[str]:
    """Structure names of a config's `dataset.source` (its `labels`): ["rv", "myo", "lv"] or e.g. ["lv"]."""
    return _label_map(source.get("labels"))[1]


def predict_reader(source: dict) -> Reader:
    """seg.predict: per-slice min-max scaling to [0, 1], as `AcdcTrain` / `AcdcCases` do."""
    return Reader("acdc", unit_slices, class_names(source))


def check(report: Report, root: str | Path, source: dict) -> None:
    """Read every patient's Info.cfg, ED / ES frames and ground truth into `report` (all problems, named)."""
    base = _resolve_root(root)
    report.root = base
    meaning = ", ".join(f"{k} {v}" for k, v in {0: "background", **STRUCTURES}.items())
    for part in ("training", "testing"):
        folder = base / part
        if not folder.is_dir():
            report.notes.append(f"{part}/ absent" + (" (the test set is then carved from training/)"
                                                     if part == "testing" else ""))
            continue
        for sub in progress(sorted(p for p in folder.iterdir() if p.is_dir()), part):
            if not re.fullmatch(r"patient\d+", sub.name):
                report.problem(f"unexpected folder (not patientNNN): {sub}")
                continue
            try:
                info = read_info(sub / "Info.cfg")
            except FileNotFoundError:
                report.problem(f"missing {sub / 'Info.cfg'}")
                continue
            except (ValueError, OSError) as err:
                report.problem(str(err))
                continue
            patient = Patient(sub.name, sub, info.get("Group", "unknown"),
                              {ph: int(float(info[ph])) for ph in PHASES})
            report.counts[part][patient.group] += 1
            for phase in PHASES:
                image_path, gt_path = patient.files(phase)
                check_nifti_pair(report, image_path, gt_path, range(4), meaning, prefix=f"{phase}: ")


_TRANSUNET = "Chen et al., TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation, " \
             "arXiv:2102.04306 (2021), ACDC table"
_SWIN = "Cao et al., Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation, " \
        "arXiv:2105.05537 (ECCV Workshops 2022), ACDC table"
_MEDPY_HD95 = "medpy's hd95 (pooled 95th percentile, without voxel spacing): our hd95_pooled"
REFERENCES = (
    Reference("TransUNet (R50-ViT-B/16)", {"rv": 88.86, "myo": 84.54, "lv": 95.73, "mean": 89.71}, _TRANSUNET,
              hd95=_MEDPY_HD95),
    Reference("Swin-Unet", {"rv": 88.55, "myo": 85.62, "lv": 95.83, "mean": 90.00}, _SWIN, hd95=_MEDPY_HD95),
)
REAL_DATA = "ACDC (real cine MRI; 20 test volumes of the TransUNet split)"
NOT_INCLUDED = ("nnU-Net (Isensee et al., Nature Methods 18:203-211, 2021) is not listed: its ACDC "
                "results are reported per phase and structure in the paper's supplement, and we list only "
                "numbers we could check.")
TASK_STRUCTURES = {"acdc": ("rv", "myo", "lv"), "acdc_lv": ("lv",), "acdc_rv": ("rv",)}


def references(name: str) -> Published:
    """Published Dice (%) for the task `name` (acdc: three structures and their mean; acdc_lv /
    acdc_rv: that structure only, since the papers' mean is over three structures)."""
    structures = TASK_STRUCTURES.get(name)
    if structures is None:
        return Published()
    keys = (*structures, "mean") if len(structures) > 1 else structures
    refs = tuple(Reference(r.method, {k: r.dice[k] for k in keys}, r.source, r.note, r.hd95) for r in REFERENCES)
    return Published(refs, REAL_DATA, NOT_INCLUDED)
