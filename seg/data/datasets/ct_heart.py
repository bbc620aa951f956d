"""CT heart reader, Kaggle layout: windowed PNG slices with heart masks; DICOM scans for inference.

Layout of the download:

    <root>/                                  the folder holding train/ (and test/)
        train/<patient>/image/*.png          8-bit axial CT slices (already windowed at export)
        train/<patient>/mask/*.png           heart masks 0/255, same file name as the image
        test/<patient>/<series>/*.dcm        CT scans without masks (for `seg.predict`)

Only train/ has masks, so train/val/test are patients of train/, split by `seed`
(val_fraction, test_fraction of the patients; no patient in two splits; saved with the run).
Each slice is one 2D case. PNG slices carry no physical spacing: give `pixel_spacing` (mm) to
get distances in mm, else they are in pixels. DICOM scans (test/, or any scan given to
`seg.predict`) are read with `seg.data.io.dicom`: RescaleSlope/Intercept -> HU, the CT window
(default W 400 / L 40, heart / mediastinum) -> [0, 1], PixelSpacing -> mm (`dicom_input`).
Normalisation: config `transforms.normalize: window` keeps the windowed [0, 1] intensities.

Bad input: a missing / wrong-level root, a patient folder without image/ or mask/, an image
without a mask of the same name, a truncated or non-PNG file, non-binary mask values: errors
naming the file or folder. Masks without an image and patient folders without any slice are
skipped with a logged count naming them.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from seg.data.base import Published, Reader, SegData
from seg.data.io.dicom import DicomVolume, ct_window, list_dicom_files, read_dicom_series
from seg.data.layout import natural_key, resolve_root, split_for
from seg.data.pairs import PairCases, PairItem, PairTrain, list_pairs
from seg.data.transforms import transforms_pair
from seg.data.validate import Report, check_png_pairs, progress

log = logging.getLogger(__name__)

LAYOUT = """\
  <root>/                          the folder holding train/ (and test/)
    train/<patient>/image/*.png    8-bit CT slices
    train/<patient>/mask/*.png     heart masks 0/255, same file name as the image
    test/<patient>/<series>/*.dcm  CT scans without masks (optional; for seg.predict)"""


def _check_window(width: float, level: float) -> tuple[float, float]:
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"window.width={width!r}; expected a positive CT window width in HU (e.g. 400)")
    if not (isinstance(level, (int, float)) and math.isfinite(level)):
        raise ValueError(f"window.level={level!r}; expected a CT window level in HU (e.g. 40)")
    return float(width), float(level)


def list_patients(base: Path, strict: bool = True) -> tuple[dict[str, list[PairItem]], list[str]]:
    """train/ -> ({patient: slice items}, problems skipped with a count: orphan masks, empty patients).

    FileNotFoundError naming the folder / images for a patient without image/ or mask/, or
    images without a mask; ValueError naming truncated / non-PNG files.
    """
    patients: dict[str, list[PairItem]] = {}
    skipped: list[str] = []
    unpaired: list[Path] = []
    folders = sorted((p for p in (base / "train").iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: natural_key(p.name))
    for folder in folders:
        for sub in ("image", "mask"):
            if not (folder / sub).is_dir():
                raise FileNotFoundError(f"{folder / sub} not found: every patient folder in train/ needs "
                                        f"image/ and mask/.\nExpected layout:\n{LAYOUT}")
        images = {p.name: p for p in (folder / "image").iterdir() if p.suffix.lower() == ".png"
                  and not p.name.startswith(".")}
        masks = {p.name: p for p in (folder / "mask").iterdir() if p.suffix.lower() == ".png"
                 and not p.name.startswith(".")}
        for name in sorted(set(masks) - set(images), key=natural_key):
            skipped.append(f"mask without image (skipped): {masks[name]}")
        items = list_pairs(folder / "image", folder / "mask", f"{folder.name}/", folder.name, strict,
                           unpaired=unpaired)
        if items:
            patients[folder.name] = items
        elif not images:
            skipped.append(f"patient folder without PNG slices (skipped): {folder}")
    if unpaired:
        shown = "\n  ".join(str(p) for p in unpaired[:10])
        more = f"\n  ... and {len(unpaired) - 10} more" if len(unpaired) > 10 else ""
        raise FileNotFoundError(f"{len(unpaired)} image(s) without a mask of the same name in mask/:"
                                f"\n  {shown}{more}")
    return patients, skipped


def dicom_series(root: str | Path) -> list[Path]:
    """The series folders of test/ (test/<patient>/<series>/ holding *.dcm), natural order."""
    test = Path(root) / "test"
    if not test.is_dir():
        return []
    out = []
    for patient in sorted((p for p in test.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        for series in sorted((s for s in patient.iterdir() if s.is_dir()), key=lambda s: natural_key(s.name)):
            if list_dicom_files(series):
                out.append(series)
    return out


def dicom_input(folder_or_files, width: float = 400.0, level: float = 40.0) -> tuple[DicomVolume, np.ndarray]:
    """A CT series -> (DicomVolume in HU, windowed float32 (D, H, W) in [0, 1]): what a model trained
    on the windowed PNG slices sees. Spacing for the metrics: volume.spacing (dz, dy, dx) mm."""
    width, level = _check_window(width, level)
    volume = read_dicom_series(folder_or_files)
    return volume, ct_window(volume.pixels, width, level)


def ct_heart(root: str, image_size: int, seed: int = 0, augment: bool = True, val_fraction: float = 0.2, test_fraction: float = 0.2,
             pixel_spacing: float | None = None, window: dict | None = None, transforms: dict | None = None,
             strict_masks: bool = True, cv: dict | None = None) -> SegData:
    """CT heart segmentation (binary), Kaggle layout -> SegData.

    root: the folder holding train/ (and test/).
    val_fraction / test_fraction: shares of the train/ patients held out (by seed; >= 1 each).
    pixel_spacing: mm per PNG pixel for the distance metrics (None: pixels).
    window: {"width": 400, "level": 40}, the CT window for DICOM scans (validated here, used by
        `dicom_input` / seg.predict; the PNG slices are already windowed).
    transforms, strict_masks, augment: as `seg.data.datasets.covid.covid_infection`, except that the
        default normalisation is "window" (intensities stay in [0, 1]).
    cv: cross-validation {"folds": K, "fold": i, "seed": S} (seg.data.layout.Folds; None: off): the test
        patients are held out by S (as a run with seed=S holds them out), the other patients are dealt
        into K folds, fold i is validation. split["cv"] records the folds.

    train: slices (image float32 (1, S, S), mask int64 (S, S) in {0, 1}); val/test: one Case per
    slice (label uint8 (1, H0, W0), spacing (pixel_spacing,) * 2 or (1.0, 1.0), meta category =
    patient); class_names ["heart"]; split: patient ids per split, plus "dicom_series" (the test/
    series folders, relative to root, unlabelled).
    """
    window = dict(window or {})
    unknown = set(window) - {"width", "level"}
    if unknown:
        raise ValueError(f"window has unknown key(s) {sorted(unknown)}; expected width and level")
    _check_window(window.get("width", 400.0), window.get("level", 40.0))
    if pixel_spacing is not None and not (isinstance(pixel_spacing, (int, float)) and pixel_spacing > 0):
        raise ValueError(f"pixel_spacing={pixel_spacing!r}; expected a positive size in mm or null")
    base = resolve_root(root, None, ["train"], LAYOUT, "CT heart data")
    patients, skipped = list_patients(base, strict_masks)
    for line in skipped:
        log.warning("CT heart: %s", line)
    if skipped:
        log.warning("CT heart: %d problem(s) skipped (listed above)", len(skipped))
    if not patients:
        raise FileNotFoundError(f"no patient folders with PNG slices in {base / 'train'}.\n"
                                f"Expected layout:\n{LAYOUT}")
    ids = sorted(patients, key=natural_key)
    split = split_for(ids, ["all"] * len(ids), val_fraction, test_fraction, seed, "CT heart patients", cv)
    parts = {k: [it for pid in split[k] for it in patients[pid]] for k in ("train", "val", "test")}
    series = dicom_series(base)
    log.info("CT heart %s: train %d patients (%d slices), val %d (%d), test %d (%d); %d unlabelled DICOM "
             "series in test/", base, len(split["train"]), len(parts["train"]), len(split["val"]),
             len(parts["val"]), len(split["test"]), len(parts["test"]), len(series))
    spacing = (float(pixel_spacing),) * 2 if pixel_spacing else (1.0, 1.0)
    transforms = {"normalize": "window", **dict(transforms or {})}     # default: keep the window's [0, 1]
    train_tf, eval_tf = transforms_pair(image_size, augment, seed, transforms)
    return SegData(train=PairTrain(parts["train"], train_tf), val=PairCases(parts["val"], eval_tf, spacing),
                   test=PairCases(parts["test"], eval_tf, spacing), class_names=["heart"],
                   split={**split, "dicom_series": [str(s.relative_to(base)) for s in series]})


# ---------------------------------------------------------------------------------------------
# the dataset's other jobs: check, predict preprocessing, class names, published references
# ---------------------------------------------------------------------------------------------

READERS = ("ct_heart",)


def class_names(source: dict) -> list[str]:
    return ["heart"]


def predict_reader(source: dict) -> Reader:
    """seg.predict: 8-bit images (the windowed PNG export) as they are; modality values (HU) through the
    run's CT window `dataset.source.window` to [0, 1], as `dicom_input` does."""
    window = source.get("window") or {}
    width, level = _check_window(float(window.get("width", 400.0)), float(window.get("level", 40.0)))
    return Reader("ct_heart", lambda pixels: pixels if pixels.dtype == np.uint8 else ct_window(pixels, width, level),
                  class_names(source))


def check(report: Report, root: str | Path, source: dict) -> None:
    """Read every PNG slice pair of train/ and every DICOM series of test/ into `report`."""
    base = resolve_root(root, None, ["train"], LAYOUT, "CT heart data")
    report.root = base
    for folder in sorted((p for p in (base / "train").iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        missing = [folder / sub for sub in ("image", "mask") if not (folder / sub).is_dir()]
        if missing:
            report.problem("missing folder: " + ", ".join(map(str, missing)))
            continue
        check_png_pairs(report, folder / "image", folder / "mask", ("train", folder.name))
    series = dicom_series(base)
    for folder in progress(series, "DICOM series"):
        try:
            vol = read_dicom_series(folder)
        except (ValueError, FileNotFoundError) as err:
            report.problem(str(err))
            continue
        report.counts["test (DICOM series, slices)"][str(folder.relative_to(base))] += len(vol.files)
        report.spacings[tuple(round(s, 4) for s in vol.spacing)] += 1
        report.sizes["DICOM slice"][vol.pixels.shape[1:]] += 1
    if (base / "test").is_dir():
        for d in sorted(p for p in (base / "test").rglob("*") if p.is_dir()):
            files = [f for f in d.iterdir() if f.is_file() and not f.name.startswith(".")]
            if files and d not in series:
                report.problem(f"files outside the test/<patient>/<series>/*.dcm layout: {d}")


def references(name: str) -> Published:
    """No published numbers are listed for the Kaggle CT heart data."""
    return Published()
