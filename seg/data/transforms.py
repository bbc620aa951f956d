"""Paired image + mask transforms (albumentations 2.x) and the training Dataset built on them.

Image and mask go through ONE albumentations call, so geometry never diverges. Images are
resized bilinearly, masks with nearest neighbour (INTER_NEAREST_EXACT for Resize: pixel-centre
aligned like the bilinear image resize; INTER_NEAREST for the Affine and Elastic warps, the only
nearest mode OpenCV's warpAffine / remap offer: albumentations refuses INTER_NEAREST_EXACT there),
so a mask never holds interpolated values (a linear resize of an edge between classes 1 and 3
would invent a class 2). The last step is a per-image z-score (mean 0, std 1, clipped to
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


NORMALIZATIONS = ("zscore", "fixed", "window")


def build_transforms(image_size: int, train: bool, seed: int | None = None, normalize: str = "zscore",
                     mean: float | None = None, std: float | None = None, hflip: float = 0.5,
                     vflip: float = 0.0, rotate: float = 15.0, scale: float = 0.1, shift: float = 0.05,
                     brightness_contrast: float = 0.15, gamma: bool = True, noise: bool = True,
                     elastic: float = 0.0) -> A.Compose:
    """(image (H, W), mask (H, W)) -> (image float (S, S), mask uint8 (S, S)), S = image_size; the image is float32,
    or float64 after "zscore" (albumentations' Normalize): PairedDataset and apply_image make it float32.

    train=True: Resize, HorizontalFlip (p=hflip), VerticalFlip (p=vflip), Affine (rotate +-rotate
    deg, scale 1 +- scale, shift +- shift of the side; p 0.7), RandomBrightnessContrast (limits
    +-brightness_contrast, p 0.5), RandomGamma (if gamma), GaussNoise (if noise), ElasticTransform
    (p=elastic; 0 = off); train=False: Resize only. A step whose strength is 0 is left out.
    normalize, the last step: "zscore" per image (mean 0, std 1, clipped to +-20; a constant image
    becomes zeros); "fixed" (x - mean) / std with x in [0, 1] (uint8 images divided by 255);
    "window" keeps x in [0, 1] (the image is already windowed: CT window or 8-bit export).
    seed makes the random stream reproducible (one generator shared by all steps).
    The defaults are the pipeline every dataset used before these options existed.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"image_size={image_size!r}; expected an int >= 8 (pixels per side)")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}; expected one of {', '.join(NORMALIZATIONS)}")
    if normalize == "fixed" and (mean is None or std is None or not std > 0):
        raise ValueError(f"normalize='fixed' needs mean and a positive std (on the [0, 1] scale), "
                         f"got mean={mean!r}, std={std!r}")
    for name, p in (("hflip", hflip), ("vflip", vflip), ("elastic", elastic)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name}={p!r}; expected a probability in [0, 1]")
    resize = A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR,
                      mask_interpolation=cv2.INTER_NEAREST_EXACT)
    steps: list[Any] = [resize]
    if train:
        if hflip:
            steps.append(A.HorizontalFlip(p=hflip))
        if vflip:
            steps.append(A.VerticalFlip(p=vflip))
        if rotate or scale or shift:
            steps.append(A.Affine(rotate=(-rotate, rotate), scale=(1 - scale, 1 + scale),
                                  translate_percent=(-shift, shift),
                                  interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                  border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.7))
        if brightness_contrast:
            steps.append(A.RandomBrightnessContrast(brightness_limit=brightness_contrast,
                                                    contrast_limit=brightness_contrast, p=0.5))
        if gamma:
            steps.append(A.RandomGamma(gamma_limit=(80, 125), p=0.3))   # non-linear: survives the z-score
        if noise:
            steps.append(A.GaussNoise(std_range=(0.01, 0.04), p=0.3))
        if elastic:
            steps.append(A.ElasticTransform(alpha=image_size * 0.5, sigma=image_size * 0.05,
                                            interpolation=cv2.INTER_LINEAR,
                                            mask_interpolation=cv2.INTER_NEAREST,
                                            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=elastic))
    if normalize == "zscore":
        steps.append(A.Normalize(normalization="image", p=1.0))
    elif normalize == "fixed":
        steps.append(FixedNormalize(float(mean), float(std)))
    else:
        steps.append(FixedNormalize(0.0, 1.0))
    compose = A.Compose(steps, seed=seed)
    reseed(compose, seed)
    return compose


class FixedNormalize(A.ImageOnlyTransform):
    """image -> float32 (x - mean) / std, x in [0, 1] (uint8 images are divided by 255 first)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, p: float = 1.0):
        super().__init__(p=p)
        self.mean, self.std = float(mean), float(std)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        x = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        return (x - np.float32(self.mean)) / np.float32(self.std)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "std")


def transforms_pair(image_size: int, augment: bool, seed: int, spec: dict | None = None
                    ) -> tuple[A.Compose, A.Compose]:
    """-> (train, eval) transforms from a config's `transforms` mapping (build_transforms keywords).

    augment=False makes the train transform the eval one (resize + normalisation) with its seed.
    """
    spec = dict(spec or {})
    unknown = set(spec) - set(_SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown transforms option(s) {sorted(unknown)}; allowed: {', '.join(_SPEC_KEYS)}")
    return (build_transforms(image_size, train=augment, seed=seed, **spec),
            build_transforms(image_size, train=False, **spec))


_SPEC_KEYS = ("normalize", "mean", "std", "hflip", "vflip", "rotate", "scale", "shift",
              "brightness_contrast", "gamma", "noise", "elastic")


def reseed(compose: A.Compose, seed: int | None) -> None:
    """Give every step of `compose` one shared random stream from `seed`.

    (albumentations 2.0 seeds each step with the same seed, which correlates their draws.)
    """
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


def unit_slices(image: np.ndarray) -> np.ndarray:
    """(D, H, W) any dtype -> float32, each slice min-max scaled to [0, 1] (a constant slice -> 0)."""
    image = image.astype(np.float32)
    lo = image.min(axis=(1, 2), keepdims=True)
    span = image.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (image - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


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
