"""seg.data.transforms against hand-computed results: resize + z-score, the steps each option adds,
flips applied to image and mask alike, unit_slices, and the errors naming the option."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg.data.transforms import FixedNormalize, PairedDataset, apply_image, build_transforms, transforms_pair, unit_slices


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
    ({"image_size": 32.0}, "image_size=32.0; expected an int >= 8"),
    ({"vflip": 2}, "vflip=2; expected a probability in [0, 1]"),
    ({"normalize": "fixed", "std": 0.5}, "normalize='fixed' needs mean and a positive std"),
    ({"normalize": "fixed", "mean": 0.2}, "normalize='fixed' needs mean and a positive std"),
    ({"normalize": "fixed", "mean": 0.2, "std": 0.0}, "got mean=0.2, std=0.0"),
    ({"normalize": "fixed", "mean": 0.2, "std": -1.0}, "got mean=0.2, std=-1.0"),
    ({"normalize": "minmax"}, "normalize='minmax'; expected one of"),
])
def test_bad_options_are_refused_naming_them(kw, message):
    kw = {"image_size": 16, "train": True, **kw}
    with pytest.raises(ValueError) as err:
        build_transforms(**kw)
    assert message in str(err.value)


# --- the pipeline as documented in build_transforms' docstring, step by step (mutation testing found the
# augmentation strengths and probabilities unchecked: a changed range trains a different model) ---------

def _steps(compose) -> list[dict]:
    """The Compose's steps as albumentations serialises them (tuples as lists)."""
    import json

    return json.loads(json.dumps(compose.to_dict()["transform"]["transforms"]))


def test_the_training_pipeline_is_the_documented_one_with_its_strengths_and_probabilities():
    steps = _steps(build_transforms(32, train=True, seed=1, vflip=0.1, elastic=0.2))
    names = [s["__class_fullname__"] for s in steps]
    assert names == ["Resize", "HorizontalFlip", "VerticalFlip", "Affine", "RandomBrightnessContrast", "RandomGamma",
                     "GaussNoise", "ElasticTransform", "Normalize"]
    resize, hflip, vflip, affine, bc, gamma, noise, elastic, norm = steps
    assert (resize["height"], resize["width"], resize["interpolation"], resize["mask_interpolation"]) == \
        (32, 32, cv2.INTER_LINEAR, cv2.INTER_NEAREST_EXACT)
    assert (hflip["p"], vflip["p"]) == (0.5, 0.1)
    assert affine["rotate"] == [-15.0, 15.0] and affine["scale"] == {"x": [0.9, 1.1], "y": [0.9, 1.1]}
    assert affine["translate_percent"] == {"x": [-0.05, 0.05], "y": [-0.05, 0.05]} and affine["p"] == 0.7
    assert (affine["interpolation"], affine["mask_interpolation"], affine["border_mode"], affine["fill"],
            affine["fill_mask"]) == (cv2.INTER_LINEAR, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT, 0, 0)
    assert (bc["brightness_limit"], bc["contrast_limit"], bc["p"]) == ([-0.15, 0.15], [-0.15, 0.15], 0.5)
    assert (gamma["gamma_limit"], gamma["p"]) == ([80.0, 125.0], 0.3)
    assert (noise["std_range"], noise["p"]) == ([0.01, 0.04], 0.3)
    assert (elastic["alpha"], elastic["sigma"], elastic["p"]) == (16.0, 1.6, 0.2)       # 0.5 and 0.05 of 32 px
    assert (elastic["interpolation"], elastic["mask_interpolation"], elastic["border_mode"], elastic["fill"],
            elastic["fill_mask"]) == (cv2.INTER_LINEAR, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT, 0, 0)
    assert norm["normalization"] == "image" and norm["p"] == 1.0


@pytest.mark.parametrize("kwargs,left_out", [
    ({"hflip": 0.0}, "HorizontalFlip"), ({"vflip": 0.0}, "VerticalFlip"),
    ({"rotate": 0.0, "scale": 0.0, "shift": 0.0}, "Affine"), ({"brightness_contrast": 0.0}, "RandomBrightnessContrast"),
    ({"gamma": False}, "RandomGamma"), ({"noise": False}, "GaussNoise"), ({"elastic": 0.0}, "ElasticTransform")])
def test_a_step_of_strength_zero_is_left_out_and_only_that_one(kwargs, left_out):
    on = {"vflip": 0.5, "elastic": 0.5}
    full = [s["__class_fullname__"] for s in _steps(build_transforms(32, train=True, **on))]
    names = [s["__class_fullname__"] for s in _steps(build_transforms(32, train=True, **{**on, **kwargs}))]
    assert names == [n for n in full if n != left_out]


@pytest.mark.parametrize("kwargs", [{"rotate": 10.0, "scale": 0.0, "shift": 0.0},
                                    {"rotate": 0.0, "scale": 0.2, "shift": 0.0},
                                    {"rotate": 0.0, "scale": 0.0, "shift": 0.1}])
def test_any_one_geometric_strength_keeps_the_affine_step(kwargs):
    (affine,) = [s for s in _steps(build_transforms(32, train=True, **kwargs)) if s["__class_fullname__"] == "Affine"]
    assert affine["rotate"] == [-kwargs["rotate"], kwargs["rotate"]] or kwargs["rotate"] == 0 == max(map(abs, affine["rotate"]))
    assert affine["scale"]["x"] == [1 - kwargs["scale"], 1 + kwargs["scale"]]
    assert affine["translate_percent"]["x"] == [-kwargs["shift"], kwargs["shift"]]


@pytest.mark.parametrize("normalize,extra,last", [("zscore", {}, "Normalize"),
                                                  ("fixed", {"mean": 0.1, "std": 0.5}, "FixedNormalize"),
                                                  ("window", {}, "FixedNormalize")])
def test_evaluation_is_resize_then_the_normalisation_only(normalize, extra, last):
    steps = _steps(build_transforms(24, train=False, normalize=normalize, **extra))
    assert [s["__class_fullname__"].rsplit(".", 1)[-1] for s in steps] == ["Resize", last]
    image = np.full((10, 10), 102, np.uint8)          # 0.4 on the [0, 1] scale
    out = build_transforms(24, train=False, normalize=normalize, **extra)(image=image, mask=image)["image"]
    expected = {"zscore": 0.0, "fixed": (0.4 - 0.1) / 0.5, "window": 0.4}[normalize]     # 0.6 vs 0.4: apart
    # (zscore comes out float64 from albumentations; PairedDataset and apply_image make it float32)
    assert out.shape == (24, 24) and out.dtype.kind == "f" and np.allclose(out, expected, atol=1e-6)


def test_fixed_normalize_scales_uint8_by_255_and_keeps_float_images():
    norm = FixedNormalize(0.5, 0.25)
    assert np.allclose(norm.apply(np.array([[0, 255]], np.uint8)), [[-2.0, 2.0]])
    assert np.allclose(norm.apply(np.array([[0.5, 1.0]], np.float64)), [[0.0, 2.0]])
    assert norm.apply(np.array([[0.5]], np.float64)).dtype == np.float32
    assert norm.apply(np.array([[7]], np.uint8)).dtype == np.float32


def test_unit_slices_scales_each_slice_by_its_own_range_and_a_constant_slice_to_zero():
    volume = np.stack([np.array([[0.2, 0.7], [0.45, 0.2]]),        # span 0.5 < 1
                       np.array([[10.0, 30.0], [20.0, 10.0]]),      # span 20
                       np.full((2, 2), 5.0)])                      # constant
    out = unit_slices(volume)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[0.0, 1.0], [0.5, 0.0]], atol=1e-6)
    np.testing.assert_allclose(out[1], [[0.0, 1.0], [0.5, 0.0]], atol=1e-6)
    assert np.array_equal(out[2], np.zeros((2, 2)))


def test_the_smallest_image_size_8_is_taken():
    out = build_transforms(8, train=False)(image=np.zeros((20, 20), np.uint8), mask=np.zeros((20, 20), np.uint8))
    assert out["image"].shape == out["mask"].shape == (8, 8)
