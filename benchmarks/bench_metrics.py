"""HD95 speed: seg.metrics.hausdorff(percentile=95) against MONAI's compute_hausdorff_distance(percentile=95).

    python -m benchmarks.bench_metrics        # from the repository root; well under a minute on 2 cores

Same masks to both, in the same process, each in its native input (ours: numpy bool arrays; MONAI:
a (1, 1, ...) float tensor, converted once outside the timing), one warm-up call, then the two
timed alternately (time.perf_counter), the median of N repeats reported. MONAI runs with one torch
thread: its CPU HD95 is scipy erosion and a k-d tree wrapped in small torch ops, which the intra-op
thread pool does not speed up, and on a loaded shared machine it slowed them down up to ~15x; the
script also times MONAI once with torch's default thread count, for the record. Cases: organ-like
blobs (perturbed ellipses / ellipsoids) with a shifted, resized, re-perturbed prediction, some with
a few false-positive voxels, at a few sizes, plus one large structure; on 256x256 images (spacing
0.7 x 1.3 mm) and 10x256x256 volumes (10 x 1.5 x 1.5 mm, a cardiac-MRI-like stack). The values
must agree within 1e-4 mm (MONAI works in float32), or the script exits with status 1.

Dice and IoU: 1000 images of 256x256 (100 distinct organ-like (pred, gt) pairs, each used 10 times),
seg.metrics.dice / iou called per image (as the training loop scores cases) against MONAI's
compute_dice / compute_iou on one (100, 1, 256, 256) tensor batch per 100 images (MONAI's natural,
batched use, with one torch thread as for HD95: with 2 threads on a loaded shared machine its batched
Dice was 30x slower); time per 1000 images, median of repeats, and the largest absolute difference of the
values (must be below 1e-6, else exit status 1).

Writes outputs/bench/metrics.md (the tables) and outputs/bench/metrics.json.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import warnings

from seg import PROJECT_ROOT as ROOT

import numpy as np
import scipy
import torch
from scipy import ndimage

import monai
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from seg.metrics import dice, hausdorff, iou
from seg.runtime import retain_freed_memory

TOL = 1e-4
TOL_OVERLAP = 1e-6
GOAL = 5.0
IMAGES = 1000                                    # Dice / IoU time is reported per this many images
DISTINCT = 100                                   # distinct (pred, gt) pairs, each used IMAGES / DISTINCT times
SPACING = {2: (0.7, 1.3), 3: (10.0, 1.5, 1.5)}


def organ(rng, shape, centre, radii, wobble=0.08):
    """An ellipse / ellipsoid whose boundary is perturbed by smooth noise (relative amplitude wobble)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 4.0)
    return r2 < 1.0 + wobble * noise / noise.std()


def pair(rng, shape, radii, shift, scale=1.06, false_positive=True):
    """(pred, gt): gt an organ-like blob; pred the same organ shifted, resized and re-perturbed,
    with a small false-positive blob elsewhere (a typical model error)."""
    centre = [n / 2 for n in shape]
    gt = organ(rng, shape, centre, radii)
    pred = organ(rng, shape, [c + s for c, s in zip(centre, shift)], [r * scale for r in radii])
    if false_positive:                           # a few voxels, away from the organ
        fp_centre = [n * 0.15 if i == len(shape) - 1 else n / 2 for i, n in enumerate(shape)]
        pred |= organ(rng, shape, fp_centre, [1.0] * (len(shape) - 2) + [3.0, 3.0], wobble=0.0)
    return pred, gt


def cases(rng):
    """(name, pred, gt, repeats)."""
    out = []
    organs = [("small organ (r 15 px)", (15, 12), (2, -1), False),
              ("organ + false positive (r 40 px)", (40, 32), (3, 2), True),
              ("organ, 2 px off (r 60 px)", (60, 48), (-2, 2), False)]
    for name, radii, shift, fp in organs:
        out.append(("256x256 " + name, *pair(rng, (256, 256), radii, shift, false_positive=fp), 21))
    out.append(("256x256 large structure + fp (r 110 px)", *pair(rng, (256, 256), (110, 95), (4, -3), 1.03), 21))
    for (name, radii, shift, fp), z_radius, z_shift in zip(organs, (3.0, 3.5, 4.0), (1, 0.5, 0)):
        out.append(("10x256x256 " + name,
                    *pair(rng, (10, 256, 256), (z_radius, *radii), (z_shift, *shift), false_positive=fp), 9))
    out.append(("10x256x256 large structure + fp (r 110 px)",
                *pair(rng, (10, 256, 256), (5.0, 110, 95), (1, 4, -3), 1.03), 7))
    return out


def overlap_pairs(rng, n=DISTINCT, shape=(256, 256)):
    """n (pred, gt) pairs of 256x256 organ-like blobs of random size and offset, gt never empty."""
    preds, gts = [], []
    for _ in range(n):
        radii = tuple(rng.uniform(10, 70, size=2))
        shift = tuple(rng.uniform(-6, 6, size=2))
        pred, gt = pair(rng, shape, radii, shift, scale=rng.uniform(0.9, 1.1), false_positive=rng.random() < 0.3)
        preds.append(pred)
        gts.append(gt)
    return np.stack(preds), np.stack(gts)


def bench_overlap(repeats: int = 5) -> list[dict]:
    """Dice and IoU per IMAGES images: ours per image vs MONAI batched; ms per IMAGES images, max abs diff."""
    preds, gts = overlap_pairs(np.random.default_rng(1))
    pred_t = torch.from_numpy(preds[:, None].astype(np.float32))          # (n, 1, 256, 256)
    gt_t = torch.from_numpy(gts[:, None].astype(np.float32))
    rounds = IMAGES // len(preds)
    rows = []
    for name, ours_fn, monai_fn in (("Dice", dice, compute_dice), ("IoU", iou, compute_iou)):
        def ours():
            for _ in range(rounds):
                values = [ours_fn(p, g) for p, g in zip(preds, gts)]
            return np.array(values)

        def theirs():
            for _ in range(rounds):
                values = monai_fn(pred_t, gt_t, include_background=True)
            return values[:, 0].numpy().astype(np.float64)

        ours(), theirs()                                                  # warm-up
        t_ours, t_monai = [], []
        for _ in range(repeats):                                          # alternate, as for HD95
            t, v_ours = timed(ours)
            t_ours.append(t)
            t, v_monai = timed(theirs)
            t_monai.append(t)
        ms_ours, ms_monai = 1e3 * statistics.median(t_ours), 1e3 * statistics.median(t_monai)
        rows.append({"metric": name, "images": IMAGES, "distinct_pairs": len(preds), "shape": [256, 256],
                     "ours_ms_per_1000": ms_ours * 1000 / IMAGES, "monai_ms_per_1000": ms_monai * 1000 / IMAGES,
                     "ratio": ms_monai / ms_ours, "max_abs_diff": float(np.max(np.abs(v_ours - v_monai))),
                     "mean_value": float(np.mean(v_ours)), "repeats": repeats})
        print(f"{name:5s} per {IMAGES} images: ours {rows[-1]['ours_ms_per_1000']:8.1f} ms  MONAI "
              f"{rows[-1]['monai_ms_per_1000']:8.1f} ms  x{rows[-1]['ratio']:.2f}  max abs diff "
              f"{rows[-1]['max_abs_diff']:.1e}", flush=True)
    return rows


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> int:
    warnings.simplefilter("ignore")                  # MONAI deprecation chatter
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)                         # MONAI at its fastest (see the module docstring)
    malloc = retain_freed_memory()                   # both sides, as in a training run's process
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "malloc": "retain" if malloc else "system",
            "torch_threads_default": default_threads, "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "torch": torch.__version__, "monai": monai.__version__,
            "machine": platform.platform()}
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    results, failures = [], []
    for name, pred, gt, repeats in cases(np.random.default_rng(0)):
        spacing = SPACING[pred.ndim]
        pred_t = torch.from_numpy(pred[None, None].astype(np.float32))
        gt_t = torch.from_numpy(gt[None, None].astype(np.float32))

        def ours():
            return hausdorff(pred, gt, spacing, percentile=95)

        def theirs():
            return compute_hausdorff_distance(pred_t, gt_t, include_background=True, percentile=95,
                                              spacing=list(spacing)).item()

        ours(), theirs()                             # warm-up
        t_ours, t_monai = [], []
        for _ in range(repeats):                     # alternate, so load on the machine hits both alike
            t, v_ours = timed(ours)
            t_ours.append(t)
            t, v_monai = timed(theirs)
            t_monai.append(t)
        ms_ours, ms_monai = 1e3 * statistics.median(t_ours), 1e3 * statistics.median(t_monai)
        row = {"case": name, "shape": list(pred.shape), "spacing_mm": list(spacing), "hd95_mm": v_ours,
               "hd95_monai_mm": v_monai, "abs_diff": abs(v_ours - v_monai), "ours_ms": ms_ours,
               "monai_ms": ms_monai, "ratio": ms_monai / ms_ours, "repeats": repeats,
               "foreground_px": int(pred.sum() + gt.sum())}
        results.append(row)
        print(f"{name:44s} HD95 {v_ours:9.4f} mm (MONAI {v_monai:9.4f})  ours {ms_ours:8.2f} ms  "
              f"MONAI {ms_monai:8.2f} ms  x{row['ratio']:.1f}", flush=True)
        if not abs(v_ours - v_monai) <= TOL:
            failures.append(f"{name}: ours {v_ours} vs MONAI {v_monai}")

    # for the record: MONAI with torch's default thread count, on the first case
    torch.set_num_threads(default_threads)
    name, pred, gt, _ = cases(np.random.default_rng(0))[0]
    pred_t, gt_t = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (pred, gt))
    spacing = list(SPACING[pred.ndim])

    def run():
        return compute_hausdorff_distance(pred_t, gt_t, include_background=True, percentile=95, spacing=spacing)

    run()
    default_ms = 1e3 * statistics.median(timed(run)[0] for _ in range(7))
    torch.set_num_threads(1)
    note = (f"MONAI with torch's default {default_threads} threads instead of 1, on \"{name}\": {default_ms:.2f} ms "
            f"(vs {results[0]['monai_ms']:.2f} ms with 1 thread).")

    overlap = bench_overlap()                        # MONAI with one thread here too (see the module docstring)
    for row in overlap:
        if not row["max_abs_diff"] <= TOL_OVERLAP:
            failures.append(f"{row['metric']}: max abs difference {row['max_abs_diff']} > {TOL_OVERLAP}")
    max_abs_diff = max(r["abs_diff"] for r in results)

    lines = ["| case | HD95 (mm) | ours (ms) | MONAI (ms) | ratio | abs diff (mm) |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['hd95_mm']:.3f} | {r['ours_ms']:.2f} | {r['monai_ms']:.2f} | {r['ratio']:.1f}x "
              f"| {r['abs_diff']:.1e} |" for r in results]
    table = "\n".join(lines)
    overlap_lines = [f"| metric | ours, ms per {IMAGES} images | MONAI, ms per {IMAGES} images | ratio | max abs diff |",
                     "|---|---:|---:|---:|---:|"]
    overlap_lines += [f"| {r['metric']} | {r['ours_ms_per_1000']:.1f} | {r['monai_ms_per_1000']:.1f} | {r['ratio']:.2f}x "
                      f"| {r['max_abs_diff']:.1e} |" for r in overlap]
    overlap_table = ("Dice / IoU on 256x256 masks: seg.metrics.dice / iou per image vs MONAI compute_dice / "
                     f"compute_iou batched ({DISTINCT} images per call, 1 torch thread), per {IMAGES} images, median of "
                     f"{overlap[0]['repeats']} repeats.\n\n" + "\n".join(overlap_lines))
    header = (f"HD95: seg.metrics.hausdorff(percentile=95) vs monai.metrics.compute_hausdorff_distance"
              f"(percentile=95), median ms over repeats, values equal within {TOL} mm.\n\n"
              + ", ".join(f"{k} {v}" for k, v in info.items()) + "\n\n")
    slowest = min(r["ratio"] for r in results)
    verdict = (f"HD95: slowest speed-up x{slowest:.2f} (goal x{GOAL:.0f}: {'met' if slowest >= GOAL else 'NOT met'}); "
               f"max abs difference {max_abs_diff:.1e} mm")
    print("\n" + table + "\n\n" + verdict + "\n" + note + "\n\n" + overlap_table)

    out = ROOT / "outputs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.md").write_text(header + table + "\n\n" + verdict + "\n\n" + note + "\n\n" + overlap_table + "\n")
    (out / "metrics.json").write_text(json.dumps({
        "machine": info, "tolerance_mm": TOL, "goal_ratio": GOAL, "slowest_ratio": slowest,
        "max_abs_diff_mm": max_abs_diff, "results": results, "overlap": overlap, "overlap_tolerance": TOL_OVERLAP,
        "monai_default_threads": {"case": name, "threads": default_threads, "monai_ms": default_ms}}, indent=2) + "\n")
    print(f"wrote {out / 'metrics.md'} and {out / 'metrics.json'}")
    if failures:
        print("VALUES DIFFER:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
