"""Generic PNG image/mask pairs: the item, its reading, and the train / evaluation datasets built on it.

Used by every PNG dataset (`seg.data.datasets.covid`, `radiography`, `ct_heart`, `png_pairs`):

    PairItem          one image file + its mask file (+ category, strictness, resize flag)
    list_pairs        an images/ folder and a masks/ folder -> PairItems by file name
    read_pair         PairItem -> image (H, W) uint8, mask (H, W) uint8 class indices
    cached_pair       read_pair through the decoded-sample cache (seg.data.cache): decoded once per process
    PairTrain         train split: i -> (image float32 tensor (1, S, S), mask int64 tensor (S, S))
    PairCases         val/test split: i -> Case (image (1, 1, S, S), label (1, H0, W0) at original size)

Masks: binary tasks (num_labels=2) accept 0/255 or 0/1 (`binary_mask`); multiclass masks hold the
class index 0..num_labels-1 per pixel and any other value is an error naming the file.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from seg.data.base import Case
from seg.data.cache import decoded_samples
from seg.data.io.png import binary_mask, png_size, read_png
from seg.data.layout import natural_key, raise_unpaired
from seg.data.transforms import PairedDataset, apply_image


@dataclass(frozen=True)
class PairItem:
    case_id: str          # "Test/COVID-19/covid_1.png"
    image: Path
    mask: Path
    category: str
    strict: bool = True
    resize_image: bool = False    # image resized to the mask's size (COVID-19 Radiography: 299 -> 256)
    num_labels: int = 2           # label values 0..num_labels-1 (2: binary, 0/255 or 0/1 on disk)


def png_names(folder: Path) -> list[str]:
    """Names of the visible *.png files of a folder, natural order ('img9' before 'img10')."""
    return sorted((p.name for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")),
                  key=natural_key)


def list_pairs(image_dir: Path, mask_dir: Path, prefix: str, category: str, strict: bool = True,
               same_size: bool = True, resize_image: bool = False, num_labels: int = 2,
               unpaired: list[Path] | None = None) -> list[PairItem]:
    """Every image of image_dir with the mask of the same name in mask_dir -> PairItems.

    Headers are checked up front (truncated files named); same_size: image and mask sizes must
    agree (ValueError naming both). Images without a mask are appended to `unpaired` when given
    (the caller raises once for all folders), else FileNotFoundError listing them.
    """
    items, missing = [], []
    for name in png_names(image_dir):
        image, mask = image_dir / name, mask_dir / name
        if not mask.is_file():
            missing.append(image)
            continue
        shape_i, shape_m = png_size(image), png_size(mask)
        if same_size and shape_i != shape_m:
            raise ValueError(f"image {image} is {shape_i[0]}x{shape_i[1]} but its mask {mask} "
                             f"is {shape_m[0]}x{shape_m[1]}")
        items.append(PairItem(f"{prefix}{name}", image, mask, category, strict, resize_image, num_labels))
    if unpaired is None:
        raise_unpaired(missing, mask_dir.name)
    else:
        unpaired += missing
    return items


def label_mask(mask: np.ndarray, path: Path, num_labels: int, strict: bool = True) -> np.ndarray:
    """(H, W) uint8 mask as stored -> class indices uint8 in 0..num_labels-1; ValueError naming the file."""
    if num_labels == 2:
        return binary_mask(mask, path, strict)
    bad = np.unique(mask[mask >= num_labels])
    if bad.size:
        raise ValueError(f"mask {path} holds label values {bad[:8].tolist()} outside 0..{num_labels - 1} "
                         f"(expected one class index per pixel)")
    return mask.astype(np.uint8)


def read_pair(item: PairItem) -> tuple[np.ndarray, np.ndarray]:
    """-> image (H, W) uint8, mask (H, W) uint8 class indices (binary: 0/1)."""
    image, mask = read_png(item.image), read_png(item.mask)
    if item.resize_image and image.shape != mask.shape:
        shrink = image.shape[0] * image.shape[1] > mask.shape[0] * mask.shape[1]
        image = cv2.resize(image, mask.shape[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if image.shape != mask.shape:
        raise ValueError(f"image {item.image} is {image.shape} but its mask {item.mask} is {mask.shape}")
    return image, label_mask(mask, item.mask, item.num_labels, item.strict)


def cached_pair(item: PairItem) -> tuple[np.ndarray, np.ndarray]:
    """read_pair(item) through the process-wide decoded-sample cache (seg.data.cache): each pair is
    decoded once per process while its files are unchanged; the arrays are read-only."""
    return decoded_samples().get(item, (item.image, item.mask), lambda: read_pair(item))


class PairTrain(PairedDataset):
    """Train split: i -> (image float32 tensor (1, S, S), mask int64 tensor (S, S) class indices)."""

    def __init__(self, items: Sequence[PairItem], transform: A.Compose):
        super().__init__(transform)
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return cached_pair(self.items[index])


class PairCases(Sequence):
    """Val/test split, read lazily: i -> Case(image float32 (1, 1, S, S), label uint8 (1, H0, W0)).

    meta: {"category", "image_file", "label_file"}; spacing (dy, dx) mm, (1.0, 1.0) = pixels.
    """

    def __init__(self, items: Sequence[PairItem], transform: A.Compose,
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
        image, mask = cached_pair(item)
        x = apply_image(self.transform, image)[None, None]                  # (1, 1, S, S)
        return Case(case_id=item.case_id, image=x, label=mask[None], spacing=self.spacing, is_3d=False,
                    meta={"category": item.category, "image_file": str(item.image), "label_file": str(item.mask)})
