"""ACDC phantom: a cine short-axis cardiac MRI `database` tree in NIfTI, like the real one.

    write_acdc(cache_dir) -> <cache_dir>/acdc-v1/database
        {training,testing}/patientNNN/{Info.cfg, patientNNN_4d.nii.gz,
                                       patientNNN_frameNN.nii.gz, patientNNN_frameNN_gt.nii.gz}
        arrays (x, y, z[, t]) like ACDC, labels 0 bg, 1 RV, 2 myo, 3 LV.
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from seg.data.phantoms.common import SEED, _blur, _low_freq, _progress, _soft, _write_once


ACDC_VERSION = "acdc-v1"
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
ACDC_TRAINING = range(1, 21)     # patient001..020, 4 per group in blocks like the real database
ACDC_TESTING = range(101, 111)   # patient101..110, 2 per group


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
