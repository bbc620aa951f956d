"""COVID-QU-Ex "Infection Segmentation Data" reader (PNG chest radiographs, infection masks).

Layout of the real download (and of the embedded phantom, `seg.data.phantom.write_covid_qu_ex`):

    Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/
        {images,infection masks,lung masks}/*.png      (same file name in all three folders)

The published Train/Val/Test split is used as is. Target: the infection mask, binary 0/1.
Images are read as 8-bit grayscale and z-scored per image after resizing (see `transforms`).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from seg.data.base import Case, SegData
from seg.data.phantom import write_covid_qu_ex
from seg.data.transforms import PairedDataset, apply_image, build_transforms

log = logging.getLogger(__name__)

TOP = "Infection Segmentation Data"
SPLITS = {"train": "Train", "val": "Val", "test": "Test"}
CATEGORIES = ("COVID-19", "Non-COVID", "Normal")
IMAGES, INFECTION = "images", "infection masks"
LAYOUT = f"""\
  {TOP}/                 (root may be this folder or its parent)
    Train/ Val/ Test/
      COVID-19/ Non-COVID/ Normal/
        images/*.png            8-bit grayscale chest radiographs
        infection masks/*.png   0/255, same file name as the image
        lung masks/*.png        (not read)"""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class _Item:
    case_id: str          # "Test/COVID-19/covid_1.png"
    image: Path
    mask: Path
    category: str


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _png_size(path: Path) -> tuple[int, int]:
    """(height, width) from the PNG header; ValueError naming the file if it is no PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as err:
        raise ValueError(f"cannot read PNG file {path}: {err}") from err
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"corrupt or non-PNG file: {path} (bad PNG header)")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return height, width


def read_png(path: Path) -> np.ndarray:
    """8-bit grayscale PNG -> (H, W) uint8 (colour images are converted); ValueError naming the file."""
    data = np.fromfile(path, dtype=np.uint8)   # np.fromfile + imdecode: non-ASCII paths work too
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise ValueError(f"corrupt or unreadable PNG file: {path}")
    return image


def _resolve_root(root: Path, categories: Sequence[str]) -> Path:
    """root or root/"Infection Segmentation Data", whichever holds the layout; else FileNotFoundError."""
    root = Path(root).expanduser()
    candidates = [root / TOP, root] if root.name != TOP else [root]
    needed = [Path(split, cat, sub) for split in SPLITS.values() for cat in categories
              for sub in (IMAGES, INFECTION)]
    first_missing = []
    for cand in candidates:
        missing = [p for p in needed if not (cand / p).is_dir()]
        if not missing:
            return cand
        first_missing.append(str(cand / missing[0]))
    where = ("does not exist" if not root.exists()
             else "is not in the expected layout (missing " + " and ".join(first_missing) + ")")
    raise FileNotFoundError(
        f"COVID-QU-Ex infection data not found: {root} {where}.\nExpected layout:\n{LAYOUT}")


def _list_split(root: Path, split: str, categories: Sequence[str]) -> list[_Item]:
    items, unpaired = [], []
    for cat in categories:
        folder = root / split / cat
        names = sorted((p.name for p in (folder / IMAGES).iterdir()
                        if p.suffix.lower() == ".png" and not p.name.startswith(".")), key=_natural_key)
        for name in names:
            image, mask = folder / IMAGES / name, folder / INFECTION / name
            if not mask.is_file():
                unpaired.append(image)
                continue
            shape_i, shape_m = _png_size(image), _png_size(mask)
            if shape_i != shape_m:
                raise ValueError(f"image {image} is {shape_i[0]}x{shape_i[1]} but its mask {mask} "
                                 f"is {shape_m[0]}x{shape_m[1]}")
            items.append(_Item(f"{split}/{cat}/{name}", image, mask, cat))
    if unpaired:
        shown = "\n  ".join(str(p) for p in unpaired[:10])
        more = f"\n  ... and {len(unpaired) - 10} more" if len(unpaired) > 10 else ""
        raise FileNotFoundError(f"{len(unpaired)} image(s) without an infection mask of the same name "
                                f"in '{INFECTION}/':\n  {shown}{more}")
    return items


def _read_pair(item: _Item) -> tuple[np.ndarray, np.ndarray]:
    """-> image (H, W) uint8, mask (H, W) uint8 0/1."""
    image, mask = read_png(item.image), read_png(item.mask)
    if image.shape != mask.shape:
        raise ValueError(f"image {item.image} is {image.shape} but its mask {item.mask} is {mask.shape}")
    return image, (mask > 127).astype(np.uint8)


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

    def __init__(self, items: Sequence[_Item], transform: A.Compose):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self.items[index]
        image, mask = _read_pair(item)
        x = apply_image(self.transform, image)[None, None]                  # (1, 1, S, S)
        return Case(case_id=item.case_id, image=x, label=mask[None], spacing=(1.0, 1.0),
                    is_3d=False, meta={"category": item.category})


def covid_infection(root: str | None, image_size: int, seed: int = 0, phantom_dir: str | None = None,
                    augment: bool = True, covid_only: bool = False) -> SegData:
    """COVID-QU-Ex infection segmentation (binary) -> SegData.

    root: the "Infection Segmentation Data" folder or its parent; None = the embedded phantom,
          written once into phantom_dir (`seg.data.phantom.write_covid_qu_ex`).
    image_size: S, the model input side; images resized bilinearly, masks nearest.
    seed: seeds the training augmentations (the split is the published one).
    augment: train-time augmentations (flip, affine, brightness/contrast, noise); False = resize only.
    covid_only: keep only COVID-19 images (every one has infection) in all splits.

    train: (image float32 (1, S, S) z-scored per image, mask int64 (S, S) in {0, 1}).
    val/test: Case(image float32 (1, 1, S, S), label uint8 (1, H0, W0) in {0, 1} at the original
    size, spacing (1.0, 1.0) (pixels), is_3d False, meta {"category": ...}). class_names ["infection"];
    split: ids "Train/COVID-19/covid_1.png" per split.
    """
    if root is None:
        if phantom_dir is None:
            raise ValueError("covid_infection: root and phantom_dir are both None; give root (a "
                             "COVID-QU-Ex tree) or phantom_dir (where the phantom is written)")
        root = write_covid_qu_ex(phantom_dir)
    categories = ("COVID-19",) if covid_only else CATEGORIES
    base = _resolve_root(Path(root), categories)
    items = {key: _list_split(base, folder, categories) for key, folder in SPLITS.items()}
    for key, its in items.items():
        if not its:
            raise FileNotFoundError(f"no *.png images in the {SPLITS[key]} split under {base}.\n"
                                    f"Expected layout:\n{LAYOUT}")
    log.info("COVID-QU-Ex infection %s: %s", base,
             ", ".join(f"{k} {len(v)}" for k, v in items.items()))
    evaluate = build_transforms(image_size, train=False)
    return SegData(
        train=CovidTrain(items["train"], build_transforms(image_size, train=augment, seed=seed)),
        val=CovidCases(items["val"], evaluate),
        test=CovidCases(items["test"], evaluate),
        class_names=["infection"],
        split={key: [it.case_id for it in its] for key, its in items.items()},
    )
