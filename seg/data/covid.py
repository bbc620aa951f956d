"""COVID-QU-Ex readers (PNG chest radiographs): infection masks and lung masks.

Layouts of the real download (and of the phantoms `seg.data.phantom.write_covid_qu_ex` /
`write_covid_lung`):

    Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/
        {images,infection masks,lung masks}/*.png      (same file name in all three folders)
    Lung Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/
        {images,lung masks}/*.png

The published Train/Val/Test split is used as is. Target: the infection mask (covid_infection)
or the lung mask (covid_lung), binary 0/1. Images are read as 8-bit grayscale; the intensity
normalisation and augmentations come from the config's `transforms` (default: per-image z-score).

Bad input: a missing root or one at the wrong level, an image without a mask of the same name,
a truncated / non-PNG file (header and final IEND chunk checked for every file up front), image
and mask of different sizes: FileNotFoundError / ValueError naming the file(s). A mask with
values other than 0/255 (or 0/1): ValueError naming the file when read (strict_masks=True).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from seg.data.base import Case, SegData
from seg.data.layout import binary_mask, natural_key, png_size, raise_unpaired, read_png, resolve_root
from seg.data.phantom import write_covid_lung, write_covid_qu_ex
from seg.data.transforms import PairedDataset, apply_image, transforms_pair

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


@dataclass(frozen=True)
class _Item:
    case_id: str          # "Test/COVID-19/covid_1.png"
    image: Path
    mask: Path
    category: str
    strict: bool = True
    resize_image: bool = False    # image resized to the mask's size (COVID-19 Radiography: 299 -> 256)


def _list_split(root: Path, split: str, categories: Sequence[str], mask_dir: str = INFECTION,
                strict: bool = True) -> list[_Item]:
    items, unpaired = [], []
    for cat in categories:
        folder = root / split / cat
        names = sorted((p.name for p in (folder / IMAGES).iterdir()
                        if p.suffix.lower() == ".png" and not p.name.startswith(".")), key=natural_key)
        for name in names:
            image, mask = folder / IMAGES / name, folder / mask_dir / name
            if not mask.is_file():
                unpaired.append(image)
                continue
            shape_i, shape_m = png_size(image), png_size(mask)
            if shape_i != shape_m:
                raise ValueError(f"image {image} is {shape_i[0]}x{shape_i[1]} but its mask {mask} "
                                 f"is {shape_m[0]}x{shape_m[1]}")
            items.append(_Item(f"{split}/{cat}/{name}", image, mask, cat, strict))
    raise_unpaired(unpaired, mask_dir)
    return items


def _read_pair(item: _Item) -> tuple[np.ndarray, np.ndarray]:
    """-> image (H, W) uint8, mask (H, W) uint8 0/1."""
    image, mask = read_png(item.image), read_png(item.mask)
    if item.resize_image and image.shape != mask.shape:
        shrink = image.shape[0] * image.shape[1] > mask.shape[0] * mask.shape[1]
        image = cv2.resize(image, mask.shape[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if image.shape != mask.shape:
        raise ValueError(f"image {item.image} is {image.shape} but its mask {item.mask} is {mask.shape}")
    return image, binary_mask(mask, item.mask, item.strict)


class CovidTrain(PairedDataset):
    """Train split: i -> (image float32 tensor (1, S, S), mask int64 tensor (S, S), values 0/1)."""

    def __init__(self, items: Sequence[_Item], transform: A.Compose):
        super().__init__(transform)
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return _read_pair(self.items[index])


class CovidCases(Sequence):
    """Val/test split, read lazily: i -> Case(image float32 (1, 1, S, S), label uint8 (1, H0, W0))."""

    def __init__(self, items: Sequence[_Item], transform: A.Compose,
                 spacing: tuple[float, float] = (1.0, 1.0)):
        self.items = list(items)
        self.transform = transform
        self.spacing = (float(spacing[0]), float(spacing[1]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self.items[index]
        image, mask = _read_pair(item)
        x = apply_image(self.transform, image)[None, None]                  # (1, 1, S, S)
        return Case(case_id=item.case_id, image=x, label=mask[None], spacing=self.spacing,
                    is_3d=False, meta={"category": item.category})


def _qu_ex(root: str | None, image_size: int, seed: int, phantom_dir: str | None, augment: bool,
           covid_only: bool, transforms: dict | None, strict_masks: bool, top: str, mask_dir: str,
           layout: str, writer, what: str, class_name: str) -> SegData:
    if root is None:
        if phantom_dir is None:
            raise ValueError(f"{what}: root and phantom_dir are both None; give root (the "
                             f"'{top}' folder, dataset.root=...) or phantom_dir (where the phantom is written)")
        root = writer(phantom_dir)
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
    log.info("COVID-QU-Ex %s %s: %s", what, base, "; ".join(
        f"{k} {len(v)} ({', '.join(f'{c} {n}' for c, n in Counter(i.category for i in v).items())})"
        for k, v in items.items()))
    train_tf, eval_tf = transforms_pair(image_size, augment, seed, transforms)
    return SegData(
        train=CovidTrain(items["train"], train_tf),
        val=CovidCases(items["val"], eval_tf),
        test=CovidCases(items["test"], eval_tf),
        class_names=[class_name],
        split={key: [it.case_id for it in its] for key, its in items.items()},
    )


def covid_infection(root: str | None, image_size: int, seed: int = 0, phantom_dir: str | None = None,
                    augment: bool = True, covid_only: bool = False, transforms: dict | None = None,
                    strict_masks: bool = True) -> SegData:
    """COVID-QU-Ex infection segmentation (binary) -> SegData.

    root: the "Infection Segmentation Data" folder or its parent; None = the embedded phantom,
          written once into phantom_dir (`seg.data.phantom.write_covid_qu_ex`).
    image_size: S, the model input side; images resized bilinearly, masks nearest.
    seed: seeds the training augmentations (the split is the published one).
    augment: train-time augmentations; False = resize + normalisation only.
    covid_only: keep only COVID-19 images (every one has infection) in all splits.
    transforms: `seg.data.transforms.build_transforms` options (normalize, hflip, rotate, elastic, ...).
    strict_masks: a mask value other than 0/255 (0/1) is an error naming the file; False = threshold 128.

    train: (image float32 (1, S, S), mask int64 (S, S) in {0, 1}).
    val/test: Case(image float32 (1, 1, S, S), label uint8 (1, H0, W0) in {0, 1} at the original
    size, spacing (1.0, 1.0) (pixels), is_3d False, meta {"category": ...}). class_names ["infection"];
    split: ids "Train/COVID-19/covid_1.png" per split.
    """
    return _qu_ex(root, image_size, seed, phantom_dir, augment, covid_only, transforms, strict_masks,
                  TOP, INFECTION, LAYOUT, write_covid_qu_ex, "infection", "infection")


def covid_lung(root: str | None, image_size: int, seed: int = 0, phantom_dir: str | None = None,
               augment: bool = True, covid_only: bool = False, transforms: dict | None = None,
               strict_masks: bool = True) -> SegData:
    """COVID-QU-Ex "Lung Segmentation Data" (binary lung masks) -> SegData.

    root: the "Lung Segmentation Data" folder or its parent; None = the phantom written into
    phantom_dir (`seg.data.phantom.write_covid_lung`). Other arguments and the returned SegData
    as `covid_infection`, with class_names ["lung"] and masks from `lung masks/`.
    """
    return _qu_ex(root, image_size, seed, phantom_dir, augment, covid_only, transforms, strict_masks,
                  LUNG_TOP, LUNG, LUNG_LAYOUT, write_covid_lung, "lung", "lung")
