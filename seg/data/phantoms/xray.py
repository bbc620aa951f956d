"""Chest X-ray phantoms in the real PNG layouts: COVID-QU-Ex infection and lung trees, the COVID-19
Radiography Database.

    write_covid_qu_ex(cache_dir) -> <cache_dir>/covid_qu_ex-v1/Infection Segmentation Data
        {Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,infection masks,lung masks}/*.png
        256x256 8-bit grayscale chest radiographs; masks 0/255; same file name in all three folders.
    write_covid_lung(cache_dir) -> <cache_dir>/covid_qu_ex_lung-v1/Lung Segmentation Data
        {Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,lung masks}/*.png
    write_covid_radiography(cache_dir) -> <cache_dir>/covid_radiography-v1/COVID-19_Radiography_Dataset
        {COVID,Normal,Lung_Opacity,Viral Pneumonia}/{images (299x299),masks (256x256)}/<class>-N.png
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from seg.data.phantoms.common import SEED, _blur, _low_freq, _progress, _smooth_noise, _soft, _write_once


COVID_VERSION = "covid_qu_ex-v1"
COVID_SPLITS = ("Train", "Val", "Test")
COVID_CATEGORIES = ("COVID-19", "Non-COVID", "Normal")
COVID_SUBDIRS = ("images", "infection masks", "lung masks")
# images per split and category (COVID-19, Non-COVID, Normal)
COVID_COUNTS = {"Train": (48, 24, 24), "Val": (12, 6, 6), "Test": (16, 8, 8)}
COVID_SIZE = 256


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
