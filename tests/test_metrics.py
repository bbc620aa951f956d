"""Metric semantics of docs/metrics.md, pinned on hand-computed cases (seg/metrics.py)."""
import math

import numpy as np
import pytest

from seg.metrics import (CASE_COLUMNS, assd, case_metrics, dice, empty_penalty, hausdorff, hd95_pooled, iou,
                         structure_rows, summarize, surface_distances)


def square(shape, r0, c0, size):
    m = np.zeros(shape, bool)
    m[r0:r0 + size, c0:c0 + size] = True
    return m


def test_both_empty_is_nan_for_every_metric():
    z = np.zeros((8, 8), bool)
    assert math.isnan(dice(z, z)) and math.isnan(iou(z, z))
    assert math.isnan(hausdorff(z, z)) and math.isnan(hausdorff(z, z, percentile=95)) and math.isnan(assd(z, z))


@pytest.mark.parametrize("swap", [False, True])
def test_one_empty_is_zero_overlap_and_diagonal_penalty(swap):
    a, b = square((10, 20), 2, 2, 3), np.zeros((10, 20), bool)
    if swap:
        a, b = b, a
    spacing = (2.0, 1.0)                       # extent 20 mm x 20 mm
    assert dice(a, b) == 0 and iou(a, b) == 0
    diag = math.sqrt(20 ** 2 + 20 ** 2)
    assert empty_penalty((10, 20), spacing) == pytest.approx(diag)
    for value in (hausdorff(a, b, spacing), hausdorff(a, b, spacing, 95), assd(a, b, spacing)):
        assert value == pytest.approx(diag) and math.isfinite(value)


def test_shifted_squares_hand_values():
    gt, pred = square((16, 16), 4, 4, 4), square((16, 16), 4, 6, 4)   # shifted by 2 columns
    assert dice(pred, gt) == pytest.approx(2 * 8 / 32)
    assert iou(pred, gt) == pytest.approx(8 / 24)
    assert hausdorff(pred, gt) == pytest.approx(2.0)
    assert hausdorff(pred, gt, spacing=(1.0, 0.5)) == pytest.approx(1.0)  # columns are 0.5 mm


def test_anisotropic_spacing_3d():
    gt = np.zeros((5, 12, 12), bool)
    gt[1:3, 3:8, 3:8] = True
    pred = np.roll(gt, 1, axis=0)                                          # one slice up
    assert hausdorff(pred, gt, spacing=(10.0, 1.5, 1.5)) == pytest.approx(10.0)


def test_hd95_ignores_a_single_outlier_but_hd_does_not():
    gt = square((64, 64), 10, 10, 20)
    pred = gt.copy()
    pred[60, 60] = True                                                    # far-away false positive pixel
    assert hausdorff(pred, gt) == pytest.approx(math.hypot(60 - 29, 60 - 29))
    assert hausdorff(pred, gt, percentile=95) == pytest.approx(0.0)
    # boundary: 76 gt boundary pixels at distance 0; the outlier adds one distance to 77 pred boundary pixels
    assert assd(pred, gt) == pytest.approx(math.hypot(31, 31) / (77 + 76))


def test_hd_is_symmetric_and_crop_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random((40, 50)) > 0.97, rng.random((40, 50)) > 0.97
        full_a, full_b = np.zeros((80, 90), bool), np.zeros((80, 90), bool)
        full_a[20:60, 20:70], full_b[20:60, 20:70] = a, b
        assert hausdorff(a, b) == pytest.approx(hausdorff(b, a))
        assert hausdorff(full_a, full_b, percentile=95) == pytest.approx(hausdorff(a, b, percentile=95))


def test_case_metrics_agree_with_single_functions():
    gt, pred = square((32, 32), 5, 5, 10), square((32, 32), 7, 4, 9)
    m = case_metrics(pred, gt, (0.7, 1.3))
    assert m["dice"] == dice(pred, gt) and m["iou"] == iou(pred, gt)
    assert m["hd"] == pytest.approx(hausdorff(pred, gt, (0.7, 1.3)))
    assert m["hd95"] == pytest.approx(hausdorff(pred, gt, (0.7, 1.3), 95))
    assert m["assd"] == pytest.approx(assd(pred, gt, (0.7, 1.3)))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(square((8, 8), 1, 1, 2), square((8, 8), 2, 2, 2), spacing=(1.0,))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff(square((8, 8), 1, 1, 2), square((8, 8), 2, 2, 2), percentile=150)


def test_summarize_nanmean_counts_and_false_positive_rate():
    gt = [np.zeros((8, 8), np.uint8) for _ in range(3)]
    pred = [np.zeros((8, 8), np.uint8) for _ in range(3)]
    gt[0][2:5, 2:5] = 1
    pred[0][2:5, 2:5] = 1          # case a: perfect
    pred[1][0, 0] = 1              # case b: empty gt, false positive -> dice 0
    #                                case c: both empty -> NaN, excluded and counted
    rows = []
    for i in range(3):
        rows += structure_rows(f"c{i}", pred[i], gt[i], ["lesion"])
    s = summarize(rows, ["lesion"])
    assert s["dice"] == pytest.approx(0.5) and s["dice_lesion"] == pytest.approx(0.5)
    assert s["dice_n"] == 2 and s["dice_lesion_n"] == 2
    assert s["fpr_empty"] == pytest.approx(0.5)    # 1 of 2 empty-gt cases got foreground
    assert s["fpr_empty_lesion"] == pytest.approx(0.5)
    assert s["hd95_lesion"] == pytest.approx((0 + empty_penalty((8, 8))) / 2)
    assert s["n_cases"] == 3


def test_multiclass_rows_skip_background():
    gt = np.zeros((10, 10), np.uint8)
    gt[1:4, 1:4], gt[5:9, 5:9] = 1, 3
    rows = structure_rows("x", gt, gt, ["rv", "myo", "lv"])
    assert [r["structure"] for r in rows] == ["rv", "myo", "lv"]
    s = summarize(rows, ["rv", "myo", "lv"])
    assert s["dice_rv"] == 1 and s["dice_lv"] == 1 and math.isnan(s["dice_myo"]) and s["dice_myo_n"] == 0
    assert s["dice"] == 1.0                          # mean over structures with valid cases


def random_masks(rng, shape, n):
    """n random mask pairs: thresholded smoothed noise of varied smoothness and fill, touching the border."""
    from scipy import ndimage
    out = []
    for _ in range(n):
        pair = []
        for _ in range(2):
            noise = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(0.5, 4.0))
            pair.append(noise > np.quantile(noise, rng.uniform(0.5, 0.995)))
        out.append(tuple(pair))
    return out


# settings of seg.metrics forcing each exact distance method (and the scan's fallbacks)
SCAN = {"_SCAN_DENSITY": 0.0, "_BRUTE_PAIRS": 0}
METHODS = {
    "k-d tree": {"_SCAN_DENSITY": math.inf, "_BRUTE_PAIRS": 0},
    "all pairs": {"_SCAN_DENSITY": math.inf, "_BRUTE_PAIRS": 10 ** 9},
    "scan": SCAN,
    "scan, second round from the start": {**SCAN, "_SCAN_FIRST": 1},
    "scan, short reach then k-d tree": {**SCAN, "_SCAN_OFFSETS": 6, "_EDT_COST": math.inf},
    "scan, short reach then distance transform": {**SCAN, "_SCAN_OFFSETS": 6, "_EDT_COST": 0.0},
    "distance transform": {**SCAN, "_SCAN_BUDGET": 0, "_EDT_COST": 0.0},
}


@pytest.mark.parametrize("shape,spacing", [((40, 48), (0.7, 1.3)), ((6, 30, 26), (10.0, 1.5, 1.5)),
                                           ((12, 14, 16), (1.0, 1.0, 1.0)), ((30, 5), (0.5, 3.0))])
def test_every_distance_method_gives_the_same_distances(shape, spacing, monkeypatch):
    import seg.metrics as metrics
    for pred, gt in random_masks(np.random.default_rng(1), shape, 15):
        results = []
        for settings in METHODS.values():
            with monkeypatch.context() as m:
                for name, value in settings.items():
                    m.setattr(metrics, name, value)
                results.append(metrics.surface_distances(pred, gt, spacing))
        for other in results[1:]:
            for a, b in zip(results[0], other):    # same elements, same (raster) order
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def test_percentiles_are_numpys_exactly():
    """HD95 (and any percentile) is the max of np.percentile over the two directed distance sets."""
    for pred, gt in random_masks(np.random.default_rng(4), (30, 36), 20):
        d = surface_distances(pred, gt, (0.7, 1.3))
        for q in (0, 5, 50, 95, 99.5, 100, 100 / 3):
            assert hausdorff(pred, gt, (0.7, 1.3), q) == max(np.percentile(d[0], q), np.percentile(d[1], q))
        assert hausdorff(pred, gt, (0.7, 1.3)) == max(d[0].max(), d[1].max())


def test_crop_is_exact_in_3d_and_at_the_border():
    rng = np.random.default_rng(2)
    for pred, gt in random_masks(rng, (5, 20, 24), 10):
        big_p, big_g = np.zeros((9, 30, 30), bool), np.zeros((9, 30, 30), bool)
        big_p[2:7, 3:23, 6:30], big_g[2:7, 3:23, 6:30] = pred, gt       # touches the last column's border
        for percentile in (None, 95):
            assert hausdorff(big_p, big_g, (10.0, 1.5, 1.5), percentile) == pytest.approx(
                hausdorff(pred, gt, (10.0, 1.5, 1.5), percentile))
        assert assd(big_p, big_g, (10.0, 1.5, 1.5)) == pytest.approx(assd(pred, gt, (10.0, 1.5, 1.5)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.uint64])
@pytest.mark.parametrize("shape,spacing", [((40, 48), (0.7, 1.3)), ((6, 30, 26), (10.0, 1.5, 1.5))])
def test_structure_rows_equal_case_metrics_per_structure(shape, spacing, dtype):
    """All structures at once give what each structure's binary masks give on their own; labels
    outside 1..len(class_names) (here 4 and 255: unscored) count as background of every structure."""
    rng = np.random.default_rng(3)
    names = ["rv", "myo", "lv"]
    masks = random_masks(rng, shape, 10)
    for i in range(0, 10, 5):
        maps = []
        for side in (0, 1):
            lab = np.zeros(shape, dtype)
            for k, pair in enumerate(masks[i:i + 5], start=1):
                lab[pair[side]] = k if k <= 4 else 255
            maps.append(lab)
        pred, gt = maps
        gt[gt == 2] = 0                                     # myo: an empty-gt structure in this case
        rows = structure_rows("c", pred, gt, names, spacing)
        for k, row in enumerate(rows, start=1):
            p, g = pred == k, gt == k
            assert row["structure"] == names[k - 1]
            assert (row["gt_empty"], row["pred_empty"]) == (not g.any(), not p.any())
            expected = case_metrics(p, g, spacing)
            assert row["dice"] == expected["dice"] or math.isnan(row["dice"]) and math.isnan(expected["dice"])
            assert row["iou"] == expected["iou"] or math.isnan(row["iou"]) and math.isnan(expected["iou"])
            for key in ("hd", "hd95", "hd95_pooled", "assd"):
                assert row[key] == pytest.approx(expected[key], abs=1e-9, nan_ok=True)
        no_distances = structure_rows("c", pred, gt, names, spacing, distances=False)
        assert [set(r) for r in no_distances] == [{"case_id", "structure", "gt_empty", "pred_empty", "dice", "iou"}] * 3


def test_structure_rows_bad_input_is_named():
    with pytest.raises(ValueError, match="same shape"):
        structure_rows("c", np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), ["a"])
    with pytest.raises(ValueError, match="spacing"):
        structure_rows("c", square((8, 8), 1, 1, 2), square((8, 8), 2, 2, 2), ["a"], spacing=(1.0,))


def test_hd95_pooled_by_hand_and_beside_hd95():
    """Pooled 95th percentile of both directed sets (medpy) vs the max of the two directed ones (MONAI)."""
    gt = np.zeros((1, 12), bool)
    gt[0, 0] = True                                          # one boundary element at x = 0
    pred = np.zeros((1, 12), bool)
    pred[0, [0, 10]] = True                                  # at 0 and 10: pred -> gt {0, 10}, gt -> pred {0}
    # pooled {0, 10, 0}: linear percentile at position 0.95 * 2 = 1.9 between sorted 0, 0, 10 -> 0 + 0.9 * 10 = 9
    assert hd95_pooled(pred, gt) == pytest.approx(9.0)
    # max of directed: pred -> gt {0, 10}: 0.95 * 1 -> 9.5; gt -> pred {0}: 0
    assert hausdorff(pred, gt, percentile=95) == pytest.approx(9.5)
    assert hd95_pooled(pred, gt, spacing=(1.0, 0.5)) == pytest.approx(4.5)       # spacing scales distances
    z = np.zeros((8, 8), bool)
    assert math.isnan(hd95_pooled(z, z))
    assert hd95_pooled(square((8, 8), 1, 1, 2), z, (2.0, 1.0)) == empty_penalty((8, 8), (2.0, 1.0))
    assert case_metrics(pred, gt)["hd95_pooled"] == pytest.approx(9.0)


def test_case_rows_and_summary_carry_hd95_pooled():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6] = 1
    pred = np.zeros((10, 10), np.uint8)
    pred[3:8, 2:6] = 1
    rows = structure_rows("a.png", pred, gt, ["lesion"], (0.5, 0.5))
    assert tuple(rows[0]) == CASE_COLUMNS                   # the order of cases.csv's columns
    assert rows[0]["hd95_pooled"] == pytest.approx(hd95_pooled(pred == 1, gt == 1, (0.5, 0.5)))
    s = summarize(rows, ["lesion"])
    assert s["hd95_pooled"] == pytest.approx(rows[0]["hd95_pooled"]) and s["hd95_pooled_n"] == 1


def _row(case, structure, dice, gt_empty=False, pred_empty=False):
    return {"case_id": case, "structure": structure, "dice": dice, "gt_empty": gt_empty, "pred_empty": pred_empty}


def test_summarize_headline_is_the_mean_of_structure_means_not_the_pooled_mean():
    """Structures with different numbers of valid cases: a = 1.0, 0.5, 0.0 (mean 0.5), b = 0.9 and two NaN
    (empty ground truth, empty prediction), c = NaN only. Headline (0.5 + 0.9) / 2 = 0.7, not the pooled
    (1.0 + 0.5 + 0.0 + 0.9) / 4 = 0.6; false-positive rate on empty ground truth 1/1 for a, 0/2 for b, 0/1 for c."""
    from seg.metrics import summarize

    rows = [_row("c1", "a", 1.0), _row("c2", "a", 0.5), _row("c3", "a", 0.0, gt_empty=True),
            _row("c1", "b", 0.9), _row("c2", "b", math.nan, True, True), _row("c3", "b", math.nan, True, True),
            _row("c1", "c", math.nan, True, True)]
    s = summarize(rows, ["a", "b", "c"], metrics=("dice",))
    assert s["dice"] == pytest.approx(0.7)
    assert s["dice_a"] == pytest.approx(0.5) and s["dice_b"] == pytest.approx(0.9) and math.isnan(s["dice_c"])
    assert s["dice_a_std"] == pytest.approx(math.sqrt(1 / 6)) and s["dice_b_std"] == 0.0
    assert (s["dice_a_n"], s["dice_b_n"], s["dice_c_n"], s["dice_n"]) == (3, 1, 0, 4)
    assert (s["fpr_empty_a"], s["fpr_empty_b"], s["fpr_empty_c"]) == (1.0, 0.0, 0.0)
    assert s["fpr_empty"] == pytest.approx(0.25) and s["n_cases"] == 3


def test_summarize_without_empty_cases_or_valid_values_gives_nan_not_zero():
    from seg.metrics import summarize

    s = summarize([_row("c1", "a", math.nan, gt_empty=False, pred_empty=True)], ["a"], metrics=("dice",))
    assert math.isnan(s["dice"]) and math.isnan(s["dice_a"]) and s["dice_n"] == 0
    assert math.isnan(s["fpr_empty_a"]) and math.isnan(s["fpr_empty"]) and s["n_cases"] == 1


def _organ(rng, shape, centre, radii, wobble=0.08):
    from scipy import ndimage
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 4.0)
    return r2 < 1.0 + wobble * noise / noise.std()


@pytest.mark.parametrize("percentile", [None, 95, 99, 50, 100 / 3, 0])
def test_hausdorff_on_large_sparse_contours_is_numpys_percentile_exactly(percentile):
    """Large sparse contours (the k-d tree path), with and without far false positives and a missed second
    structure: the value is exactly max / np.percentile over all of surface_distances, bit for bit, both
    ways round (a faster HD path must keep this)."""
    from seg import metrics

    rng = np.random.default_rng(7)
    checked = 0
    for trial in range(12):
        shape = (256, 256)
        radii = rng.uniform(30, 115, 2)
        gt = _organ(rng, shape, (128, 128), radii)
        pred = _organ(rng, shape, (128 + rng.uniform(-6, 6), 128 + rng.uniform(-6, 6)),
                      radii * rng.uniform(0.9, 1.1))
        if trial % 3 == 0:                                   # a false-positive blob far from the organ
            pred |= _organ(rng, shape, (20 + rng.uniform(0, 10), 30), (3.0, 3.0), 0.0)
        if trial % 4 == 1:                                   # a second, missed structure in the ground truth
            gt |= _organ(rng, shape, (235, 230), (8.0, 12.0), 0.0)
        spacing = (0.7, 1.3) if trial % 2 else (1.0, 1.0)
        d = surface_distances(pred, gt, spacing)
        if percentile is None:
            expected = max(d[0].max(), d[1].max())
        else:
            expected = max(np.percentile(d[0], percentile), np.percentile(d[1], percentile))
        assert hausdorff(pred, gt, spacing, percentile) == expected
        assert hausdorff(gt, pred, spacing, percentile) == expected
        box = metrics._bbox(pred | gt)
        checked += max(d[0].size, d[1].size) * min(d[0].size, d[1].size) > metrics._BRUTE_PAIRS
        assert box is not None
    assert checked >= 10                                     # the cases do take the k-d tree path


def test_percentile_rounds_as_numpy_does_on_either_side_of_the_midpoint():
    """np.percentile interpolates from the upper value when gamma >= 0.5 (b - diff * (1 - gamma)); the
    other formula differs in the last bit: [0.1, 0.7] at the median gives 0.39999999999999997, not 0.4."""
    from seg.metrics import _percentile

    assert _percentile(np.array([0.1, 0.7]), 50) == np.percentile([0.1, 0.7], 50) == 0.39999999999999997
    rng = np.random.default_rng(9)
    for _ in range(300):
        v = rng.random(int(rng.integers(2, 40))) * 97.3
        for q in (5, 50, 95, 99, 100 / 3):
            assert _percentile(v, q) == np.percentile(v, q)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint64, np.uint16, np.int8])
def test_label_maps_of_any_dtype_in_range_or_negative_score_as_their_integer_labels(dtype):
    """Float maps (a resized prediction), uint64 and small integer maps whose labels are all in 0..K, and
    negative labels (-1: 'ignore' in some exports, background here): the rows equal those of the int64 map."""
    rng = np.random.default_rng(5)
    names = ["rv", "myo", "lv"]
    gt64 = np.zeros((24, 28), np.int64)
    gt64[3:12, 4:15], gt64[8:20, 10:22], gt64[15:22, 2:9] = 1, 2, 3
    pred64 = np.clip(gt64 + rng.integers(-1, 2, gt64.shape) * (rng.random(gt64.shape) < 0.2), 0, 3)
    pred64[0, :5] = 0
    want = structure_rows("c", pred64, gt64, names, (0.8, 1.1))
    pred, gt = pred64.astype(dtype), gt64.astype(dtype)
    if np.issubdtype(dtype, np.signedinteger):
        pred[0, :5] = -1                                        # background where pred64 is 0 too
    got = structure_rows("c", pred, gt, names, (0.8, 1.1))
    if np.issubdtype(dtype, np.signedinteger):              # a one-pixel map too
        assert structure_rows("c", np.full((1, 1), -1, dtype), np.ones((1, 1), dtype), ["a"], distances=False)[0][
            "dice"] == 0.0
    for w, g in zip(want, got):
        assert w.keys() == g.keys()
        for key in w:
            assert g[key] == w[key] or (isinstance(w[key], float) and math.isnan(w[key]) and math.isnan(g[key])), key


def test_structure_rows_empty_prediction_empty_structure_and_whole_image_masks_by_hand():
    spacing = (1.0, 2.0)                                        # a 10 x 10 image: 10 mm x 20 mm
    penalty = math.sqrt(10 ** 2 + 20 ** 2)
    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6] = 1                                            # lv: 16 pixels; rv: nowhere
    pred = np.zeros_like(gt)
    pred[7:9, 7:9] = 2                                          # rv predicted (gt empty), lv missed
    lv, rv = structure_rows("c", pred, gt, ["lv", "rv"], spacing)
    assert (lv["gt_empty"], lv["pred_empty"]) == (False, True)
    assert (lv["dice"], lv["iou"]) == (0.0, 0.0) and lv["hd95"] == lv["hd"] == pytest.approx(penalty)
    assert (rv["gt_empty"], rv["pred_empty"]) == (True, False) and rv["dice"] == 0.0
    both_empty = structure_rows("c", pred, gt, ["lv", "rv", "myo"], spacing)[2]
    assert both_empty["gt_empty"] and both_empty["pred_empty"]
    assert all(math.isnan(both_empty[k]) for k in ("dice", "iou", "hd", "hd95", "hd95_pooled", "assd"))
    one_pixel = np.zeros_like(gt)
    one_pixel[3, 3] = 1
    row = structure_rows("c", one_pixel, gt, ["lv"], spacing)[0]
    assert row["pred_empty"] is False and row["dice"] == pytest.approx(2 / 17)
    # a prediction (or a ground truth) covering the whole image: every pixel counts, none is cropped away
    full = np.ones_like(gt)
    row = structure_rows("c", full, gt, ["lv"], spacing)[0]
    assert (row["dice"], row["iou"]) == (pytest.approx(2 * 16 / 116), pytest.approx(16 / 100))
    row = structure_rows("c", gt, full, ["lv"], spacing)[0]
    assert (row["dice"], row["iou"]) == (pytest.approx(2 * 16 / 116), pytest.approx(16 / 100))
    assert row["hd"] == pytest.approx(case_metrics(gt.astype(bool), full.astype(bool), spacing)["hd"])
