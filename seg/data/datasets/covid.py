"""COVID-QU-Ex readers (PNG chest radiographs): infection masks and lung masks.

Layouts of the real download:

    Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/
        {images,infection masks,lung masks}/*.png      (same file name in all three folders)
    Lung Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/
        {images,lung masks}/*.png

The published Train/Val/Test split is used as is (with cross-validation, `cv`, the Train + Val images
are dealt into folds by category and Test stays). Target: the infection mask (covid_infection)
or the lung mask (covid_lung), binary 0/1. Images are read as 8-bit grayscale; the intensity
normalisation and augmentations come from the config's `transforms` (default: per-image z-score).

Bad input: a missing root or one at the wrong level, an image without a mask of the same name,
a truncated / non-PNG file (header and final IEND chunk checked for every file up front), image
and mask of different sizes: FileNotFoundError / ValueError naming the file(s). A mask with
values other than 0/255 (or 0/1): ValueError naming the file when read (strict_masks=True).

Everything about COVID-QU-Ex lives here: the readers (`covid_infection`, `covid_lung`), the check
(`check`), predict's preprocessing (`predict_reader`), class names and published references.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seg.data.base import Published, Reader, Reference, SegData
from seg.data.layout import Folds, raise_unpaired, resolve_root, split_with_folds
from seg.data.pairs import PairCases, PairItem, PairTrain, list_pairs
from seg.data.transforms import transforms_pair, unit_slices
from seg.data.validate import Report, check_png_pairs

log = logging.getLogger(__name__)

TOP = "Infection Segmentation Data"
LUNG_TOP = "Lung Segmentation Data"
SPLITS = {"train": "Train", "val": "Val", "test": "Test"}
CATEGORIES = ("COVID-19", "Non-COVID", "Normal")
IMAGES, INFECTION, LUNG = "images", "infection masks", "lung masks"
LAYOUT = f"""\
  {TOP}/                 (root may be this folder or its parent)
    Train/ Val/ Test/
      COVID-19/ Non-COVID/ Normal/
        images/*.png            8-bit grayscale chest radiographs
        infection masks/*.png   0/255, same file name as the image
        lung masks/*.png        (not read)"""
LUNG_LAYOUT = f"""\
  {LUNG_TOP}/                      (root may be this folder or its parent)
    Train/ Val/ Test/
      COVID-19/ Non-COVID/ Normal/
        images/*.png            8-bit grayscale chest radiographs
        lung masks/*.png        0/255, same file name as the image"""


def _list_split(root: Path, split: str, categories: Sequence[str], mask_dir: str = INFECTION,
                strict: bool = True) -> list[PairItem]:
    items: list[PairItem] = []
    unpaired: list[Path] = []
    for cat in categories:
        folder = root / split / cat
        items += list_pairs(folder / IMAGES, folder / mask_dir, f"{split}/{cat}/", cat, strict, unpaired=unpaired)
    raise_unpaired(unpaired, mask_dir)
    return items


def _qu_ex(root: str, image_size: int, seed: int, augment: bool, covid_only: bool, transforms: dict | None,
           strict_masks: bool, top: str, mask_dir: str, layout: str, what: str, class_name: str,
           cv: dict | None = None) -> SegData:
    categories = ("COVID-19",) if covid_only else CATEGORIES
    needed = [f"{split}/{cat}/{sub}" for split in SPLITS.values() for cat in categories
              for sub in (IMAGES, mask_dir)]
    base = resolve_root(root, top, needed, layout, f"COVID-QU-Ex {what} data")
    items = {key: _list_split(base, folder, categories, mask_dir, strict_masks)
             for key, folder in SPLITS.items()}
    for key, its in items.items():
        if not its:
            raise FileNotFoundError(f"no *.png images in the {SPLITS[key]} split under {base}.\n"
                                    f"Expected layout:\n{layout}")
    split = {key: [it.case_id for it in its] for key, its in items.items()}
    folds = Folds.of(cv)
    if folds is not None:   # the published Train + Val pool dealt into folds by category; Test stays
        pool = items["train"] + items["val"]
        split = split_with_folds([it.case_id for it in pool], [it.category for it in pool], split["test"], folds,
                                 f"COVID-QU-Ex {what} Train+Val images")
        by_id = {it.case_id: it for it in pool}
        items = {"train": [by_id[k] for k in split["train"]], "val": [by_id[k] for k in split["val"]],
                 "test": items["test"]}
    log.info("COVID-QU-Ex %s %s: %s", what, base, "; ".join(
        f"{k} {len(v)} ({', '.join(f'{c} {n}' for c, n in Counter(i.category for i in v).items())})"
        for k, v in items.items()))
    train_tf, eval_tf = transforms_pair(image_size, augment, seed, transforms)
    return SegData(
        train=PairTrain(items["train"], train_tf),
        val=PairCases(items["val"], eval_tf),
        test=PairCases(items["test"], eval_tf),
        class_names=[class_name],
        split=split,
    )


def covid_infection(root: str, image_size: int, seed: int = 0, augment: bool = True, covid_only: bool = False, transforms: dict | None = None,
                    strict_masks: bool = True, cv: dict | None = None) -> SegData:
    """COVID-QU-Ex infection segmentation (binary) -> SegData.

    root: the "Infection Segmentation Data" folder or its parent.
    image_size: S, the model input side; images resized bilinearly, masks nearest.
    seed: seeds the training augmentations (the split is the published one).
    augment: train-time augmentations; False = resize + normalisation only.
    covid_only: keep only COVID-19 images (every one has infection) in all splits.
    transforms: `seg.data.transforms.build_transforms` options (normalize, hflip, rotate, elastic, ...).
    strict_masks: a mask value other than 0/255 (0/1) is an error naming the file; False = threshold 128.
    cv: cross-validation {"folds": K, "fold": i, "seed": S} (seg.data.layout.Folds; None: off): the published
        Train + Val images are dealt into K folds stratified by category (by S), fold i is validation, the
        rest train; Test stays the published Test. split["cv"] records the folds.

    train: (image float32 (1, S, S), mask int64 (S, S) in {0, 1}).
    val/test: Case(image float32 (1, 1, S, S), label uint8 (1, H0, W0) in {0, 1} at the original
    size, spacing (1.0, 1.0) (pixels), is_3d False, meta {"category": ...}). class_names ["infection"];
    split: ids "Train/COVID-19/covid_1.png" per split.
    """
    return _qu_ex(root, image_size, seed, augment, covid_only, transforms, strict_masks,
                  TOP, INFECTION, LAYOUT, "infection", "infection", cv)


def covid_lung(root: str, image_size: int, seed: int = 0, augment: bool = True, covid_only: bool = False, transforms: dict | None = None,
               strict_masks: bool = True, cv: dict | None = None) -> SegData:
    """COVID-QU-Ex "Lung Segmentation Data" (binary lung masks) -> SegData.

    root: the "Lung Segmentation Data" folder or its parent. Other arguments and the returned SegData
    as `covid_infection`, with class_names ["lung"] and masks from `lung masks/`.
    """
    return _qu_ex(root, image_size, seed, augment, covid_only, transforms, strict_masks,
                  LUNG_TOP, LUNG, LUNG_LAYOUT, "lung", "lung", cv)


# ---------------------------------------------------------------------------------------------
# the dataset's other jobs: check, predict preprocessing, class names, published references
# ---------------------------------------------------------------------------------------------

READERS = ("covid_infection", "covid_lung")     # the functions a config's `_target_` may name
_TASKS = {"covid_infection": (TOP, INFECTION, LAYOUT, "infection"),
          "covid_lung": (LUNG_TOP, LUNG, LUNG_LAYOUT, "lung")}


def _task(source: dict) -> str:
    name = str(source.get("_target_", "")).rsplit(".", 1)[-1]
    return name if name in _TASKS else "covid_infection"


def class_names(source: dict) -> list[str]:
    """["infection"] (covid_infection) or ["lung"] (covid_lung), by the config's reader function."""
    return [_TASKS[_task(source)][3]]


def unit_or_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit images as they are (the reader reads 8-bit grayscale); anything else (D, H, W) min-max
    scaled per slice to [0, 1]."""
    return pixels if pixels.dtype == np.uint8 else unit_slices(pixels)


def predict_reader(source: dict) -> Reader:
    """seg.predict: 8-bit images as the reader reads them (other inputs min-max scaled per slice)."""
    return Reader(_task(source), unit_or_uint8, class_names(source))


def check(report: Report, root: str | Path, source: dict) -> None:
    """Read every image and mask of Train/Val/Test into `report` (all problems, named)."""
    top, mask_dir, layout, _ = _TASKS[_task(source)]
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
            check_png_pairs(report, folder / IMAGES, folder / mask_dir, (split, cat))


REFERENCES = (
    Reference("best network of Tahir et al. (infection)", {"infection": 88.21, "mean": 88.21},
              "Tahir et al., COVID-19 infection localization and severity grading from chest X-ray images, "
              "Computers in Biology and Medicine 139:105002 (2021), arXiv:2103.07985, abstract",
              note="IoU 83.05 %. Their split, resolution and handling of images without infection differ from ours."),
)


def references(name: str) -> Published:
    """Published Dice (%) for covid_infection; none are listed for covid_lung."""
    if name != "covid_infection":
        return Published()
    return Published(REFERENCES, "COVID-QU-Ex infection segmentation data (real chest X-rays)", "")
