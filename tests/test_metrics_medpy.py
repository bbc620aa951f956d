"""hd95_pooled against medpy's `hd95` (medpy.metric.binary, a test-only dependency).

medpy takes the boundary as the mask XOR its binary erosion with the connectivity-1 cross, measures
the directed distances with scipy's distance transform at the voxel spacing, pools both directed sets
and takes np.percentile(..., 95): our `hd95_pooled`. Checked on random anisotropic 2D and 3D cases;
where a mask is empty medpy raises and our contract gives NaN / the penalty (docs/metrics.md).
"""
import numpy as np
import pytest
from scipy import ndimage

medpy_binary = pytest.importorskip("medpy.metric.binary")

from seg.metrics import hausdorff, hd95_pooled, structure_rows  # noqa: E402

SPACING = {2: (0.7, 1.3), 3: (10.0, 1.5, 0.9)}


def blob(rng, shape, sigma, fill):
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="constant")
    return noise > np.quantile(noise, 1.0 - fill)


@pytest.mark.parametrize("ndim", [2, 3])
def test_hd95_pooled_equals_medpy_on_random_anisotropic_cases(ndim):
    rng = np.random.default_rng(13 + ndim)
    shape = (48, 40) if ndim == 2 else (6, 32, 28)
    differ = 0
    for _ in range(25):
        gt = blob(rng, shape, rng.uniform(0.8, 4.0), rng.uniform(0.02, 0.4))
        pred = blob(rng, shape, rng.uniform(0.8, 4.0), rng.uniform(0.02, 0.4)) if rng.random() < 0.5 else \
            ndimage.binary_dilation(gt, iterations=int(rng.integers(1, 3))) ^ (rng.random(shape) < 0.01)
        if not pred.any() or not gt.any():
            continue
        expected = medpy_binary.hd95(pred, gt, voxelspacing=SPACING[ndim])
        assert hd95_pooled(pred, gt, SPACING[ndim]) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        label = structure_rows("c", pred.astype(np.uint8), gt.astype(np.uint8), ["x"], SPACING[ndim])[0]
        assert label["hd95_pooled"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        differ += not np.isclose(expected, hausdorff(pred, gt, SPACING[ndim], 95))
    assert differ > 0        # the two definitions are not the same number on these cases


def test_a_false_positive_blob_separates_the_two_definitions():
    """A far false-positive blob: MONAI's max of directed 95th percentiles sees it, the pooled one less."""
    gt = np.zeros((64, 64), bool)
    gt[10:30, 10:30] = True
    pred = gt.copy()
    pred[50:56, 50:56] = True
    pooled = hd95_pooled(pred, gt, (1.0, 1.0))
    assert pooled == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=(1.0, 1.0)))
    assert hausdorff(pred, gt, (1.0, 1.0), 95) > pooled
