"""seg.metrics against MONAI's reference implementation (monai.metrics, a dev-only dependency).

Like for like: MONAI's Euclidean HD / HD95 / ASSD without subvoxels take the boundary as the mask
XOR its binary erosion with the connectivity-1 cross (scipy's default structure, border value 0),
after cropping to the union's bounding box plus a one-voxel zero margin, and measure exact
Euclidean distances in mm (a k-d tree on the spacing-scaled edge coordinates, on CPU), in float32.
That is our definition, so wherever both masks are non-empty every value agrees within 1e-4 mm
(float32 rounding). Where a mask is empty MONAI returns NaN / inf, pinned below next to our
contract's values (docs/metrics.md, "Metric contract").
"""
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")

from monai.metrics.utils import get_edge_surface_distance, get_mask_edges  # noqa: E402

import seg.metrics  # noqa: E402
from seg.metrics import (_edge_map, assd, case_metrics, dice, empty_penalty, hausdorff, iou,  # noqa: E402
                         structure_rows, surface_distances)

TOL = 1e-4
SPACING = {2: (0.7, 1.3), 3: (10.0, 1.5, 1.5)}


def blob(rng, shape, sigma, fill):
    """Smoothed noise thresholded to about `fill` of the image: organ-like (large sigma) to speckled."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="constant")
    return noise > np.quantile(noise, 1.0 - fill)


def random_pair(rng, shape):
    """(pred, gt), both non-empty: independent blobs, perturbed copies, single pixels, border touchers."""
    kind = rng.integers(6)
    gt = blob(rng, shape, rng.uniform(0.8, 6.0), rng.uniform(0.01, 0.5))
    if kind == 0:                                   # unrelated prediction
        pred = blob(rng, shape, rng.uniform(0.8, 6.0), rng.uniform(0.01, 0.5))
    elif kind == 1:                                 # shifted and perturbed, as a model would get it wrong
        shift = tuple(int(s) for s in rng.integers(-3, 4, size=len(shape)))
        pred = np.roll(gt, shift, axis=tuple(range(len(shape)))) ^ blob(rng, shape, 1.0, 0.02)
    elif kind == 2:                                 # tiny: a single pixel against a blob, or two pixels
        pred = np.zeros(shape, bool)
        pred[tuple(rng.integers(0, n) for n in shape)] = True
        if rng.random() < 0.5:
            gt = np.zeros(shape, bool)
            gt[tuple(rng.integers(0, n) for n in shape)] = True
    elif kind == 3:                                 # touching the image border on some faces
        gt = gt.copy()
        axis = int(rng.integers(len(shape)))
        gt[(slice(None),) * axis + (slice(0, 2),)] = True
        pred = ndimage.binary_dilation(gt, iterations=int(rng.integers(1, 3)))
        pred[(slice(None),) * axis + (slice(-1, None),)] = True
    elif kind == 4:                                 # large structure, eroded prediction with a false positive
        gt = blob(rng, shape, rng.uniform(3.0, 8.0), rng.uniform(0.4, 0.9))
        pred = ndimage.binary_erosion(gt)
        pred[tuple(rng.integers(0, n) for n in shape)] = True
    else:                                           # speckle
        pred = blob(rng, shape, 0.5, rng.uniform(0.01, 0.1))
    if not pred.any():
        pred[tuple(n // 2 for n in shape)] = True
    if not gt.any():
        gt[tuple(n // 3 for n in shape)] = True
    return pred, gt


def pairs(seed, n, shape):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = tuple(int(rng.integers(max(2, s // 2), s + 1)) for s in shape)   # random image sizes
        out.append(random_pair(rng, size))
    return out


def monai_values(pred, gt, spacing):
    """MONAI's dice, iou, hd, hd95, assd of one pair of binary masks (a 1-image, 1-channel batch)."""
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    g = torch.from_numpy(gt[None, None].astype(np.float32))
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # MONAI warns on empty masks
        return {
            "dice": monai_metrics.compute_dice(p, g, include_background=True).item(),
            "iou": monai_metrics.compute_iou(p, g, include_background=True).item(),
            "hd": monai_metrics.compute_hausdorff_distance(p, g, include_background=True, spacing=sp).item(),
            "hd95": monai_metrics.compute_hausdorff_distance(p, g, include_background=True, percentile=95,
                                                             spacing=sp).item(),
            "assd": monai_metrics.compute_average_surface_distance(p, g, include_background=True, symmetric=True,
                                                                   spacing=sp).item(),
        }


CASES = [(2, pairs(0, 130, (72, 64))), (3, pairs(1, 90, (10, 40, 36)))]


@pytest.mark.parametrize("ndim,cases", CASES, ids=["2d", "3d"])
def test_agrees_with_monai_where_both_non_empty(ndim, cases):
    spacing = SPACING[ndim]
    worst = dict.fromkeys(("dice", "iou", "hd", "hd95", "assd"), 0.0)
    for pred, gt in cases:
        ours = case_metrics(pred, gt, spacing)
        ref = monai_values(pred, gt, spacing)
        for key, value in ref.items():
            assert math.isfinite(value) and math.isfinite(ours[key]), (key, value, ours[key])
            worst[key] = max(worst[key], abs(ours[key] - value))
        assert ours["hd95"] == hausdorff(pred, gt, spacing, 95) and ours["assd"] == assd(pred, gt, spacing)
    assert all(w <= TOL for w in worst.values()), worst
    assert len(cases) >= 90


# settings of seg.metrics forcing each of our exact distance methods
METHODS = {"kdtree": {"_SCAN_DENSITY": math.inf, "_BRUTE_PAIRS": 0},
           "scan": {"_SCAN_DENSITY": 0.0, "_BRUTE_PAIRS": 0},
           "edt": {"_SCAN_DENSITY": 0.0, "_BRUTE_PAIRS": 0, "_SCAN_BUDGET": 0, "_EDT_COST": 0.0}}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("ndim,cases", CASES, ids=["2d", "3d"])
def test_boundaries_and_directed_distances_are_monais(ndim, cases, method, monkeypatch):
    """Same boundary elements (MONAI's get_mask_edges, no crop) and the same multiset of directed
    distances (its get_edge_surface_distance, with crop, no subvoxels) in both directions, with
    each of our exact distance methods forced (k-d tree queries / nearest-first scan / distance
    transform)."""
    for name, value in METHODS[method].items():
        monkeypatch.setattr(seg.metrics, name, value)
    spacing = SPACING[ndim]
    for pred, gt in cases[:40]:
        edges_pred, edges_gt = get_mask_edges(pred, gt, crop=False)
        assert np.array_equal(_edge_map(pred), edges_pred) and np.array_equal(_edge_map(gt), edges_gt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, (to_gt, to_pred), _ = get_edge_surface_distance(
                torch.from_numpy(pred), torch.from_numpy(gt), spacing=[float(s) for s in spacing],
                use_subvoxels=False, symmetric=True)
        ours = surface_distances(pred, gt, spacing)
        for mine, theirs in zip(ours, (to_gt, to_pred)):
            assert mine.shape == tuple(theirs.shape)
            np.testing.assert_allclose(np.sort(mine), np.sort(theirs.numpy().astype(np.float64)), rtol=0, atol=TOL)


@pytest.mark.parametrize("shape", [(12, 10), (4, 12, 10)], ids=["2d", "3d"])
def test_empty_cases_monai_value_next_to_ours(shape):
    spacing = SPACING[len(shape)]
    empty, mask = np.zeros(shape, bool), np.zeros(shape, bool)
    mask[(slice(1, 4),) * len(shape)] = True
    diagonal = empty_penalty(shape, spacing)
    nan, inf = math.nan, math.inf
    # case: (pred, gt) -> MONAI 1.6.1's (dice, iou, hd, hd95, assd) and ours
    expected = {
        "both empty": ((empty, empty), (nan, nan, nan, nan, nan), (nan, nan, nan, nan, nan)),
        # a missed structure: MONAI's HD is inf but its HD95 is NaN (torch.quantile of all-inf), so it
        # drops out of MONAI's mean; ours is the image diagonal
        "pred empty": ((empty, mask), (0.0, 0.0, inf, nan, inf), (0.0, 0.0, diagonal, diagonal, diagonal)),
        # a false positive on an empty image: MONAI's Dice / IoU are NaN (ignore_empty=True, its default;
        # 0 with ignore_empty=False), so it is never counted against the model; ours is 0
        "gt empty": ((mask, empty), (nan, nan, inf, nan, inf), (0.0, 0.0, diagonal, diagonal, diagonal)),
    }
    for case, ((pred, gt), monai_expected, ours_expected) in expected.items():
        ref = monai_values(pred, gt, spacing)
        ours = case_metrics(pred, gt, spacing)
        for key, want_monai, want_ours in zip(("dice", "iou", "hd", "hd95", "assd"), monai_expected, ours_expected):
            got_monai, got_ours = ref[key], ours[key]
            assert got_monai == want_monai or (math.isnan(want_monai) and math.isnan(got_monai)), (case, key, got_monai)
            assert got_ours == pytest.approx(want_ours, nan_ok=True), (case, key, got_ours)
            assert not math.isinf(got_ours)
        assert (dice(pred, gt), iou(pred, gt)) == pytest.approx(ours_expected[:2], nan_ok=True)


def test_structure_rows_agree_with_monai_per_class():
    """Multiclass label maps: every structure's row matches MONAI on that class's one-hot channel."""
    rng = np.random.default_rng(2)
    for ndim, shape in ((2, (64, 56)), (3, (8, 40, 36))):
        spacing, names = SPACING[ndim], ["a", "b", "c"]
        for _ in range(8):
            labels = []
            for _ in range(2):
                lab = np.zeros(shape, np.uint8)
                for k in (1, 2, 3):
                    lab[blob(rng, shape, rng.uniform(1.0, 5.0), rng.uniform(0.02, 0.3))] = k
                labels.append(lab)
            pred, gt = labels
            for row in structure_rows("c", pred, gt, names, spacing):
                k = names.index(row["structure"]) + 1
                ref = monai_values(pred == k, gt == k, spacing)
                for key, value in ref.items():
                    assert row[key] == pytest.approx(value, abs=TOL, rel=0), (row["structure"], key)
