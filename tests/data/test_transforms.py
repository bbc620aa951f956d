"""seg.data.transforms against hand-computed results: resize + z-score, the steps each option adds,
flips applied to image and mask alike, unit_slices, and the errors naming the option."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg.data.transforms import PairedDataset, apply_image, build_transforms, transforms_pair, unit_slices


def _ramp() -> np.ndarray:
    """(20, 20) uint8 image: a horizontal ramp 0..190 plus a vertical step (not symmetric)."""
    image = np.tile((np.arange(20) * 10).astype(np.uint8), (20, 1))
    image[10:] += 50
    return image


def _names(compose) -> list[str]:
    return [type(t).__name__ for t in compose.transforms]


def test_eval_transform_is_a_bilinear_resize_then_a_per_image_zscore():
    image = _ramp()
    out = apply_image(build_transforms(16, train=False), image)                 # (16, 16) float32
    resized = cv2.resize(image, (16, 16), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    expected = (resized - resized.mean()) / resized.std()
    assert out.dtype == np.float32
    assert np.allclose(out, expected, atol=1e-3)


def test_a_constant_image_becomes_zeros():
    out = build_transforms(16, train=False)(image=np.full((20, 20), 7, np.uint8))["image"]
    assert np.array_equal(np.asarray(out).reshape(16, 16), np.zeros((16, 16), np.float32))


def test_each_option_adds_its_step_and_zero_strength_leaves_it_out():
    off = dict(hflip=0.0, rotate=0.0, scale=0.0, shift=0.0, brightness_contrast=0.0, gamma=False, noise=False)
    assert _names(build_transforms(32, train=True, **off)) == ["Resize", "Normalize"]
    assert _names(build_transforms(32, train=False, vflip=1.0, elastic=1.0)) == ["Resize", "Normalize"]
    assert _names(build_transforms(32, train=True)) == ["Resize", "HorizontalFlip", "Affine",
                                                         "RandomBrightnessContrast", "RandomGamma", "GaussNoise",
                                                         "Normalize"]
    full = build_transforms(32, train=True, vflip=0.3, elastic=0.2)
    assert _names(full) == ["Resize", "HorizontalFlip", "VerticalFlip", "Affine", "RandomBrightnessContrast",
                            "RandomGamma", "GaussNoise", "ElasticTransform", "Normalize"]
    steps = {type(t).__name__: t for t in full.transforms}
    assert (steps["HorizontalFlip"].p, steps["VerticalFlip"].p, steps["ElasticTransform"].p) == (0.5, 0.3, 0.2)
    assert steps["Affine"].p == 0.7 and steps["RandomBrightnessContrast"].p == 0.5
    assert _names(build_transforms(32, train=True, normalize="window", **off)) == ["Resize", "FixedNormalize"]


@pytest.mark.parametrize("flip,axis", [("hflip", 1), ("vflip", 0)])
def test_a_certain_flip_mirrors_image_and_mask_alike(flip, axis):
    off = dict(hflip=0.0, rotate=0.0, scale=0.0, shift=0.0, brightness_contrast=0.0, gamma=False, noise=False)
    image = _ramp()
    mask = (image > 120).astype(np.uint8)
    out = build_transforms(20, train=True, seed=0, normalize="window", **{**off, flip: 1.0})(image=image, mask=mask)
    assert np.array_equal(out["mask"], np.flip(mask, axis))
    assert np.allclose(np.asarray(out["image"]).reshape(20, 20), np.flip(image, axis) / 255.0, atol=1e-6)


def test_transforms_pair_without_augmentation_is_the_eval_transform_twice():
    train, val = transforms_pair(16, augment=False, seed=0, spec={"normalize": "window"})
    image = _ramp()
    assert _names(train) == _names(val) == ["Resize", "FixedNormalize"]
    assert np.array_equal(train(image=image)["image"], val(image=image)["image"])
    with pytest.raises(ValueError, match=r"unknown transforms option\(s\) \['flip'\]; allowed: normalize, mean"):
        transforms_pair(16, augment=True, seed=0, spec={"flip": 0.5})


def test_paired_dataset_returns_the_transformed_pair_as_tensors():
    class One(PairedDataset):
        def __len__(self):
            return 1

        def load(self, index):
            image = _ramp()
            return image, (image > 120).astype(np.uint8)

    image, mask = One(build_transforms(20, train=False, normalize="window"))[0]
    assert image.shape == (1, 20, 20) and mask.dtype.is_floating_point is False
    assert np.allclose(image[0].numpy(), _ramp() / 255.0, atol=1e-6)
    assert np.array_equal(mask.numpy(), (_ramp() > 120).astype(np.int64))


def test_unit_slices_scale_each_slice_to_0_1_and_a_constant_slice_to_0():
    vol = np.stack([np.array([[2, 4], [6, 10]]), np.full((2, 2), 5), np.array([[-1, 0], [0, 1]])]).astype(np.int16)
    out = unit_slices(vol)
    assert out.dtype == np.float32
    assert np.allclose(out[0], [[0, 0.25], [0.5, 1]]) and np.array_equal(out[1], np.zeros((2, 2)))
    assert np.allclose(out[2], [[0, 0.5], [0.5, 1]])


@pytest.mark.parametrize("kw,message", [
    ({"hflip": 1.5}, "hflip=1.5; expected a probability in [0, 1]"),
    ({"elastic": -0.1}, "elastic=-0.1; expected a probability in [0, 1]"),
    ({"image_size": 4}, "image_size=4; expected an int >= 8"),
    ({"image_size": True}, "image_size=True; expected an int >= 8"),
])
def test_bad_options_are_refused_naming_them(kw, message):
    kw = {"image_size": 16, "train": True, **kw}
    with pytest.raises(ValueError) as err:
        build_transforms(**kw)
    assert message in str(err.value)
