"""Segmentation metrics with defined semantics on empty masks (pure numpy + scipy).

The contract (docs/metrics.md), per image (2D) or volume (3D), per foreground structure:

    case                    Dice, IoU        HD, HD95, HD95 pooled, ASSD (mm)
    both empty              NaN (counted)    NaN (counted)
    one empty, other not    0                diagonal of the image extent in mm
    both non-empty          usual            symmetric, between boundary pixels

Boundary pixels are mask XOR its erosion with the connectivity-1 cross (as MONAI and medpy);
HD95 is the max of the two directed 95th percentiles (np.percentile's 'linear'; MONAI's definition);
HD95 pooled (`hd95_pooled`) is the 95th percentile of both directed distance sets pooled together
(medpy's `hd95`, which TransUNet and Swin-Unet report). Distances use the
pixel / voxel spacing (mm) of the array axes; spacing None means 1 per axis (distances in pixels).

Distances are exact Euclidean, computed on the bounding box of the two masks only, by whichever of
a few exact methods is cheapest for the boundaries at hand (see _boundary_distances); values agree
with scipy's distance transform on the full image, and with MONAI's HD / HD95 / ASSD (float32)
within 1e-4 mm (tests/test_metrics_monai.py). structure_rows scores all structures of a label map
together: one crop, one bincount, one boundary pass per label map.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

METRICS = ("dice", "iou", "hd", "hd95", "hd95_pooled", "assd")
# the columns of a run's cases.csv, in order (one row per case and structure; see structure_rows)
CASE_COLUMNS = ("case_id", "structure", "gt_empty", "pred_empty") + METRICS
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


# Boundary distances (all methods exact Euclidean in mm; results differ at most in the last bits,
# from summation order): where boundaries are sparse in their box (2D contours), nearest neighbours
# among the boundary coordinates, by all pairwise distances when few, else a k-d tree; where they
# are dense (thin anisotropic stacks, large 3D structures, where a k-d tree query visits many
# equidistant neighbours) a nearest-first scan of line distances; whatever the scan leaves (points
# beyond its reach, or too many for its budget) gets a k-d tree or the box's distance transform.
_SCAN_DENSITY = 0.08        # boundary elements (both masks) per box element above which the scan is used
_SCAN_FIRST = 64            # about how many leading-axis offsets the scan's first round visits
_SCAN_OFFSETS = 4096        # ... and all rounds together, at most
_SCAN_BUDGET = 8            # a scan block gathers at most this many values per box element
_SCAN_CHUNK = 1 << 15       # ... in chunks of about this many
_BRUTE_PAIRS = 32768        # sparse: all pairwise distances up to this many pairs, else a k-d tree
_EDT_COST = 0.06            # cost model (us) for the scan's leftovers: distance transform per box element;
_KD_COST = (50.0, 0.3, 2.0)  # k-d tree per call, per tree point, per query


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the True elements as slices (one per axis); None when there is none."""
    box: list[slice] = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
        mask = mask[(slice(None),) * axis + (box[-1],)]      # later axes reduce over the narrowed array
    return tuple(box)


def _edge_map(a: np.ndarray) -> np.ndarray:
    """Foreground elements of `a` (bool mask or label map) that differ from a connectivity-1 neighbour
    or lie on the array's faces (outside counts as background).

    For each label k this is exactly (a == k) XOR its erosion with the cross (border value 0), i.e.
    the boundary of every structure at once; for a bool mask, mask XOR binary_erosion(mask).
    """
    changed = np.ones(a.shape, bool)
    inner = (slice(1, -1),) * a.ndim
    if all(n > 2 for n in a.shape):
        centre = a[inner]
        same = np.ones(centre.shape, bool)
        for axis in range(a.ndim):
            for side in (slice(None, -2), slice(2, None)):
                neighbour = a[inner[:axis] + (side,) + inner[axis + 1:]]
                same &= centre == neighbour
        changed[inner] = ~same
    return changed & (a if a.dtype == bool else a != 0)


def _edt_directed(src: np.ndarray, dst_b: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distances (mm) from the elements at flat indices `src` to the nearest True element of dst_b,
    read off the feature transform of the box (scipy's own arithmetic: equal to its distance map)."""
    ft = ndimage.distance_transform_edt(~dst_b, sampling=spacing, return_distances=False, return_indices=True)
    sq = np.zeros(src.size)
    for axis, (idx, step) in enumerate(zip(np.unravel_index(src, dst_b.shape), spacing)):
        d = (ft[axis].ravel()[src] - idx).astype(np.float64) * step
        sq += d * d
    return np.sqrt(sq)


def _nearest_directed(src: np.ndarray, on_dst: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Distances from points src (n, ndim) in mm to their nearest neighbour among dst (m, ndim);
    sources flagged on_dst lie on the dst boundary themselves (distance 0) and are not queried.
    Few pairs: all pairwise distances (a k-d tree query costs ~50 us however small); else a k-d tree."""
    out = np.zeros(len(src))
    off = ~on_dst
    query = src[off]
    if len(query) == 0:
        return out
    if len(query) * len(dst) <= _BRUTE_PAIRS:
        sq = (query[:, None, 0] - dst[None, :, 0]) ** 2
        for axis in range(1, dst.shape[1]):
            sq += (query[:, None, axis] - dst[None, :, axis]) ** 2
        out[off] = np.sqrt(sq.min(1))
    else:
        out[off] = cKDTree(dst, balanced_tree=False, compact_nodes=False).query(query)[0]
    return out


def _line_sq(dst_b: np.ndarray, step: float, pad: Sequence[int]) -> np.ndarray:
    """Squared distance (mm^2) along the last axis (spacing step) to the nearest True element of dst_b
    in the same line, inf where the line has none; padded on both sides of each leading axis i with
    pad[i] lines of inf. From the sorted flat indices t of dst_b: between two of them every element's
    last / next dst element is a run of one value (np.repeat)."""
    shape, flat = dst_b.shape, dst_b.ravel()
    size, width = flat.size, shape[-1]
    kind = np.int32 if 2 * (size + width) + 4 < 2 ** 31 else np.int64
    far = kind(size + width + 1)
    t = np.flatnonzero(flat).astype(kind)                              # non-empty
    gaps = np.diff(t)
    left = np.empty(size, kind)                                        # last dst at or before
    left[:t[0]] = -far
    left[t[0]:t[-1]] = np.repeat(t[:-1], gaps)
    left[t[-1]:] = t[-1]
    right = np.empty(size, kind)                                       # first dst at or after
    right[:t[0] + 1] = t[0]
    right[t[0] + 1:t[-1] + 1] = np.repeat(t[1:], gaps)
    right[t[-1] + 1:] = 2 * far
    at = np.arange(size, dtype=kind)
    np.subtract(at, left, out=left)
    np.subtract(right, at, out=right)
    column = np.tile(np.arange(width, dtype=kind), size // width)
    left[left > column] = far                                          # the last dst is in an earlier line
    np.subtract(width - 1, column, out=column)
    right[right > column] = far                                        # the next one in a later line
    np.minimum(left, right, out=left)
    out = np.full(tuple(n + 2 * k for n, k in zip(shape[:-1], pad)) + (width,), np.inf)
    inner = out[tuple(slice(k, k + n) for k, n in zip(pad, shape[:-1]))]
    left = left.reshape(shape)
    np.multiply(left, step, out=inner)                                 # as scipy: (index difference * step)^2
    np.multiply(inner, inner, out=inner)
    np.copyto(inner, np.inf, where=left == far)
    return out


def _lead_offsets(spacing: np.ndarray, shape: Sequence[int], count: int
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Integer offsets (k, ndim - 1) over the leading axes, nearest first, with their squared lengths
    in mm (summed axis by axis, as scipy's distance transform sums): about `count` of them, those
    within a radius r; and a bound: every offset left out either leaves the box or has a squared
    length above it (inf when none is left out)."""
    lead = spacing[:-1]
    r = count * lead[0] / 2 if len(lead) == 1 else math.sqrt(count * float(np.prod(lead)) / math.pi)
    ranges = [np.arange(-k, k + 1) for k in (min(n - 1, int(r // s)) for n, s in zip(shape[:-1], lead))]
    sq = (ranges[0] * lead[0]) ** 2
    for axis in range(1, len(lead)):
        sq = (sq[..., None] + (ranges[axis] * lead[axis]) ** 2)
    sq = sq.ravel()
    bound = math.inf
    if any(len(a) < 2 * n - 1 for a, n in zip(ranges, shape[:-1])):
        bound = r * r
        order = np.flatnonzero(sq <= bound)
        order = order[np.argsort(sq[order], kind="stable")]
    else:
        order = np.argsort(sq, kind="stable")
    grid = np.column_stack([a[i] for a, i in zip(ranges, np.unravel_index(order, [len(a) for a in ranges]))])
    return grid, sq[order], bound


def _scan_blocks(line: np.ndarray, base: np.ndarray, offsets: np.ndarray, lead_sq: np.ndarray, bound: float,
                 start: int, best: np.ndarray, todo: np.ndarray, budget: int,
                 lead: tuple[np.ndarray, ...] | None = None, lead_shape: Sequence[int] = ()) -> tuple[np.ndarray, int]:
    """Visit offsets[start:] (nearest first) for the sources todo, in blocks of doubling size:
    best[i] = min over visited offsets o of |o|^2 + line[base[i] + jump(o)] (line: squared line
    distances). A source leaves todo once best is no longer than the next offset's |o|^2 (bound after
    the last). With lead (the sources' leading-axis coordinates) the lines are unpadded and offsets
    that leave the box along a leading axis are skipped. Work goes in chunks of about _SCAN_CHUNK
    values (offsets x sources), so temporaries stay in cache. Returns (todo, first offset not visited)."""
    strides = np.array(line.strides[:-1]) // line.itemsize
    line = line.ravel()
    size = 8
    while todo.size and start < len(offsets) and todo.size * size <= budget:
        stop = min(len(offsets), start + size)
        block = offsets[start:stop]
        jumps, block_sq = (block @ strides)[:, None], lead_sq[start:stop, None]
        step = max(1, _SCAN_CHUNK // len(block))
        for at in range(0, todo.size, step):
            part = todo[at:at + step]
            index = jumps + base[part]                               # (offsets, sources)
            if lead is not None:
                inside = np.ones(index.shape, bool)
                for c, o, n in zip(lead, block.T, lead_shape):
                    moved = o[:, None] + c[part]
                    inside &= (moved >= 0) & (moved < n)
                index[~inside] = 0
            cand = line[index]
            cand += block_sq                                         # |o|^2 + line^2, summed as scipy sums
            if lead is not None:
                cand[~inside] = np.inf
            best[part] = np.minimum(best[part], cand.min(0))
        todo = todo[best[todo] > (lead_sq[stop] if stop < len(offsets) else bound)]
        start, size = stop, 2 * size
    return todo, start


def _scan_directed(src: np.ndarray, dst_b: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distances (mm) from the elements at flat indices `src` to the nearest True element of dst_b.

    Exact, separably: the distance along the last axis to the nearest dst element of each line is
    found for all lines at once; then, for each source, the lines at leading-axis offsets o are
    visited nearest first, the candidate being |o|^2 + (line distance)^2, and a source is done once
    its best candidate is no longer than the next offset. A first round visits the nearest few
    offsets, on lines padded so no index leaves the array; a second, for the sources still open,
    visits farther offsets with bounds checks. Sources left after that (beyond the reach, or too
    many for the budget) get a k-d tree or the distance transform, whichever the cost model
    prefers. Elements on dst_b itself are at 0.
    """
    out = np.zeros(src.size)
    off = ~dst_b.ravel()[src]
    query = src[off]
    if query.size == 0:
        return out
    shape = dst_b.shape
    coords = np.unravel_index(query, shape)
    best = np.full(query.size, np.inf)
    budget = _SCAN_BUDGET * dst_b.size
    first = min(_SCAN_FIRST, _SCAN_OFFSETS)
    offsets, lead_sq, bound = _lead_offsets(spacing, shape, first)
    pad = np.abs(offsets).max(0)
    line = _line_sq(dst_b, spacing[-1], pad)
    base = np.ravel_multi_index(tuple(c + k for c, k in zip(coords[:-1], pad)) + coords[-1:], line.shape)
    todo, start = _scan_blocks(line, base, offsets, lead_sq, bound, 0, best, np.arange(query.size), budget)
    if todo.size and start == len(offsets) and bound < math.inf and _SCAN_OFFSETS > first:
        visited = bound
        offsets, lead_sq, bound = _lead_offsets(spacing, shape, _SCAN_OFFSETS)
        start = int(np.searchsorted(lead_sq, visited, side="right"))
        todo, start = _scan_blocks(line, base, offsets, lead_sq, bound, start, best, todo, budget,
                                   lead=coords[:-1], lead_shape=shape[:-1])
    dist = np.sqrt(best)
    if todo.size:
        dst = np.flatnonzero(dst_b)
        per_call, per_point, per_query = _KD_COST
        if per_call + per_point * dst.size + per_query * todo.size < _EDT_COST * dst_b.size:
            pts = np.column_stack(np.unravel_index(query[todo], shape)) * spacing
            tree = cKDTree(np.column_stack(np.unravel_index(dst, shape)) * spacing,
                           balanced_tree=False, compact_nodes=False)
            dist[todo] = tree.query(pts)[0]
        else:
            dist[todo] = _edt_directed(query[todo], dst_b, spacing)
    out[off] = dist
    return out


def _boundary_distances(pred_b: np.ndarray, gt_b: np.ndarray, spacing: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (pred -> gt, gt -> pred), in raster order of the source boundary elements,
    between two non-empty boundary maps of one box.

    Exact Euclidean in mm: nearest neighbours among the boundary coordinates (scaled by spacing)
    where boundaries are few or sparse in the box, the nearest-first scan where they are dense.
    """
    ip, ig = np.flatnonzero(pred_b), np.flatnonzero(gt_b)
    if ip.size + ig.size > _SCAN_DENSITY * pred_b.size and ip.size * ig.size > _BRUTE_PAIRS:
        return _scan_directed(ip, gt_b, spacing), _scan_directed(ig, pred_b, spacing)
    cp = np.column_stack(np.unravel_index(ip, pred_b.shape)) * spacing
    cg = np.column_stack(np.unravel_index(ig, gt_b.shape)) * spacing
    return (_nearest_directed(cp, gt_b.ravel()[ip], cg), _nearest_directed(cg, pred_b.ravel()[ig], cp))


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed boundary distances (pred -> gt, gt -> pred) in mm; None unless both non-empty.

    Works on the bounding box of the two masks: outside it both are background, so a mask element on
    the box face is a boundary element exactly when it is one in the full image, and the distances are
    Euclidean between boundary elements, so the result equals the full-image one.
    """
    pred, gt = _pair(pred, gt)
    spacing = _spacing(spacing, pred.ndim)
    if not pred.any() or not gt.any():
        return None
    box = _bbox(pred | gt)
    return _boundary_distances(_edge_map(pred[box]), _edge_map(gt[box]), spacing)


def _distances_or_value(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None
                        ) -> tuple[tuple[np.ndarray, np.ndarray] | None, float]:
    """(directed distances, NaN) when both masks are non-empty; else (None, the contract's value):
    NaN when both are empty, the empty penalty when exactly one is."""
    pred, gt = _pair(pred, gt)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return None, math.nan
    if not has_pred or not has_gt:
        return None, empty_penalty(pred.shape, spacing)
    box = _bbox(pred | gt)
    return _boundary_distances(_edge_map(pred[box]), _edge_map(gt[box]), _spacing(spacing, pred.ndim)), math.nan


def _percentile(values: np.ndarray, percentile: float) -> float:
    """np.percentile(values, percentile) (its default 'linear' method, same arithmetic, same result)
    from a partial sort of the two order statistics it interpolates between."""
    virtual = (values.size - 1) * (percentile / 100)
    if virtual >= values.size - 1:
        return float(values.max())
    below = math.floor(virtual)
    gamma = virtual - below
    part = np.partition(values, (below, below + 1))
    a, b = part[below], part[below + 1]
    diff = b - a
    return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)


def _hd(dists: tuple[np.ndarray, np.ndarray], percentile: float | None) -> float:
    if percentile is None:
        return float(max(dists[0].max(), dists[1].max()))
    return max(_percentile(dists[0], percentile), _percentile(dists[1], percentile))


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


def hd95_pooled(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """HD95 as medpy's `hd95` computes it (mm): the 95th percentile (np.percentile's 'linear') of the
    pooled directed boundary distances pred -> gt and gt -> pred, with the spacing (medpy's
    voxelspacing). Empty masks follow the contract: both empty -> NaN; one empty ->
    empty_penalty(shape, spacing) (medpy raises there). pred, gt: bool arrays (H, W) or (D, H, W).
    """
    dists, value = _distances_or_value(pred, gt, spacing)
    return value if dists is None else _pooled95(dists)


def _pooled95(dists: tuple[np.ndarray, np.ndarray]) -> float:
    return _percentile(np.concatenate(dists), 95)


def assd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance (mm): mean over both directed distance sets."""
    dists, value = _distances_or_value(pred, gt, spacing)
    return value if dists is None else _assd(dists)


def _distance_metrics(dists: tuple[np.ndarray, np.ndarray] | None, value: float) -> dict[str, float]:
    if dists is None:
        return {"hd": value, "hd95": value, "hd95_pooled": value, "assd": value}
    return {"hd": _hd(dists, None), "hd95": _hd(dists, 95), "hd95_pooled": _pooled95(dists), "assd": _assd(dists)}


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None,
                 distances: bool = True) -> dict[str, float]:
    """All metrics of one structure in one case, the boundary distances computed once."""
    out = {"dice": dice(pred, gt), "iou": iou(pred, gt)}
    if distances:
        out.update(_distance_metrics(*_distances_or_value(pred, gt, spacing)))
    return out


def _label_map(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer label map whose values are 0..n_classes: label k stays k, any other value becomes 0
    (background or a label that is not scored); integer maps already in range are used as they are."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if labels.dtype.kind in "iu" and (labels.size == 0 or (labels.min() >= 0 and labels.max() <= n_classes)):
        return labels if labels.dtype.itemsize < 8 or labels.dtype.kind == "i" else labels.astype(np.intp)
    out = np.zeros(labels.shape, dtype=np.min_scalar_type(n_classes))
    for k in range(1, n_classes + 1):
        out[labels == k] = k
    return out


def structure_rows(case_id: str, pred_labels: np.ndarray, gt_labels: np.ndarray, class_names: Sequence[str],
                   spacing: Sequence[float] | None = None, distances: bool = True) -> list[dict]:
    """Per-structure rows of one case from label maps (binary: 0/1 with one structure).

    Structure i (1-based label) is named class_names[i - 1]; background is never scored.
    Each row equals {"case_id", "structure", "gt_empty", "pred_empty"} + case_metrics(pred_labels == i,
    gt_labels == i, spacing, distances), computed for all structures together: one crop to the
    foreground, voxel counts of every label from one bincount, every structure's boundary from one
    neighbour comparison of each label map, then distances per structure within its own bounding box.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"pred {pred_labels.shape} and gt {gt_labels.shape} must have the same shape")
    if pred_labels.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or 3D volume, got {pred_labels.ndim} dimensions")
    n = len(class_names)
    pl, gl = _label_map(pred_labels, n), _label_map(gt_labels, n)
    box = _bbox((pl != 0) | (gl != 0))                       # outside it both maps are background
    n_pred = n_gt = n_both = [0] * (n + 1)
    if box is not None:
        pc, gc = pl[box], gl[box]
        n_pred = np.bincount(pc.ravel(), minlength=n + 1).tolist()
        n_gt = np.bincount(gc.ravel(), minlength=n + 1).tolist()
        n_both = np.bincount(gc[pc == gc], minlength=n + 1).tolist()
        if distances and any(n_pred[k] and n_gt[k] for k in range(1, n + 1)):
            step = _spacing(spacing, pl.ndim)
            pred_edges, gt_edges = _edge_map(pc), _edge_map(gc)  # boundaries of all structures at once
            pred_objs, gt_objs = ndimage.find_objects(pc, n), ndimage.find_objects(gc, n)
    rows = []
    for k, name in enumerate(class_names, start=1):
        row = {"case_id": case_id, "structure": name, "gt_empty": n_gt[k] == 0, "pred_empty": n_pred[k] == 0}
        total, union = n_pred[k] + n_gt[k], n_pred[k] + n_gt[k] - n_both[k]
        row["dice"] = math.nan if total == 0 else 2.0 * n_both[k] / total
        row["iou"] = math.nan if union == 0 else n_both[k] / union
        if distances:
            if total == 0:
                dists, value = None, math.nan
            elif n_pred[k] == 0 or n_gt[k] == 0:
                dists, value = None, empty_penalty(pl.shape, spacing)
            else:
                sp, sg = pred_objs[k - 1], gt_objs[k - 1]
                kbox = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(sp, sg))
                pred_b = pred_edges[kbox] & (pc[kbox] == k)
                gt_b = gt_edges[kbox] & (gc[kbox] == k)
                dists, value = _boundary_distances(pred_b, gt_b, step), math.nan
            row.update(_distance_metrics(dists, value))
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
