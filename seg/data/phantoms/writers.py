"""Phantom datasets written in the real on-disk formats, once, deterministically.

The embedded default data is not a tensor generator: these writers produce a small tree in the
layout of the real download, and the same readers (`seg.data.datasets.*`) read it; the readers
never import this module (`seg.data.open_dataset` writes the tree and hands its root over).

    write_covid_qu_ex(cache_dir) -> <cache_dir>/covid_qu_ex-v1/Infection Segmentation Data
        {Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,infection masks,lung masks}/*.png
        256x256 8-bit grayscale chest radiographs; masks 0/255; same file name in all three folders.
    write_acdc(cache_dir) -> <cache_dir>/acdc-v1/database
        {training,testing}/patientNNN/{Info.cfg, patientNNN_4d.nii.gz,
                                       patientNNN_frameNN.nii.gz, patientNNN_frameNN_gt.nii.gz}
        cine short-axis MRI, arrays (x, y, z[, t]) like ACDC, labels 0 bg, 1 RV, 2 myo, 3 LV.
    write_covid_lung(cache_dir) -> <cache_dir>/covid_qu_ex_lung-v1/Lung Segmentation Data
        {Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,lung masks}/*.png
    write_covid_radiography(cache_dir) -> <cache_dir>/covid_radiography-v1/COVID-19_Radiography_Dataset
        {COVID,Normal,Lung_Opacity,Viral Pneumonia}/{images (299x299),masks (256x256)}/<class>-N.png
    write_ct_heart(cache_dir) -> <cache_dir>/ct_heart-v1/ct_heart
        train/patientNN/{image,mask}/NNN.png (CT windowed W400/L40; heart 0/255),
        test/patientNN/series1/NNNN.dcm (CT in HU via RescaleIntercept, PixelSpacing, positions)

Each tree is generated into a temporary sibling folder and renamed into place when complete, so
two processes of a parallel sweep may call a writer at once: the loser discards its copy and
uses the winner's. A finished tree is returned at once. A write that was killed leaves its hidden
temp folder behind; the next write removes it (`remove_stale_temps`). The version in the folder name changes
whenever the generator changes, so a stale cache is never read.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import cv2
import nibabel as nib
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

SEED = 20240611
COVID_VERSION = "covid_qu_ex-v1"
ACDC_VERSION = "acdc-v1"

COVID_SPLITS = ("Train", "Val", "Test")
COVID_CATEGORIES = ("COVID-19", "Non-COVID", "Normal")
COVID_SUBDIRS = ("images", "infection masks", "lung masks")
# images per split and category (COVID-19, Non-COVID, Normal)
COVID_COUNTS = {"Train": (48, 24, 24), "Val": (12, 6, 6), "Test": (16, 8, 8)}
COVID_SIZE = 256

ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
ACDC_TRAINING = range(1, 21)     # patient001..020, 4 per group in blocks like the real database
ACDC_TESTING = range(101, 111)   # patient101..110, 2 per group


# ---------------------------------------------------------------------------------------------
# write-once cache
# ---------------------------------------------------------------------------------------------

def _write_once(cache_dir: str | os.PathLike, version: str, inner: str,
                build: Callable[[Path], int], what: str) -> Path:
    """Return <cache_dir>/<version>/<inner>, building it with build(tmp/<inner>) if absent.

    build writes the tree into the folder it is given and returns the number of files written.
    The tree appears atomically (rename of a complete temporary sibling folder).
    """
    if cache_dir is None:
        raise ValueError(f"cache_dir is None; give the folder where the {what} phantom is written")
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / version
    if (final / inner).is_dir():
        return final / inner
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cache_dir)
    tmp = cache_dir / f".{version}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    log.info("writing the %s phantom to %s (once; later runs reuse it)", what, final)
    try:
        n_files = build(tmp / inner)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / inner).is_dir():   # not a lost race: a real error
                raise
            log.info("another process wrote %s first; using its tree", final)
            return final / inner
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s phantom: %d files in %.1f s -> %s", what, n_files, time.perf_counter() - start,
             final / inner)
    return final / inner


_TEMP = re.compile(r"^\.(?P<version>.+)\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")
FOREIGN_TEMP_AGE_S = 6 * 3600      # a temp folder of another machine is stale after this long


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # another user's live process
        return True
    return True


def remove_stale_temps(cache_dir: str | os.PathLike) -> list[Path]:
    """Delete the hidden temp folders of interrupted phantom writes in cache_dir -> the folders removed.

    A write killed mid-way (kill -9, out of memory, power loss) cannot clean up after itself and
    leaves `.<version>.tmp-<host>-<pid>-<tag>/`. Such a folder is stale when its process is gone
    (same host), or, for another host's folder (a shared cache), when untouched for 6 hours.
    """
    removed = []
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return removed
    host = socket.gethostname()
    for path in cache_dir.iterdir():
        found = _TEMP.match(path.name)
        if not found or not path.is_dir():
            continue
        if found.group("host") in (None, host):
            stale = not _alive(int(found.group("pid")))
        else:
            try:
                stale = time.time() - path.stat().st_mtime > FOREIGN_TEMP_AGE_S
            except OSError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                log.info("removed %s, left by an interrupted phantom write", path)
                removed.append(path)
    return removed


def _progress(items: Iterable, total: int, desc: str) -> Iterable:
    # disable=None: the bar shows on a terminal and stays out of redirected logs
    return tqdm(items, total=total, desc=desc, unit="case", disable=None, leave=False)


# ---------------------------------------------------------------------------------------------
# small image helpers (float32 fields on a pixel grid)
# ---------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to zero mean and unit std: (H, W) float32."""
    field = rng.standard_normal(shape).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    field -= field.mean()
    return field / (field.std() + 1e-6)


def _low_freq(rng: np.random.Generator, shape: tuple[int, int], cells: int = 4) -> np.ndarray:
    """Very smooth field in [-1, 1] (bicubic upsampling of a cells x cells random grid)."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, shape[::-1], interpolation=cv2.INTER_CUBIC), -1, 1)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _soft(signed: np.ndarray, width: float) -> np.ndarray:
    """Soft inside indicator from a signed function (negative inside): 1 inside, 0 outside."""
    return np.clip(0.5 - signed / width, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# COVID-QU-Ex: chest radiographs with ground-glass infection
# ---------------------------------------------------------------------------------------------

def _chest_xray(rng: np.random.Generator, category: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One radiograph -> (image uint8 (256, 256), lung mask 0/255, infection mask 0/255)."""
    n = COVID_SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    # pose: canonical coordinates (u to the image right, v down) of a torso centred at 0
    cx, cy = n / 2 + rng.normal(0, 5), n / 2 + rng.normal(0, 5)
    ang = np.deg2rad(rng.uniform(-4, 4))
    scale = rng.uniform(0.85, 1.05)
    cos, sin = float(np.cos(ang)) / scale, float(np.sin(ang)) / scale   # python floats keep float32
    dx, dy = xx - cx, yy - cy
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy

    # body with shoulders; outside is air (dark)
    body_w = rng.uniform(108, 122)
    body = _soft(np.sqrt((u / body_w) ** 2 + ((v - 30) / 175) ** 2) - 1, 0.03)
    shoulders = _soft(np.sqrt((u / (body_w + 12)) ** 2 + ((v + 95) / 40) ** 2) - 1, 0.05) * (v < -60)
    body = np.maximum(body, shoulders)

    # lung fields: tapered ellipses (narrow apex, wide base), domed diaphragm, lobulated outline
    lung = np.zeros((n, n), np.float32)
    heart_cu, heart_cv = rng.uniform(10, 20), rng.uniform(34, 46)
    heart_a, heart_b = rng.uniform(38, 48), rng.uniform(30, 38)
    heart_t = float(np.deg2rad(rng.uniform(-25, -10)))
    hc, hs = float(np.cos(heart_t)), float(np.sin(heart_t))
    hu, hv = u - heart_cu, v - heart_cv
    heart_sd = np.sqrt(((hc * hu + hs * hv) / heart_a) ** 2 + ((-hs * hu + hc * hv) / heart_b) ** 2) - 1
    theta = np.arctan2(v, u)
    for side in (-1, 1):   # -1: patient's right lung (image left), bigger; +1: left lung
        a = rng.uniform(36, 44) * (1.06 if side < 0 else 1.0)
        b = rng.uniform(70, 84)
        uc, vc = side * rng.uniform(44, 52), rng.uniform(-12, -2)
        p, q = (u - uc) * side, v - vc          # p lateral (outward), q down
        t = np.clip((q + b) / (2 * b), 0, 1)
        width = a * (0.5 + 0.5 * np.sqrt(t))
        wobble = 1 + 0.05 * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.03 * np.sin(5 * theta + rng.uniform(0, 6.3))
        shape_sd = np.sqrt((p / width) ** 2 + (q / b) ** 2) * wobble - 1
        dome = q - (0.62 * b + 0.35 * b * np.clip(p / a, -1, 1.2) ** 2 - (6 if side < 0 else 0))
        medial = (side * u) - rng.uniform(14, 20) - 4 * np.clip(-v / 60, 0, 1)   # mediastinum border
        sd = np.maximum.reduce([shape_sd * 30, dome, -medial])
        lung = np.maximum(lung, _soft(sd, 1.5))
    lung = lung * (1 - _soft(heart_sd * 35, 1.5))
    lung_mask = lung > 0.5

    # base intensities (attenuation -> brightness): air < lung < soft tissue < bone
    img = 0.06 + 0.50 * body
    img = img - 0.30 * _blur(lung, 1.5)
    # vascular markings: band-passed texture, stronger towards the hila
    hilum = np.exp(-((np.abs(u) - 30) ** 2 + (v - 5) ** 2) / (2 * 35 ** 2))
    markings = _smooth_noise(rng, (n, n), 1.5) - 0.3 * _smooth_noise(rng, (n, n), 5)
    img += _blur(lung, 2) * (0.018 + 0.035 * hilum) * markings
    # ribs: posterior arcs over both lungs, brighter over the lungs
    rib_gap = rng.uniform(17, 21)
    rib_layer = np.zeros((n, n), np.float32)
    for side in (-1, 1):
        p = side * u
        # arcs: flat near the spine, bending down laterally
        rel = v - (0.8 * (p - 30) * np.clip((p - 30) / 70, -1, 1.5) + 0.004 * (p - 20) ** 2)
        side_layer = np.zeros((n, n), np.float32)
        for k in range(10):
            half = rng.uniform(2.0, 3.25) * (1 + 0.01 * k)
            d = np.abs(rel - (-95 + k * rib_gap + rng.normal(0, 1.5))) - half
            band = 0.07 * _soft(d, 1.5) + 0.03 * _soft(np.abs(d) - 0.8, 1.0)   # bone + cortical rims
            np.maximum(side_layer, band, out=side_layer)
        rib_layer += side_layer * ((p > 8) & (p < 125) & (v < 70))
    img += rib_layer * (0.35 + 0.65 * _blur(lung, 2)) * body * rng.uniform(0.8, 1.3)
    # clavicles
    for side in (-1, 1):
        p = side * u
        clav = _soft(np.abs(v - (-100 + 0.25 * p - 0.0025 * (p - 40) ** 2)) - 4, 1.5) * (p > 5) * (p < 95)
        img += 0.10 * clav * body
    # mediastinum, heart and spine
    medi = _soft(np.abs(u) - (16 + 6 * np.clip((v + 40) / 60, 0, 1)), 3) * (v < 60)
    img += 0.08 * medi * body + 0.07 * _soft(heart_sd * 35, 2) * body
    spine = _soft(np.abs(u) - rng.uniform(11, 14), 2) * body
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * (v - rng.uniform(0, 15)) / 15.5)
    img += spine * (0.07 + 0.04 * vertebrae)
    # abdomen under the diaphragm is dense soft tissue
    img += 0.06 * body * (1 - _blur(lung, 4)) * _soft(-(v - 55), 12)

    infection = np.zeros((n, n), bool)
    lung_u8 = lung_mask.astype(np.uint8)
    inside = cv2.distanceTransform(lung_u8, cv2.DIST_L2, 5)
    if category == "COVID-19":
        for _ in range(rng.integers(1, 4)):
            alpha, blob = _opacity(rng, inside, u, v, kind="ground_glass")
            texture = 0.8 + 0.2 * np.clip(_smooth_noise(rng, (n, n), 1.2), -2, 2) / 2
            img += rng.uniform(0.09, 0.14) * alpha * texture * lung
            infection |= blob
        # strictly inside the lung field (and one pixel off its border)
        infection &= inside >= 2
    elif category == "Non-COVID":
        for _ in range(rng.integers(1, 4)):
            kind = rng.choice(["nodule", "lobar", "nodule", "reticular"])
            alpha, _ = _opacity(rng, inside, u, v, kind=str(kind))
            if kind == "nodule":
                img += rng.uniform(0.10, 0.18) * alpha
            elif kind == "lobar":
                img += rng.uniform(0.07, 0.12) * alpha * lung
            else:
                lines = np.abs(_smooth_noise(rng, (n, n), 2.0)) < 0.35
                img += rng.uniform(0.05, 0.09) * alpha * lung * _blur(lines.astype(np.float32), 0.8)

    # smooth exposure variation, contrast, blur, quantum noise
    img *= 1 + 0.10 * _low_freq(rng, (n, n), 3)
    img = np.clip(img, 0, None) ** rng.uniform(0.8, 1.25)
    img = _blur(img, rng.uniform(0.6, 1.0))
    img += rng.uniform(0.018, 0.03) * rng.standard_normal((n, n)).astype(np.float32)
    img += 0.012 * _smooth_noise(rng, (n, n), 1.0)
    lo, hi = np.percentile(img, [0.5, 99.8])
    gain = rng.uniform(0.85, 1.0)
    img = np.clip((img - lo) / (hi - lo) * gain + rng.uniform(0, 0.05), 0, 1)
    image = np.round(img * 255).astype(np.uint8)
    return image, lung_mask.astype(np.uint8) * 255, infection.astype(np.uint8) * 255


def _opacity(rng: np.random.Generator, inside: np.ndarray, u: np.ndarray, v: np.ndarray,
             kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A lesion centred in the lung -> (soft alpha (H, W) float32, hard mask (H, W) bool)."""
    n = inside.shape[0]
    ys, xs = np.nonzero(inside > 6)
    # COVID favours the lower and peripheral zones: weight candidate centres accordingly
    weight = 1.0 + 2.0 * np.clip(v[ys, xs] / 80 + 0.3, 0, 1) + 1.0 * np.clip(np.abs(u[ys, xs]) / 80, 0, 1)
    i = rng.choice(len(ys), p=weight / weight.sum())
    y0, x0 = int(ys[i]), int(xs[i])
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if kind == "nodule":
        r = rng.uniform(3, 7)
        d = np.sqrt((yy - y0) ** 2 + (xx - x0) ** 2)
        alpha = _blur(_soft(d - r, 1.0), 0.7)
        return alpha, alpha > 0.5
    if kind == "lobar":
        # dense, homogeneous, one straight (fissure) edge
        a = rng.uniform(0, 2 * np.pi)
        nx, ny = float(np.cos(a)), float(np.sin(a))
        r = rng.uniform(25, 40)
        d = np.sqrt((yy - y0) ** 2 + (xx - x0) ** 2)
        half = (xx - x0) * nx + (yy - y0) * ny
        alpha = _soft(d - r, 6) * _soft(half - rng.uniform(-5, 10), 1.0)
        return alpha, alpha > 0.5
    # ground glass / reticular: smooth irregular blob, soft edges
    r = rng.uniform(12, 26)
    ax = rng.uniform(0.7, 1.3)
    d = np.sqrt(((yy - y0) / ax) ** 2 + ((xx - x0) * ax) ** 2) / r
    field = 1 - d ** 2 + 0.55 * _smooth_noise(rng, (n, n), r / 3)
    alpha = _blur(((field > 0.25) | (d < 0.4)).astype(np.float32), rng.uniform(2.0, 3.5))  # never empty
    return alpha, alpha > 0.5


def _covid_name(category: str, index: int) -> str:
    if category == "COVID-19":
        return f"covid_{index}.png"
    if category == "Non-COVID":
        return f"non_COVID ({index}).png"
    return f"Normal ({index}).png"


def _build_covid(root: Path) -> int:
    jobs = []
    numbers = dict.fromkeys(COVID_CATEGORIES, 0)   # file numbers run on across splits, unique per category
    for s, split in enumerate(COVID_SPLITS):
        for c, category in enumerate(COVID_CATEGORIES):
            for _ in range(COVID_COUNTS[split][c]):
                numbers[category] += 1
                jobs.append((s, c, split, category, numbers[category]))
    for split in COVID_SPLITS:
        for category in COVID_CATEGORIES:
            for sub in COVID_SUBDIRS:
                (root / split / category / sub).mkdir(parents=True, exist_ok=True)
    for s, c, split, category, index in _progress(jobs, len(jobs), "COVID-QU-Ex phantom"):
        rng = np.random.default_rng([SEED, s, c, index])
        image, lung, infection = _chest_xray(rng, category)
        name = _covid_name(category, index)
        for sub, arr in zip(COVID_SUBDIRS, (image, infection, lung)):
            path = root / split / category / sub / name
            if not cv2.imwrite(str(path), arr):
                raise OSError(f"could not write {path}")
    (root.parent / "README.txt").write_text(
        f"segsweep phantom of COVID-QU-Ex 'Infection Segmentation Data' ({COVID_VERSION}, seed {SEED}).\n"
        "Synthetic chest radiographs; not patient data.\n")
    return 3 * len(jobs)


def write_covid_qu_ex(cache_dir: str | os.PathLike) -> Path:
    """Write (once) a COVID-QU-Ex-style "Infection Segmentation Data" PNG tree; return its root.

    <root>/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,infection masks,lung masks}/*.png,
    root = <cache_dir>/covid_qu_ex-v1/Infection Segmentation Data. Images 256x256 uint8 grayscale,
    masks 0/255 with the image's file name (covid_N.png, non_COVID (N).png, Normal (N).png).
    COVID-19: 1-3 low-contrast ground-glass patches inside the lungs (= infection mask);
    Non-COVID: unlabeled nodular / lobar / reticular opacities (empty infection mask);
    Normal: empty infection mask. Images per split (COVID-19, Non-COVID, Normal): Train 48/24/24,
    Val 12/6/6, Test 16/8/8. Deterministic (fixed seed), a few seconds.
    """
    return _write_once(cache_dir, COVID_VERSION, "Infection Segmentation Data", _build_covid,
                       "COVID-QU-Ex")


# ---------------------------------------------------------------------------------------------
# ACDC: cine short-axis cardiac MRI
# ---------------------------------------------------------------------------------------------

# per group: LV endocardial radius at ED (mm), myocardial thickness (mm), radial shortening ED->ES,
# RV size factor, RV radial shortening
_ACDC_SHAPES = {
    "NOR": dict(r_lv=24.0, myo=8.0, short=0.30, rv=1.0, rv_short=0.25),
    "MINF": dict(r_lv=29.0, myo=7.0, short=0.14, rv=1.0, rv_short=0.20),
    "DCM": dict(r_lv=33.0, myo=6.0, short=0.09, rv=1.1, rv_short=0.12),
    "HCM": dict(r_lv=19.0, myo=14.0, short=0.38, rv=0.9, rv_short=0.28),
    "RV": dict(r_lv=22.0, myo=8.0, short=0.26, rv=1.6, rv_short=0.10),
}


def _acdc_patient(rng: np.random.Generator, group: str) -> dict:
    """Draw one patient's acquisition and anatomy."""
    shape = {k: val * rng.uniform(0.9, 1.1) for k, val in _ACDC_SHAPES[group].items()}
    nx = int(rng.integers(96, 141))                           # columns (x)
    ny = nx if rng.random() < 0.4 else int(rng.integers(96, 141))   # rows (y)
    nframes = int(rng.integers(12, 21))
    return dict(
        group=group, shape=shape, nx=nx, ny=ny,
        dxy=float(np.round(rng.uniform(1.3, 1.7), 4)),
        dz=float(rng.choice([5.0, 6.5, 8.0, 10.0], p=[0.1, 0.1, 0.2, 0.6])),
        nz=int(rng.integers(6, 11)),
        nframes=nframes, ed=1, es=int(np.clip(round(0.38 * nframes + rng.normal(0, 1)), 4, nframes - 2)),
        height=float(np.round(rng.uniform(150, 195))), weight=float(np.round(rng.uniform(50, 110))),
        above_base=bool(rng.random() < 0.5),   # one unlabeled slice above the valve plane
        rv_angle=float(np.deg2rad(rng.uniform(160, 200))),
        centre=(rng.uniform(-12, 12), rng.uniform(-12, 12)),
        papillary=[(rng.uniform(0, 2 * np.pi), rng.uniform(0.45, 0.7)) for _ in range(2)],
        infarct=(rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.2)) if group == "MINF" else None,
        noise=rng.uniform(0.03, 0.06),
        # background organs: (x, y, half-axes in mm, intensity); liver, stomach, aorta, muscle...
        blobs=[(rng.uniform(-80, 80), rng.uniform(-70, 70), rng.uniform(8, 30), rng.uniform(8, 30),
                rng.choice([0.05, 0.45, 0.6, 0.8])) for _ in range(5)],
    )


def _contraction(frame: int, pat: dict) -> float:
    """0 at ED (frame 1), 1 at ES, relaxing back towards ED at the end of the cycle."""
    t, es, n = frame - 1, pat["es"] - 1, pat["nframes"]
    if t <= es:
        return float(np.sin(0.5 * np.pi * t / es) ** 2)
    return float(np.cos(0.5 * np.pi * (t - es) / (n - es)) ** 2)


def _acdc_grid(pat: dict) -> tuple[np.ndarray, np.ndarray]:
    """mm coordinates (x, y) of the pixel grid, origin at the LV centre: two (ny, nx) float32."""
    ny, nx, d = pat["ny"], pat["nx"], pat["dxy"]
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    return (xx - nx / 2) * d - pat["centre"][0], (yy - ny / 2) * d - pat["centre"][1]


def _acdc_background(pat: dict) -> np.ndarray:
    """Thorax around the heart, shared by all slices and frames: (ny, nx) float32."""
    ny, nx, d = pat["ny"], pat["nx"], pat["dxy"]
    xmm, ymm = _acdc_grid(pat)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    body_sd = np.sqrt(((xx - nx / 2) / (0.46 * nx)) ** 2 + ((yy - ny / 2) / (0.42 * ny)) ** 2) - 1
    body = _soft(body_sd * 60, 2)
    fat = _soft(np.abs(body_sd * 60 + 4) - 3, 2)
    lungs = _soft(np.sqrt(((xmm - 55) / 30) ** 2 + ((ymm + 10) / 45) ** 2) - 1, 0.08) \
        + _soft(np.sqrt(((xmm + 60) / 28) ** 2 + ((ymm + 5) / 40) ** 2) - 1, 0.08)
    back = 0.30 * body + 0.45 * fat - 0.25 * lungs * body
    r = np.sqrt(xmm ** 2 + ymm ** 2)
    away = _soft(-(r - 45), 6)            # organs stay clear of the heart
    for bx, by, ax, ay, val in pat["blobs"]:
        blob = _soft(np.sqrt(((xmm - bx) / ax) ** 2 + ((ymm - by) / ay) ** 2) - 1, 0.15) * away * body
        back = back * (1 - blob) + val * blob
    return back


def _acdc_frame(pat: dict, c: float, rng: np.random.Generator, back: np.ndarray,
                bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One cardiac phase (contraction c in [0, 1]) -> (image (z, y, x) float32, label (z, y, x) uint8)."""
    nz, ny, nx = pat["nz"], pat["ny"], pat["nx"]
    s = pat["shape"]
    xmm, ymm = _acdc_grid(pat)
    r = np.sqrt(xmm ** 2 + ymm ** 2)
    phi = np.arctan2(ymm, xmm)
    image = np.zeros((nz, ny, nx), np.float32)
    label = np.zeros((nz, ny, nx), np.uint8)
    first = 1 if pat["above_base"] else 0
    levels = nz - first
    for k in range(nz):
        z = max(k - first, 0) / max(levels - 1, 1)      # 0 base .. 1 apex
        taper = float(np.cos(0.42 * np.pi * z))
        r_in_ed = s["r_lv"] * taper
        r_out_ed = r_in_ed + s["myo"] * (0.8 + 0.2 * taper)
        r_in = r_in_ed * (1 - s["short"] * c)
        r_out = float(np.sqrt(r_in ** 2 + r_out_ed ** 2 - r_in_ed ** 2))   # myocardium keeps its area
        wall = np.full_like(phi, 1.0)
        if pat["infarct"] is not None:                  # thinned sector
            da = np.angle(np.exp(1j * (phi - pat["infarct"][0])))
            wall = 1 - 0.45 * np.exp(-(da / (pat["infarct"][1] / 2)) ** 4)
        r_outer = r_in + (r_out - r_in) * wall
        lv = r < r_in
        myo = (r >= r_in) & (r < r_outer)
        # RV: ellipse beside the septum minus the LV epicardium (a crescent)
        rv_taper = max(float(np.cos(0.55 * np.pi * z)), 0.0)
        rv_w = (s["r_lv"] + s["myo"]) * 0.75 * s["rv"] * rv_taper * (1 - s["rv_short"] * c)
        rv_l = (s["r_lv"] + s["myo"]) * 1.35 * s["rv"] * (0.5 + 0.5 * rv_taper)
        ca, sa = float(np.cos(pat["rv_angle"])), float(np.sin(pat["rv_angle"]))
        off = float(r_outer.mean()) * 0.55 + 0.5 * rv_w
        pu = (xmm - off * ca) * ca + (ymm - off * sa) * sa
        pv = -(xmm - off * ca) * sa + (ymm - off * sa) * ca
        if rv_w > 2:                                    # the RV ends before the apex
            rv = (np.sqrt((pu / rv_w) ** 2 + (pv / rv_l) ** 2) < 1) & (r >= r_outer + 1.5)
            rv_wall = (np.sqrt((pu / (rv_w + 2.5)) ** 2 + (pv / (rv_l + 2.5)) ** 2) < 1) & ~rv & (r >= r_outer)
        else:
            rv = rv_wall = np.zeros_like(lv)
        # papillary muscles: dark spots in the LV pool that ACDC labels as LV
        pap = np.zeros_like(lv)
        if z < 0.7:
            for ang, frac in pat["papillary"]:
                px, py = frac * r_in * float(np.cos(ang)), frac * r_in * float(np.sin(ang))
                pap |= (xmm - px) ** 2 + (ymm - py) ** 2 < (0.16 * r_in) ** 2
        sl = np.where(lv | rv, 0.92, back)
        sl = np.where(myo, 0.2, sl)
        sl = np.where(pap & lv, 0.35, sl)
        sl = np.where(rv_wall, 0.25, sl)                # thin RV free wall (not labelled in ACDC)
        image[k] = sl
        if k >= first:                                  # above the valve plane nothing is labelled
            label[k][rv] = 1
            label[k][myo] = 2
            label[k][lv] = 3
    # partial volume, bias field, Rician noise
    for k in range(nz):
        image[k] = _blur(image[k], 0.7) * bias[k]
    sigma = pat["noise"]
    n1 = rng.standard_normal(image.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(image.shape, dtype=np.float32) * sigma
    image = np.sqrt((image + n1) ** 2 + n2 ** 2)
    return image, label


def _acdc_affine(rng: np.random.Generator, pat: dict) -> np.ndarray:
    """Oblique short-axis orientation with the patient's voxel size (columns: x, y, z)."""
    a, b = rng.uniform(-0.6, 0.6, 2)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rx @ ry @ np.diag([pat["dxy"], pat["dxy"], pat["dz"]])
    affine[:3, 3] = rng.uniform(-150, 50, 3)
    return affine


def _nifti(data_xyz: np.ndarray, affine: np.ndarray, zooms: tuple[float, ...]) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data_xyz, affine)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _write_acdc_patient(folder: Path, pid: int, group: str) -> int:
    rng = np.random.default_rng([SEED, pid])
    pat = _acdc_patient(rng, group)
    name = f"patient{pid:03d}"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(
        f"ED: {pat['ed']}\nES: {pat['es']}\nGroup: {group}\nHeight: {pat['height']:.1f}\n"
        f"NbFrame: {pat['nframes']}\nWeight: {pat['weight']:.1f}\n")
    # coil bias field: smooth in-plane, drifting slowly from base to apex: (z, y, x)
    drift = 1 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, pat["nz"], dtype=np.float32)
    bias = (1 + 0.25 * _low_freq(rng, (pat["ny"], pat["nx"]), 3))[None] * drift[:, None, None]
    scale = rng.uniform(300, 700)
    back = _acdc_background(pat)
    frames, labels = [], {}
    for f in range(1, pat["nframes"] + 1):
        image, label = _acdc_frame(pat, _contraction(f, pat), rng, back, bias)
        frames.append(np.round(image * scale).astype(np.int16))
        if f in (pat["ed"], pat["es"]):
            labels[f] = label
    affine = _acdc_affine(rng, pat)
    zooms = (pat["dxy"], pat["dxy"], pat["dz"])
    # on disk like ACDC: (x, y, z[, t]); in memory (z, y, x): transpose
    vol4d = np.stack([fr.transpose(2, 1, 0) for fr in frames], axis=-1)
    _nifti(vol4d, affine, zooms + (1.0,)).to_filename(folder / f"{name}_4d.nii.gz")
    for f, label in labels.items():
        _nifti(vol4d[..., f - 1], affine, zooms).to_filename(folder / f"{name}_frame{f:02d}.nii.gz")
        _nifti(label.transpose(2, 1, 0), affine, zooms).to_filename(folder / f"{name}_frame{f:02d}_gt.nii.gz")
    return 6


def _acdc_group(pid: int) -> str:
    if pid < 100:   # training: blocks of 4 per group, like the real database's blocks of 20
        return ACDC_GROUPS[(pid - 1) // 4]
    return ACDC_GROUPS[(pid - 101) // 2]


def _build_acdc(root: Path) -> int:
    jobs = [("training", p) for p in ACDC_TRAINING] + [("testing", p) for p in ACDC_TESTING]
    n_files = 0
    for part, pid in _progress(jobs, len(jobs), "ACDC phantom"):
        n_files += _write_acdc_patient(root / part / f"patient{pid:03d}", pid, _acdc_group(pid))
    (root.parent / "README.txt").write_text(
        f"segsweep phantom of the ACDC database ({ACDC_VERSION}, seed {SEED}).\n"
        "Synthetic cine short-axis MRI; not patient data.\n")
    return n_files


def write_acdc(cache_dir: str | os.PathLike) -> Path:
    """Write (once) an ACDC-style NIfTI `database` tree; return its root.

    root = <cache_dir>/acdc-v1/database with training/patient001..020 (4 per group, groups
    DCM, HCM, MINF, NOR, RV in blocks like ACDC) and testing/patient101..110 (2 per group), each:
    Info.cfg (`ED: 1`, `ES: 7`, `Group: NOR`, `Height: 172.0`, `NbFrame: 16`, `Weight: 80.0`),
    patientNNN_4d.nii.gz (x, y, z, t) int16 and, for ED and ES, patientNNN_frameNN.nii.gz (x, y, z)
    int16 with patientNNN_frameNN_gt.nii.gz uint8 (0 bg, 1 RV, 2 myo, 3 LV), same affine.
    Matrix 96-140 px per side (not always square), 1.3-1.7 mm in-plane, 5-10 mm between slices,
    6-10 slices, 12-20 frames. Deterministic (fixed seed), a few seconds.
    """
    return _write_once(cache_dir, ACDC_VERSION, "database", _build_acdc, "ACDC")


# ---------------------------------------------------------------------------------------------
# COVID-QU-Ex "Lung Segmentation Data" and the COVID-19 Radiography Database (lung masks)
# ---------------------------------------------------------------------------------------------

LUNG_VERSION = "covid_qu_ex_lung-v1"
LUNG_COUNTS = {"Train": (24, 12, 12), "Val": (6, 3, 3), "Test": (8, 4, 4)}
RADIOGRAPHY_VERSION = "covid_radiography-v1"
RADIOGRAPHY_CLASSES = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")
RADIOGRAPHY_COUNT = 12            # images per class
RADIOGRAPHY_IMAGE, RADIOGRAPHY_MASK = 299, 256


def _build_lung(root: Path) -> int:
    n = 0
    numbers = dict.fromkeys(COVID_CATEGORIES, 0)
    for s, split in enumerate(COVID_SPLITS):
        for c, category in enumerate(COVID_CATEGORIES):
            for sub in ("images", "lung masks"):
                (root / split / category / sub).mkdir(parents=True, exist_ok=True)
            for _ in _progress(range(LUNG_COUNTS[split][c]), LUNG_COUNTS[split][c], f"lung {split}"):
                numbers[category] += 1
                rng = np.random.default_rng([SEED, 7, s, c, numbers[category]])
                image, lung, _ = _chest_xray(rng, category)
                name = _covid_name(category, numbers[category])
                for sub, arr in (("images", image), ("lung masks", lung)):
                    if not cv2.imwrite(str(root / split / category / sub / name), arr):
                        raise OSError(f"could not write {root / split / category / sub / name}")
                n += 2
    return n


def write_covid_lung(cache_dir: str | os.PathLike) -> Path:
    """Write (once) a COVID-QU-Ex-style "Lung Segmentation Data" PNG tree; return its root.

    <root>/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,lung masks}/*.png,
    root = <cache_dir>/covid_qu_ex_lung-v1/Lung Segmentation Data; 256x256 uint8 radiographs,
    lung masks 0/255 (lung fields without the heart). Images per split (COVID-19, Non-COVID,
    Normal): Train 24/12/12, Val 6/3/3, Test 8/4/4. Deterministic, about 4 s.
    """
    return _write_once(cache_dir, LUNG_VERSION, "Lung Segmentation Data", _build_lung, "COVID-QU-Ex lung")


def _build_radiography(root: Path) -> int:
    n = 0
    for c, cls in enumerate(RADIOGRAPHY_CLASSES):
        for sub in ("images", "masks"):
            (root / cls / sub).mkdir(parents=True, exist_ok=True)
        category = ("COVID-19", "Normal", "Non-COVID", "Non-COVID")[c]
        for i in _progress(range(1, RADIOGRAPHY_COUNT + 1), RADIOGRAPHY_COUNT, f"radiography {cls}"):
            rng = np.random.default_rng([SEED, 11, c, i])
            image, lung, _ = _chest_xray(rng, category)
            # the database ships 299x299 images with 256x256 masks
            image = cv2.resize(image, (RADIOGRAPHY_IMAGE, RADIOGRAPHY_IMAGE), interpolation=cv2.INTER_LINEAR)
            name = f"{cls}-{i}.png"
            for sub, arr in (("images", image), ("masks", lung)):
                if not cv2.imwrite(str(root / cls / sub / name), arr):
                    raise OSError(f"could not write {root / cls / sub / name}")
            n += 2
    (root / "README.md.txt").write_text("segsweep phantom of the COVID-19 Radiography Database; not patient data.\n")
    return n


def write_covid_radiography(cache_dir: str | os.PathLike) -> Path:
    """Write (once) a COVID-19 Radiography Database-style tree; return its root.

    <root>/{COVID,Normal,Lung_Opacity,Viral Pneumonia}/{images,masks}/<class>-N.png,
    root = <cache_dir>/covid_radiography-v1/COVID-19_Radiography_Dataset; images 299x299 uint8,
    lung masks 256x256 0/255 (as published: sizes differ), 12 per class. Deterministic, about 2 s.
    """
    return _write_once(cache_dir, RADIOGRAPHY_VERSION, "COVID-19_Radiography_Dataset", _build_radiography,
                       "COVID-19 Radiography")


# ---------------------------------------------------------------------------------------------
# CT heart (Kaggle layout): windowed PNG slices with heart masks; DICOM test scans in HU
# ---------------------------------------------------------------------------------------------

CT_VERSION = "ct_heart-v1"
CT_TRAIN_PATIENTS = 8
CT_TEST_PATIENTS = 2
CT_SIZE = 128                    # pixels per side
CT_SLICES = 20
CT_WINDOW = (400.0, 40.0)        # (width, level) the PNG slices are exported with


def _ct_volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One chest CT -> (HU int16 (z, y, x), heart mask uint8 (z, y, x) 0/1, dxy mm, dz mm)."""
    n, nz = CT_SIZE, CT_SLICES
    dxy, dz = float(np.round(rng.uniform(2.5, 3.0), 3)), float(rng.choice([4.0, 5.0]))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    x, y = (xx - n / 2) * dxy, (yy - n / 2) * dxy             # mm; +x patient left (image right), +y posterior
    a, b = rng.uniform(150, 170), rng.uniform(105, 120)        # body half-axes (mm)
    body = ((x / a) ** 2 + (y / b) ** 2) < 1
    inner = ((x / (a - 12)) ** 2 + (y / (b - 12)) ** 2) < 1   # subcutaneous fat outside
    hx, hy = rng.uniform(5, 25), rng.uniform(-35, -15)         # heart centre (mm), left-anterior
    ha, hb, hc = rng.uniform(45, 60), rng.uniform(38, 48), rng.uniform(45, 55)   # heart half-axes
    zc = (nz / 2 + rng.uniform(-1.5, 1.5)) * dz
    tilt = float(np.deg2rad(rng.uniform(20, 40)))
    ct, st = float(np.cos(tilt)), float(np.sin(tilt))
    blood, myo_hu = rng.uniform(250, 350), rng.uniform(90, 130)
    hu = np.zeros((nz, n, n), np.float32)
    heart = np.zeros((nz, n, n), np.uint8)
    for k in range(nz):
        z = k * dz
        sl = np.full((n, n), -1000.0, np.float32)
        sl[body] = -100.0                                       # fat
        sl[inner] = 40.0                                        # mediastinal soft tissue / muscle
        for side in (-1, 1):                                    # lungs
            lung = (((x - side * 70) / 55) ** 2 + ((y - 5) / 80) ** 2) < 1
            sl[lung & inner] = -850.0
        u, v = ct * (x - hx) + st * (y - hy), -st * (x - hx) + ct * (y - hy)
        r = (u / ha) ** 2 + (v / hb) ** 2 + ((z - zc) / hc) ** 2
        h = (r < 1) & inner
        sl[h] = myo_hu
        sl[(r < 0.62) & inner] = blood                           # contrast-filled chambers
        septum = (np.abs(u + 0.1 * v) < 4) & (r < 0.62)
        sl[septum] = myo_hu
        heart[k] = h
        if z > zc - 0.2 * hc:                                   # ascending aorta above the heart centre
            sl[((x + 10) ** 2 + (y + 5) ** 2) < 14 ** 2] = blood
        sl[((x - 20) ** 2 + (y - 55) ** 2) < 11 ** 2] = blood   # descending aorta
        spine = ((x ** 2 + (y - 85) ** 2) < 18 ** 2)
        sl[spine] = 700.0
        sl[spine & ((x ** 2 + (y - 85) ** 2) > 15 ** 2)] = 1000.0
        sl[(np.abs(x) < 12) & (np.abs(y + b - 10) < 5)] = 600.0  # sternum
        hu[k] = sl
    for k in range(nz):
        hu[k] = _blur(hu[k], 0.8)
    hu += rng.normal(0, rng.uniform(10, 20), hu.shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), heart, dxy, dz


def _build_ct_heart(root: Path) -> int:
    from seg.data.io.dicom import ct_window, write_dicom_slice

    n = 0
    width, level = CT_WINDOW
    for p in _progress(range(1, CT_TRAIN_PATIENTS + CT_TEST_PATIENTS + 1),
                       CT_TRAIN_PATIENTS + CT_TEST_PATIENTS, "CT heart phantom"):
        rng = np.random.default_rng([SEED, 13, p])
        hu, heart, dxy, dz = _ct_volume(rng)
        pid = f"patient{p:02d}"
        if p <= CT_TRAIN_PATIENTS:
            for sub in ("image", "mask"):
                (root / "train" / pid / sub).mkdir(parents=True, exist_ok=True)
            for k in range(hu.shape[0]):
                image = np.round(ct_window(hu[k], width, level) * 255).astype(np.uint8)
                name = f"{k:03d}.png"
                for sub, arr in (("image", image), ("mask", heart[k] * 255)):
                    if not cv2.imwrite(str(root / "train" / pid / sub / name), arr):
                        raise OSError(f"could not write {root / 'train' / pid / sub / name}")
                n += 2
        else:
            series = root / "test" / pid / "series1"
            z0 = float(np.round(rng.uniform(-250, -150), 1))
            for k in range(hu.shape[0]):
                # stored = HU + 1024 (RescaleIntercept -1024); positions from feet to head
                write_dicom_slice(series / f"{k + 1:04d}.dcm", (hu[k].astype(np.int32) + 1024).astype(np.int16),
                                  spacing=(dxy, dxy), position=(-CT_SIZE / 2 * dxy, -CT_SIZE / 2 * dxy, z0 + k * dz),
                                  instance=k + 1, slope=1.0, intercept=-1024.0, slice_thickness=dz,
                                  patient_id=pid, window=CT_WINDOW)
                n += 1
    (root / "README.txt").write_text(
        f"segsweep phantom of the Kaggle CT heart layout ({CT_VERSION}, seed {SEED}); not patient data.\n"
        f"train/<patient>/image/*.png: 8-bit slices exported with the window W {width:g} / L {level:g}; "
        "mask/*.png: heart 0/255.\ntest/<patient>/<series>/*.dcm: CT in HU (RescaleIntercept -1024).\n")
    return n


def write_ct_heart(cache_dir: str | os.PathLike) -> Path:
    """Write (once) a CT heart tree in the Kaggle layout; return its root.

    root = <cache_dir>/ct_heart-v1/ct_heart with
        train/patientNN/image/NNN.png   128x128 uint8 axial chest CT slices, HU windowed W400/L40
        train/patientNN/mask/NNN.png    heart 0/255 (same file name)      8 patients x 20 slices
        test/patientNN/series1/NNNN.dcm CT, int16 stored = HU + 1024, RescaleIntercept -1024,
                                        PixelSpacing 2.5-3 mm, 4-5 mm between slices; 2 patients
    Slices above and below the heart have empty masks. Deterministic, about 2 s.
    """
    return _write_once(cache_dir, CT_VERSION, "ct_heart", _build_ct_heart, "CT heart")
