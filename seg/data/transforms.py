"""Paired image + mask transforms (albumentations 2.x) and the training Dataset built on them.

Image and mask go through ONE albumentations call, so geometry never diverges. Images are
resized bilinearly, masks with nearest neighbour (INTER_NEAREST_EXACT for Resize: pixel-centre
aligned like the bilinear image resize; INTER_NEAREST for the affine warp), so a mask never
holds interpolated values. The last step is a per-image z-score (mean 0, std 1, clipped to
+-20; a constant image becomes zeros).

Input: image (H, W) uint8 (0..255) or float32 scaled to [0, 1]; mask (H, W) uint8 class indices.
Output of the Compose: image float32 (S, S), mask uint8 (S, S).
"""
from __future__ import annotations

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info


def build_transforms(image_size: int, train: bool, seed: int | None = None) -> A.Compose:
    """(image (H, W), mask (H, W)) -> (image float32 (S, S) z-scored, mask uint8 (S, S)), S = image_size.

    train=True: Resize, HorizontalFlip, Affine (rotate +-15 deg, scale 0.9-1.1, shift +-5 %),
    RandomBrightnessContrast, RandomGamma, GaussNoise; train=False: Resize only. Both end with a per-image
    z-score. seed makes the random stream reproducible (one generator shared by all steps).
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"image_size={image_size!r}; expected an int >= 8 (pixels per side)")
    resize = A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR,
                      mask_interpolation=cv2.INTER_NEAREST_EXACT)
    steps: list[Any] = [resize]
    if train:
        steps += [
            A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), translate_percent=(-0.05, 0.05),
                     interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                     border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.RandomGamma(gamma_limit=(80, 125), p=0.3),   # non-linear: survives the z-score
            A.GaussNoise(std_range=(0.01, 0.04), p=0.3),
        ]
    steps.append(A.Normalize(normalization="image", p=1.0))
    compose = A.Compose(steps, seed=seed)
    reseed(compose, seed)
    return compose


def reseed(compose: A.Compose, seed: int | None) -> None:
    """Give every step of `compose` one shared random stream from `seed`.

    (albumentations 2.0 seeds each step with the same seed, which correlates their draws.)
    """
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


def apply_image(transform: A.Compose, image: np.ndarray) -> np.ndarray:
    """image (H, W) -> float32 (S, S) through the image part of `transform` (evaluation)."""
    return _squeeze(transform(image=image)["image"])


def _squeeze(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    return image[..., 0] if image.ndim == 3 else image


class PairedDataset(Dataset):
    """Training samples: index -> (image float32 tensor (1, S, S), mask int64 tensor (S, S)).

    Subclasses implement `__len__` and `load(i) -> (image (H, W) uint8 or float32 in [0, 1],
    mask (H, W) uint8)`. The transform is seeded with `seed` in the main process; in a
    DataLoader worker it is reseeded from torch's per-worker seed (derived from torch's RNG, so
    runs seeded with torch.manual_seed repeat, and workers draw different augmentations).
    """

    def __init__(self, transform: A.Compose):
        self.transform = transform
        self._worker_seed: int | None = None

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            reseed(self.transform, info.seed % 2**32)
            self._worker_seed = info.seed
        image, mask = self.load(index)
        out = self.transform(image=image, mask=mask)
        image = torch.from_numpy(np.ascontiguousarray(_squeeze(out["image"])))[None]   # (1, S, S)
        mask = torch.from_numpy(np.ascontiguousarray(out["mask"]).astype(np.int64))     # (S, S)
        return image, mask
