"""Data checks shared by the readers (before training) and `seg.data.check` (the CLI).

    Report                       what a check found: counts per split and class, sizes, label values,
                                 spacings, and every problem naming its file
    check_png_pairs(report, ...) read an images/ + masks/ folder pair fully into a Report
    check_nifti_pair(report, ...) read a NIfTI image and its label file into a Report
    validate_cases(data)         read every validation and test case of a SegData and check it
                                 (called by `seg.data.open_dataset` before epoch 1)

The checks of a case: the label is uint8 with values 0..K-1 (K = classes), the image is finite
float32 of rank 4 (D, C, S, S), D equals the label's depth, the spacing has one value > 0 per
label axis. The readers' own errors (truncated file, float or out-of-range label, pixdim 0,
image / label geometry mismatch, NaN voxels) surface here too, since each case is read.
"""
from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seg.data.base import Case, SegData
from seg.data.io.nifti import Volume, read_nifti
from seg.data.io.png import png_size, read_png
from seg.data.layout import natural_key


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
            parts = ", ".join(f"{k} {n}" for k, n in sorted(self.counts[split].items(),
                                                             key=lambda kv: natural_key(str(kv[0]))))
            lines.append(f"  {split}: {total}  ({parts})")
        for what, sizes in self.sizes.items():
            lines.append(f"  {what} sizes: " + ", ".join(f"{'x'.join(map(str, s))} ({n})"
                                                        for s, n in sizes.most_common(8))
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


def progress(items, desc: str):
    """A tqdm bar on stderr for a terminal, silent in logs."""
    items = list(items)
    return tqdm(items, total=len(items), desc=desc, unit="file", disable=None, leave=False, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# PNG pairs
# ---------------------------------------------------------------------------------------------

def check_png_pair(report: Report, image: Path, mask: Path, same_size: bool = True, num_labels: int = 2) -> None:
    """Read image and mask fully; sizes, label values; every failure is a problem naming the file."""
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
        if num_labels == 2:
            if not set(values.tolist()) <= {0, 255} and not set(values.tolist()) <= {0, 1}:
                report.problem(f"mask {mask} holds values {values[:8].tolist()}; expected 0/255 (or 0/1)")
        elif values.max() >= num_labels:
            report.problem(f"mask {mask} holds label values {values[values >= num_labels][:8].tolist()} "
                           f"outside 0..{num_labels - 1}")
        if values.max() == 0:
            report.empty_masks += 1
    if same_size and len(arrays) == 2 and arrays["image"].shape != arrays["mask"].shape:
        report.problem(f"image {image} is {arrays['image'].shape} but its mask {mask} is {arrays['mask'].shape}")


def check_png_pairs(report: Report, image_dir: Path, mask_dir: Path, key: tuple[str, str],
                    same_size: bool = True, num_labels: int = 2) -> None:
    """Every image of image_dir and its mask (same name) in mask_dir; orphans both ways are problems."""
    def pngs(d: Path) -> dict[str, Path]:
        return {p.name: p for p in d.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")}

    images, masks = pngs(image_dir), pngs(mask_dir)
    for name in sorted(set(masks) - set(images), key=natural_key):
        report.problem(f"mask without image: {masks[name]}")
    for name in progress(sorted(images, key=natural_key), f"{key[0]}/{key[1]}"):
        if name not in masks:
            report.problem(f"missing mask: {images[name]} has no {mask_dir / name}")
            continue
        report.counts[key[0]][key[1]] += 1
        check_png_pair(report, images[name], masks[name], same_size, num_labels)


# ---------------------------------------------------------------------------------------------
# NIfTI image + label volumes
# ---------------------------------------------------------------------------------------------

def nifti_geometry_problems(image: Volume, image_path: Path, label: Volume, label_path: Path) -> list[str]:
    """Shape, voxel size and affine of an image and its label file must agree -> problems naming both."""
    out = []
    if image.array.shape != label.array.shape:
        out.append(f"{image_path} has shape {image.array.shape[::-1]} (x, y, z) but its ground truth "
                   f"{label_path} has {label.array.shape[::-1]}")
    if not np.allclose(image.spacing, label.spacing, rtol=1e-3, atol=1e-4):
        out.append(f"{label_path} has voxel size {tuple(round(s, 4) for s in label.spacing[::-1])} mm (x, y, z) "
                   f"but its image {image_path} has {tuple(round(s, 4) for s in image.spacing[::-1])}: the label "
                   "was not drawn on this image's grid")
    elif not np.allclose(image.affine, label.affine, rtol=1e-3, atol=1e-2):
        out.append(f"{label_path} and its image {image_path} have different affines (position / orientation): "
                   "the label is not on this image's grid")
    return out


def label_values_problem(values: np.ndarray, allowed: Sequence[int], path: Path, meaning: str = "") -> str | None:
    """None if every value is in `allowed`, else a message naming the file and the stray values."""
    bad = np.setdiff1d(values, list(allowed))
    if not bad.size:
        return None
    return (f"{path}: label values {bad.tolist()[:10]} outside {min(allowed)}..{max(allowed)}"
            + (f" ({meaning})" if meaning else ""))


def check_nifti_pair(report: Report, image_path: Path, label_path: Path, allowed: Sequence[int],
                     meaning: str = "", prefix: str = "") -> None:
    """Read an image and its label volume fully: readable, pixdim > 0, finite, integer labels in `allowed`,
    shape / spacing / affine agreement. Every failure is a problem naming the file."""
    vols: dict[str, Volume] = {}
    for what, path in (("image", image_path), ("mask", label_path)):
        try:
            vols[what] = read_nifti(path)
        except (FileNotFoundError, ValueError) as err:
            report.problem(f"{prefix}{err}")
    if "image" in vols:
        report.sizes["image"][vols["image"].array.shape[::-1]] += 1
        report.spacings[tuple(round(s, 4) for s in vols["image"].spacing)] += 1
    if "mask" in vols:
        arr = vols["mask"].array
        if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.rint(arr)):
            report.problem(f"{prefix}{label_path}: label file holds non-integer values")
        else:
            values = np.unique(arr)
            for v in values.tolist():
                report.labels[int(v)] += 1
            message = label_values_problem(values, allowed, label_path, meaning)
            if message:
                report.problem(prefix + message)
    if len(vols) == 2:
        for message in nifti_geometry_problems(vols["image"], image_path, vols["mask"], label_path):
            report.problem(prefix + message)


# ---------------------------------------------------------------------------------------------
# every validation and test case, before training
# ---------------------------------------------------------------------------------------------

def case_problems(case: Case, num_labels: int) -> list[str]:
    """What is wrong with one evaluation case (empty list: nothing)."""
    where = case.meta.get("label_file") or case.meta.get("image_file") or ""
    name = f"case {case.case_id}" + (f" ({where})" if where else "")
    out = []
    image, label = np.asarray(case.image), np.asarray(case.label)
    if label.dtype != np.uint8:
        out.append(f"{name}: label dtype {label.dtype}, expected uint8 class indices")
    if label.ndim != 3:
        out.append(f"{name}: label shape {label.shape}, expected (D, H, W)")
    if image.ndim != 4 or (label.ndim == 3 and image.shape[0] != label.shape[0]):
        out.append(f"{name}: image shape {image.shape} does not match label shape {label.shape} "
                   "(expected image (D, C, S, S) with the label's D)")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        out.append(f"{name}: image holds NaN or infinite values")
    if label.size and int(label.max()) >= num_labels:
        out.append(f"{name}: label values up to {int(label.max())}, expected 0..{num_labels - 1}")
    spacing = tuple(case.spacing)
    if len(spacing) != (3 if case.is_3d else 2) or not all(math.isfinite(s) and s > 0 for s in spacing):
        out.append(f"{name}: spacing {spacing}, expected {3 if case.is_3d else 2} positive sizes in mm")
    return out


def validate_cases(data: SegData, what: str = "dataset") -> int:
    """Read and check every validation and test case of `data` -> the number of cases checked.

    ValueError naming the split, the case and its file: the first reader error (a file that cannot be
    read, a bad label, a geometry mismatch) as it is, or the list of every case check that failed.
    """
    num_labels = len(data.class_names) + 1
    problems: list[str] = []
    n = 0
    for split in ("val", "test"):
        cases = getattr(data, split)
        for i in range(len(cases)):
            try:
                case = cases[i]
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"{what}: {split} split, before training: {err}") from err
            n += 1
            problems += [f"{split}: {p}" for p in case_problems(case, num_labels)]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{what}: {len(problems)} problem(s) in the validation / test data, found before "
                         f"training:\n  {shown}{more}")
    return n
