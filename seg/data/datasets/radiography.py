"""COVID-19 Radiography Database reader (PNG chest radiographs with lung masks).

Layout of the real download (Kaggle "COVID-19 Radiography Database"):

    COVID-19_Radiography_Dataset/               (root may be this folder or its parent)
        COVID/ Normal/ Lung_Opacity/ Viral Pneumonia/
            images/<class>-N.png               299x299 grayscale radiographs
            masks/<class>-N.png                256x256 lung masks 0/255, same file name
        *.metadata.xlsx, README.md.txt         (not read)

Images and masks differ in size as published: each image is first resized to its mask's size
(INTER_AREA), so the label is scored at the mask's own 256x256 resolution; then both go through
one albumentations call to the model size (masks nearest). There is no published split: images
are split into train/val/test by `seed`, stratified by class, and the split is saved with the run.
Bad input as in `seg.data.datasets.covid` (missing masks, truncated PNG, non-binary mask values: errors
naming the files). Reader, check, predict preprocessing, class names: all here.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from seg.data.base import Published, Reader, SegData
from seg.data.datasets.covid import unit_or_uint8
from seg.data.layout import raise_unpaired, resolve_root, split_for
from seg.data.pairs import PairCases, PairItem, PairTrain, list_pairs
from seg.data.transforms import transforms_pair
from seg.data.validate import Report, check_png_pairs

log = logging.getLogger(__name__)

TOP = "COVID-19_Radiography_Dataset"
CLASSES = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")
LAYOUT = f"""\
  {TOP}/                 (root may be this folder or its parent)
    COVID/ Normal/ Lung_Opacity/ Viral Pneumonia/
      images/*.png     299x299 grayscale chest radiographs
      masks/*.png      256x256 lung masks 0/255, same file name as the image"""


def list_items(base: Path, classes: Sequence[str], strict: bool = True) -> list[PairItem]:
    """All image/mask pairs of the given classes; FileNotFoundError listing images without masks."""
    items: list[PairItem] = []
    unpaired: list[Path] = []
    for cls in classes:
        items += list_pairs(base / cls / "images", base / cls / "masks", f"{cls}/", cls, strict, same_size=False,
                            resize_image=True, unpaired=unpaired)
    raise_unpaired(unpaired, "masks")
    return items


def covid_radiography(root: str, image_size: int, seed: int = 0, augment: bool = True, classes: Sequence[str] | None = None, val_fraction: float = 0.1,
                      test_fraction: float = 0.1, transforms: dict | None = None,
                      strict_masks: bool = True, cv: dict | None = None) -> SegData:
    """COVID-19 Radiography Database, lung segmentation (binary) -> SegData.

    root: COVID-19_Radiography_Dataset or its parent.
    classes: the class folders to use (default all four: COVID, Normal, Lung_Opacity, Viral Pneumonia).
    val_fraction / test_fraction: shares per class held out for validation / test, by `seed`.
    cv: cross-validation {"folds": K, "fold": i, "seed": S} (None: off): the test images are held out by S,
        the others dealt into K folds stratified by class (seg.data.layout.split_for).
    Other arguments as `seg.data.datasets.covid.covid_infection`. Cases: label uint8 (1, 256, 256) (the mask's
    size), spacing (1.0, 1.0) pixels, meta {"category": class}; class_names ["lung"]; split: ids
    "COVID/COVID-1.png" per split.
    """
    classes = tuple(CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes={list(classes)!r}; expected a non-empty subset of {list(CLASSES)}")
    base = resolve_root(root, TOP, [f"{c}/{sub}" for c in classes for sub in ("images", "masks")], LAYOUT,
                        "COVID-19 Radiography Database")
    items = list_items(base, classes, strict_masks)
    if not items:
        raise FileNotFoundError(f"no *.png images under {base}.\nExpected layout:\n{LAYOUT}")
    by_id = {it.case_id: it for it in items}
    split = split_for(list(by_id), [it.category for it in items], val_fraction, test_fraction, seed,
                             "COVID-19 Radiography images", cv)
    parts = {k: [by_id[i] for i in split[k]] for k in ("train", "val", "test")}
    log.info("COVID-19 Radiography %s: %s", base, "; ".join(
        f"{k} {len(v)} ({', '.join(f'{c} {n}' for c, n in sorted(Counter(i.category for i in v).items()))})"
        for k, v in parts.items()))
    train_tf, eval_tf = transforms_pair(image_size, augment, seed, transforms)
    return SegData(train=PairTrain(parts["train"], train_tf), val=PairCases(parts["val"], eval_tf),
                   test=PairCases(parts["test"], eval_tf), class_names=["lung"], split=split)


# ---------------------------------------------------------------------------------------------
# the dataset's other jobs: check, predict preprocessing, class names, published references
# ---------------------------------------------------------------------------------------------

READERS = ("covid_radiography",)


def class_names(source: dict) -> list[str]:
    return ["lung"]


def predict_reader(source: dict) -> Reader:
    """seg.predict: 8-bit images as the reader reads them (other inputs min-max scaled per slice)."""
    return Reader("covid_radiography", unit_or_uint8, class_names(source))


def check(report: Report, root: str | Path, source: dict) -> None:
    """Read every image and mask of the four class folders into `report` (all problems, named)."""
    base = resolve_root(root, TOP, [f"{CLASSES[0]}/images"], LAYOUT, "COVID-19 Radiography Database")
    report.root = base
    for cls in CLASSES:
        missing = [base / cls / sub for sub in ("images", "masks") if not (base / cls / sub).is_dir()]
        if missing:
            report.problem("missing folder: " + ", ".join(map(str, missing)))
            continue
        check_png_pairs(report, base / cls / "images", base / cls / "masks", ("all", cls), same_size=False)
    report.notes.append("images are resized to their mask's size when read (299 -> 256 as published)")


def references(name: str) -> Published:
    """No published lung-segmentation numbers are listed for this database."""
    return Published()
