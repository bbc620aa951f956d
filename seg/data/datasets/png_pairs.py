"""Your own 2D data: a folder of PNG images and a folder of PNG masks with the same file names.

    <root>/
        images/*.png     8-bit grayscale (colour is converted), any size
        masks/*.png      same file name and size as the image; binary: 0/255 (or 0/1);
                         several structures: the class index 0..K per pixel (0 background)

    python run.py dataset=png_pairs dataset.root=/data/my_task dataset.source.class_names=[lesion]
    python -m seg.data.check png_pairs /data/my_task

There is no published split: images are split into train/val/test by `seed` (val_fraction,
test_fraction), and the split is saved with the run. Each image is one 2D case, scored at its own
size; distances are in pixels unless `pixel_spacing` (mm) is given. Bad input (an image without a
mask, a truncated PNG, sizes that differ, a mask value that is not a class): errors naming the file.

This module is also the template of a dataset module: a reader function (the config's `_target_`),
`READERS`, `class_names`, `predict_reader`, `check` and `references`; see `seg.data.datasets`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from seg.data.base import Published, Reader, SegData
from seg.data.datasets.covid import unit_or_uint8
from seg.data.layout import resolve_root, split_for
from seg.data.pairs import PairCases, PairTrain, list_pairs
from seg.data.transforms import transforms_pair
from seg.data.validate import Report, check_png_pairs

log = logging.getLogger(__name__)

LAYOUT = """\
  <root>/
    images/*.png    8-bit grayscale images
    masks/*.png     same file names and sizes; 0/255 (binary) or class indices 0..K"""


def _names(class_names: Sequence[str] | None) -> list[str]:
    names = ["foreground"] if class_names is None else [str(n) for n in class_names]
    if not names or len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise ValueError(f"class_names={class_names!r}; expected distinct non-empty names of the foreground "
                         "structures, one per mask value 1..K (e.g. [lesion])")
    return names


def png_pairs(root: str, image_size: int, seed: int = 0, augment: bool = True,
              class_names: Sequence[str] | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
              pixel_spacing: float | None = None, transforms: dict | None = None,
              strict_masks: bool = True, cv: dict | None = None) -> SegData:
    """images/ + masks/ PNG pairs -> SegData.

    root: the folder holding images/ and masks/.
    class_names: the foreground structures, mask value k -> class_names[k - 1]; one name = binary
        (masks 0/255 or 0/1), K names = K + 1 classes (masks hold 0..K). Default ["foreground"].
    val_fraction / test_fraction: shares of the images held out (by seed; at least 1 each).
    pixel_spacing: mm per pixel for HD / ASSD in mm (None: pixels).
    transforms, augment, strict_masks: as `seg.data.datasets.covid.covid_infection`.
    cv: cross-validation {"folds": K, "fold": i, "seed": S} (None: off): the test images are held out by S,
        the others dealt into K folds by image (seg.data.layout.split_for); split["cv"] records the folds.

    train: (image float32 (1, S, S), mask int64 (S, S)); val/test: Case(image float32 (1, 1, S, S),
    label uint8 (1, H0, W0), spacing (pixel_spacing,) * 2 or (1.0, 1.0)); split: file names per split.
    """
    names = _names(class_names)
    if pixel_spacing is not None and not (isinstance(pixel_spacing, (int, float)) and pixel_spacing > 0):
        raise ValueError(f"pixel_spacing={pixel_spacing!r}; expected a positive size in mm or null")
    base = resolve_root(root, None, ["images", "masks"], LAYOUT, "PNG pairs")
    items = list_pairs(base / "images", base / "masks", "", "all", strict_masks, num_labels=len(names) + 1)
    if not items:
        raise FileNotFoundError(f"no *.png images in {base / 'images'}.\nExpected layout:\n{LAYOUT}")
    by_id = {it.case_id: it for it in items}
    split = split_for(list(by_id), ["all"] * len(items), val_fraction, test_fraction, seed, "PNG pairs", cv)
    parts = {k: [by_id[i] for i in split[k]] for k in ("train", "val", "test")}
    log.info("PNG pairs %s: train %d, val %d, test %d images; classes %s", base, len(parts["train"]),
             len(parts["val"]), len(parts["test"]), names)
    spacing = (float(pixel_spacing),) * 2 if pixel_spacing else (1.0, 1.0)
    train_tf, eval_tf = transforms_pair(image_size, augment, seed, transforms)
    return SegData(train=PairTrain(parts["train"], train_tf), val=PairCases(parts["val"], eval_tf, spacing),
                   test=PairCases(parts["test"], eval_tf, spacing), class_names=names, split=split)


READERS = ("png_pairs",)


def class_names(source: dict) -> list[str]:
    return _names(source.get("class_names"))


def predict_reader(source: dict) -> Reader:
    """seg.predict: 8-bit images as the reader reads them (other inputs min-max scaled per slice)."""
    return Reader("png_pairs", unit_or_uint8, class_names(source))


def check(report: Report, root: str | Path, source: dict) -> None:
    """Read every image and mask into `report` (all problems, named)."""
    base = resolve_root(root, None, ["images", "masks"], LAYOUT, "PNG pairs")
    report.root = base
    check_png_pairs(report, base / "images", base / "masks", ("all", "images"),
                    num_labels=len(class_names(source)) + 1)


def references(name: str) -> Published:
    """Your own data: nothing published."""
    return Published()
