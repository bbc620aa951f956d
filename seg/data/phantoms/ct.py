"""CT heart phantom in the Kaggle layout: windowed PNG slices with heart masks, DICOM test scans in HU.

    write_ct_heart(cache_dir) -> <cache_dir>/ct_heart-v1/ct_heart
        train/patientNN/{image,mask}/NNN.png (CT windowed W400/L40; heart 0/255),
        test/patientNN/series1/NNNN.dcm (CT in HU via RescaleIntercept, PixelSpacing, positions)
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from seg.data.phantoms.common import SEED, _blur, _progress, _write_once


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
