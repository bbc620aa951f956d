"""Segmentation metrics with defined semantics on empty masks (pure numpy + scipy).

The contract (DESIGN.md), per image (2D) or volume (3D), per foreground structure:

    case                    Dice, IoU        HD, HD95, ASSD (mm)
    both empty              NaN (counted)    NaN (counted)
    one empty, other not    0                diagonal of the image extent in mm
    both non-empty          usual            symmetric, between boundary pixels

Boundary pixels are mask XOR its erosion with the connectivity-1 cross (as MONAI and medpy);
HD95 is the max of the two directed 95th percentiles. Distances use the pixel / voxel spacing
(mm) of the array axes; spacing None means 1 per axis (distances in pixels).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

METRICS = ("dice", "iou", "hd", "hd95", "assd")
REDUCTIONS = ("none", "mean", "sum")


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or 3D volume, got {pred.ndim} dimensions")
    return pred, gt


def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    spacing = np.asarray(spacing, dtype=float)
    if spacing.shape != (ndim,) or np.any(spacing <= 0):
        raise ValueError(f"spacing={tuple(spacing.tolist())}; expected {ndim} positive values (mm per axis)")
    return spacing


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P & G| / (|P| + |G|); NaN when both are empty."""
    pred, gt = _pair(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P & G| / |P | G|; NaN when both are empty."""
    pred, gt = _pair(pred, gt)
    union = int(np.logical_or(pred, gt).sum())
    return float("nan") if union == 0 else int(np.logical_and(pred, gt).sum()) / union


def empty_penalty(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """The distance given when exactly one mask is empty: the image extent's diagonal in mm."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, _spacing(spacing, len(shape))))))


def _boundary(mask: np.ndarray) -> np.ndarray:
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=cross)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed boundary distances (pred -> gt, gt -> pred) in mm; None unless both non-empty.

    Works on the bounding box of the two masks plus a one-pixel margin: every boundary pixel
    lies inside it and the distance transform is Euclidean, so the result equals the full-image one.
    """
    pred, gt = _pair(pred, gt)
    if not pred.any() or not gt.any():
        return None
    spacing = _spacing(spacing, pred.ndim)
    coords = np.argwhere(pred | gt)
    lo, hi = coords.min(0), coords.max(0) + 1
    # pad by one so erosion treats the crop edge like the image edge would (outside is background)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pred_c = np.pad(pred[box], 1)
    gt_c = np.pad(gt[box], 1)
    pred_b, gt_b = _boundary(pred_c), _boundary(gt_c)
    to_gt = ndimage.distance_transform_edt(~gt_b, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_b, sampling=spacing)
    return to_gt[pred_b], to_pred[gt_b]


def _distances_or_value(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None
                        ) -> tuple[tuple[np.ndarray, np.ndarray] | None, float]:
    """(directed distances, NaN) when both masks are non-empty; else (None, the contract's value):
    NaN when both are empty, the empty penalty when exactly one is."""
    pred, gt = _pair(pred, gt)
    if not pred.any() and not gt.any():
        return None, math.nan
    dists = surface_distances(pred, gt, spacing)
    return (dists, math.nan) if dists is not None else (None, empty_penalty(pred.shape, spacing))


def _hd(dists: tuple[np.ndarray, np.ndarray], percentile: float | None) -> float:
    if percentile is None:
        return float(max(dists[0].max(), dists[1].max()))
    return float(max(np.percentile(dists[0], percentile), np.percentile(dists[1], percentile)))


def _assd(dists: tuple[np.ndarray, np.ndarray]) -> float:
    return float(np.concatenate(dists).mean())


def hausdorff(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None,
              percentile: float | None = None) -> float:
    """Symmetric Hausdorff distance (mm) between boundaries; percentile=95 gives HD95 (the max of
    the two directed 95th percentiles). Both empty -> NaN; one empty -> empty_penalty(shape, spacing).
    """
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile={percentile}; expected None or a value in [0, 100]")
    dists, value = _distances_or_value(pred, gt, spacing)
    return value if dists is None else _hd(dists, percentile)


def assd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance (mm): mean over both directed distance sets."""
    dists, value = _distances_or_value(pred, gt, spacing)
    return value if dists is None else _assd(dists)


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None,
                 distances: bool = True) -> dict[str, float]:
    """All metrics of one structure in one case, the boundary distances computed once."""
    out = {"dice": dice(pred, gt), "iou": iou(pred, gt)}
    if distances:
        dists, value = _distances_or_value(pred, gt, spacing)
        if dists is None:
            out.update(hd=value, hd95=value, assd=value)
        else:
            out.update(hd=_hd(dists, None), hd95=_hd(dists, 95), assd=_assd(dists))
    return out


def structure_rows(case_id: str, pred_labels: np.ndarray, gt_labels: np.ndarray, class_names: Sequence[str],
                   spacing: Sequence[float] | None = None, distances: bool = True) -> list[dict]:
    """Per-structure rows of one case from label maps (binary: 0/1 with one structure).

    Structure i (1-based label) is named class_names[i - 1]; background is never scored.
    """
    rows = []
    for label, name in enumerate(class_names, start=1):
        pred, gt = pred_labels == label, gt_labels == label
        row = {"case_id": case_id, "structure": name, "gt_empty": not gt.any(), "pred_empty": not pred.any()}
        row.update(case_metrics(pred, gt, spacing, distances))
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict], class_names: Sequence[str], metrics: Sequence[str] = METRICS
              ) -> dict[str, float]:
    """Per-case rows -> {"<metric>_<structure>", "<metric>_<structure>_std", "<metric>_<structure>_n",
    "<metric>" (mean over structures of the per-structure nanmeans), "<metric>_n" (valid case-structure
    pairs), "fpr_empty_<structure>" and "fpr_empty" (share of cases with empty ground truth that got
    any predicted foreground), "n_cases"}. NaN cases are excluded from means and counted.
    """
    out: dict[str, float] = {}
    for metric in metrics:
        means, n_total = [], 0
        for name in class_names:
            values = np.array([r[metric] for r in rows if r["structure"] == name and metric in r], dtype=float)
            valid = values[~np.isnan(values)]
            out[f"{metric}_{name}_n"] = int(valid.size)
            out[f"{metric}_{name}"] = float(valid.mean()) if valid.size else math.nan
            out[f"{metric}_{name}_std"] = float(valid.std()) if valid.size else math.nan
            n_total += valid.size
            if valid.size:
                means.append(out[f"{metric}_{name}"])
        out[metric] = float(np.mean(means)) if means else math.nan
        out[f"{metric}_n"] = int(n_total)
    empties, fps = 0, 0
    for name in class_names:
        empty_rows = [r for r in rows if r["structure"] == name and r["gt_empty"]]
        fp = sum(not r["pred_empty"] for r in empty_rows)
        out[f"fpr_empty_{name}"] = fp / len(empty_rows) if empty_rows else math.nan
        empties, fps = empties + len(empty_rows), fps + fp
    out["fpr_empty"] = fps / empties if empties else math.nan
    out["n_cases"] = len({r["case_id"] for r in rows})
    return out
