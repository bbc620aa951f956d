"""Validate a dataset tree before training: `python -m seg.data.check DATASET ROOT`.

    python -m seg.data.check acdc /data/ACDC/database
    make check-data DATASET=covid_infection ROOT="/data/COVID-QU-Ex/Infection Segmentation Data"

DATASET: covid_infection, covid_lung, covid_radiography, acdc (also acdc_lv, acdc_rv), ct_heart.
ROOT: the folder you would pass as `dataset.root` (the readers accept the same levels).

Unlike the readers, which stop at the first error, the check reads every file and reports all
it finds: counts per split and class (category / group / patient), image and mask sizes,
label values, spacing (NIfTI, DICOM), and every problem with the file name: missing masks,
masks without images, unexpected label values, shape mismatches, unreadable or truncated
PNG / NIfTI / DICOM files, malformed Info.cfg. Exit status: 0 clean, 1 problems found,
2 root not found / not in the layout.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seg.data.layout import natural_key, png_size, read_png


class Report:
    """What a check found: counts[split][class], sizes, label values, spacings, problems."""

    def __init__(self, dataset: str, root: Path):
        self.dataset, self.root = dataset, root
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.sizes: dict[str, Counter] = defaultdict(Counter)   # "image" / "mask" -> Counter of (H, W)
        self.labels: Counter = Counter()                        # label value -> files holding it
        self.spacings: Counter = Counter()
        self.empty_masks = 0
        self.problems: list[str] = []
        self.notes: list[str] = []

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def render(self, max_problems: int = 50) -> str:
        lines = [f"{self.dataset}: {self.root}"]
        for split in self.counts:
            total = sum(self.counts[split].values())
            parts = ", ".join(f"{k} {n}" for k, n in sorted(self.counts[split].items(), key=lambda kv: natural_key(str(kv[0]))))
            lines.append(f"  {split}: {total}  ({parts})")
        for what, sizes in self.sizes.items():
            lines.append(f"  {what} sizes: " + ", ".join(f"{'x'.join(map(str, s))} ({n})" for s, n in sizes.most_common(8))
                         + (" ..." if len(sizes) > 8 else ""))
        if self.labels:
            lines.append("  label values (files): " + ", ".join(f"{v}: {n}" for v, n in sorted(self.labels.items())))
        if self.empty_masks:
            lines.append(f"  masks without foreground: {self.empty_masks}")
        if self.spacings:
            lines.append("  spacing mm: " + ", ".join(f"({', '.join(f'{s:.3g}' for s in sp)}) x{n}"
                                                     for sp, n in self.spacings.most_common(5))
                         + (" ..." if len(self.spacings) > 5 else ""))
        lines += [f"  {note}" for note in self.notes]
        if self.problems:
            lines.append(f"PROBLEMS: {len(self.problems)}")
            lines += [f"  - {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more (--max-problems)")
        else:
            lines.append("OK: no problems found")
        return "\n".join(lines)


def _bar(items, desc: str):
    items = list(items)
    return tqdm(items, total=len(items), desc=desc, unit="file", disable=None, leave=False, file=sys.stderr)


def _check_png_pair(report: Report, image: Path, mask: Path, same_size: bool = True) -> None:
    """Read image and mask fully; sizes, binary values; every failure is a problem naming the file."""
    arrays = {}
    for what, path in (("image", image), ("mask", mask)):
        try:
            png_size(path)
            arrays[what] = read_png(path)
        except ValueError as err:
            report.problem(str(err))
            continue
        report.sizes[what][arrays[what].shape] += 1
    if "mask" in arrays:
        values = np.unique(arrays["mask"])
        for v in values.tolist():
            report.labels[v] += 1
        if not set(values.tolist()) <= {0, 255} and not set(values.tolist()) <= {0, 1}:
            report.problem(f"mask {mask} holds values {values[:8].tolist()}; expected 0/255 (or 0/1)")
        if values.max() == 0:
            report.empty_masks += 1
    if same_size and len(arrays) == 2 and arrays["image"].shape != arrays["mask"].shape:
        report.problem(f"image {image} is {arrays['image'].shape} but its mask {mask} is {arrays['mask'].shape}")


def _pairs(report: Report, image_dir: Path, mask_dir: Path, key: tuple[str, str], same_size: bool = True) -> None:
    pngs = lambda d: {p.name: p for p in d.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")}  # noqa: E731
    images, masks = pngs(image_dir), pngs(mask_dir)
    for name in sorted(set(masks) - set(images), key=natural_key):
        report.problem(f"mask without image: {masks[name]}")
    for name in _bar(sorted(images, key=natural_key), f"{key[0]}/{key[1]}"):
        if name not in masks:
            report.problem(f"missing mask: {images[name]} has no {mask_dir / name}")
            continue
        report.counts[key[0]][key[1]] += 1
        _check_png_pair(report, images[name], masks[name], same_size)


def _qu_ex(report: Report, root: Path, top: str, mask_dir: str, layout: str) -> None:
    from seg.data.covid import CATEGORIES, IMAGES, SPLITS
    from seg.data.layout import resolve_root

    base = resolve_root(root, top, [f"{s}/{c}/{IMAGES}" for s in SPLITS.values() for c in CATEGORIES][:1],
                        layout, f"COVID-QU-Ex {top}")
    report.root = base
    for split in SPLITS.values():
        for cat in CATEGORIES:
            folder = base / split / cat
            missing = [folder / sub for sub in (IMAGES, mask_dir) if not (folder / sub).is_dir()]
            if missing:
                report.problem("missing folder: " + ", ".join(map(str, missing)))
                continue
            _pairs(report, folder / IMAGES, folder / mask_dir, (split, cat))


def check_covid_infection(report: Report, root: Path) -> None:
    from seg.data.covid import INFECTION, LAYOUT, TOP

    _qu_ex(report, root, TOP, INFECTION, LAYOUT)


def check_covid_lung(report: Report, root: Path) -> None:
    from seg.data.covid import LUNG, LUNG_LAYOUT, LUNG_TOP

    _qu_ex(report, root, LUNG_TOP, LUNG, LUNG_LAYOUT)


def check_covid_radiography(report: Report, root: Path) -> None:
    from seg.data.layout import resolve_root
    from seg.data.radiography import CLASSES, LAYOUT, TOP

    base = resolve_root(root, TOP, [f"{CLASSES[0]}/images"], LAYOUT, "COVID-19 Radiography Database")
    report.root = base
    for cls in CLASSES:
        missing = [base / cls / sub for sub in ("images", "masks") if not (base / cls / sub).is_dir()]
        if missing:
            report.problem("missing folder: " + ", ".join(map(str, missing)))
            continue
        _pairs(report, base / cls / "images", base / cls / "masks", ("all", cls), same_size=False)
    report.notes.append("images are resized to their mask's size when read (299 -> 256 as published)")


def check_acdc(report: Report, root: Path) -> None:
    from seg.data.acdc import PHASES, Patient, _resolve_root, read_info, read_nifti

    base = _resolve_root(root)
    report.root = base
    for part in ("training", "testing"):
        folder = base / part
        if not folder.is_dir():
            report.notes.append(f"{part}/ absent" + (" (the test set is then carved from training/)"
                                                     if part == "testing" else ""))
            continue
        subs = sorted(p for p in folder.iterdir() if p.is_dir())
        for sub in _bar(subs, part):
            if not sub.name.startswith("patient"):
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
                vols = {}
                for what, path in (("image", image_path), ("mask", gt_path)):
                    try:
                        vols[what] = read_nifti(path)
                    except (FileNotFoundError, ValueError) as err:
                        report.problem(f"{phase}: {err}")
                if "image" in vols:
                    report.sizes["image"][vols["image"].array.shape[::-1]] += 1
                    report.spacings[tuple(round(s, 4) for s in vols["image"].spacing)] += 1
                if "mask" in vols:
                    arr = vols["mask"].array
                    values = np.unique(arr)
                    for v in values.tolist():
                        report.labels[v] += 1
                    bad = [v for v in values.tolist() if v not in (0, 1, 2, 3)]
                    if bad:
                        report.problem(f"{gt_path}: label values {bad[:8]} outside 0..3 "
                                       "(0 background, 1 RV, 2 myocardium, 3 LV)")
                if len(vols) == 2 and vols["image"].array.shape != vols["mask"].array.shape:
                    report.problem(f"{image_path} has shape {vols['image'].array.shape[::-1]} but {gt_path} "
                                   f"has {vols['mask'].array.shape[::-1]}")


def check_ct_heart(report: Report, root: Path) -> None:
    from seg.data.ct_heart import LAYOUT, dicom_series
    from seg.data.dicom import read_dicom_series
    from seg.data.layout import resolve_root

    base = resolve_root(root, None, ["train"], LAYOUT, "CT heart data")
    report.root = base
    for folder in sorted((p for p in (base / "train").iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        missing = [folder / sub for sub in ("image", "mask") if not (folder / sub).is_dir()]
        if missing:
            report.problem("missing folder: " + ", ".join(map(str, missing)))
            continue
        _pairs(report, folder / "image", folder / "mask", ("train", folder.name))
    series = dicom_series(base)
    for folder in _bar(series, "DICOM series"):
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


CHECKS: dict[str, Callable[[Report, Path], None]] = {
    "covid_infection": check_covid_infection,
    "covid_lung": check_covid_lung,
    "covid_radiography": check_covid_radiography,
    "acdc": check_acdc, "acdc_lv": check_acdc, "acdc_rv": check_acdc,
    "ct_heart": check_ct_heart,
}


def check(dataset: str, root: str | Path) -> Report:
    """Run the check of `dataset` on `root` -> Report. ValueError for an unknown dataset;
    FileNotFoundError (naming root and the layout) when root is not the dataset."""
    if dataset not in CHECKS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(CHECKS)}")
    report = Report(dataset, Path(root))
    CHECKS[dataset](report, Path(root).expanduser())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg.data.check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(CHECKS))
    parser.add_argument("root", help="the folder you pass as dataset.root")
    parser.add_argument("--max-problems", type=int, default=50, help="problems listed (all are counted)")
    args = parser.parse_args(argv)
    try:
        report = check(args.dataset, args.root)
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print(report.render(args.max_problems))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
