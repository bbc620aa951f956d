"""What seg.predict writes per input: the label map (PNG or NIfTI with the input's geometry), the overlay
(seg.viz, the suite's one drawing routine), and the rows of predictions.csv."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from seg.viz import overlay_volume, write_png

if TYPE_CHECKING:
    from seg.predict.inputs import Job, Loaded
    from seg.predict.model import Model

CSV_FIELDS = ["input", "kind", "frame", "label_file", "overlay_file", "shape", "spacing_mm", "patient", "phase",
              "structure", "class_index", "pixels", "area_mm2", "volume_ml", "edv_ml", "esv_ml", "ef_percent"]


def overlay_image(scaled: np.ndarray, labels: np.ndarray, num_structures: int) -> np.ndarray:
    """scaled (D, H, W), labels (D, H, W) -> BGR uint8: each structure's contour in its colour; a volume
    as a montage of slices (seg.viz.overlay_volume)."""
    return overlay_volume(scaled, labels, num_structures)


def write_overlay(out: Path, job: "Job", scaled: np.ndarray, labels: np.ndarray, num_structures: int) -> Path:
    """<name>_overlay.png."""
    return write_png(out / f"{job.name}_overlay.png", overlay_image(scaled, labels, num_structures))


def write_label(out: Path, job: "Job", loaded: "Loaded", labels: np.ndarray) -> Path:
    """Label map (D, H, W) -> <name>_label.png (2D) or <name>_label.nii.gz with the input's affine / shape."""
    if loaded.nifti is None:
        return write_png(out / f"{job.name}_label.png", labels[0])
    affine, header, shape = loaded.nifti
    if loaded.frames > 1:                                                     # (t*z, y, x) -> (x, y, z, t)
        data = np.ascontiguousarray(labels.reshape(loaded.frames, -1, *labels.shape[1:]).transpose(3, 2, 1, 0))
    else:                                                                     # (z, y, x) -> (x, y, z)
        data = np.ascontiguousarray(labels.transpose(2, 1, 0)).reshape(shape)
    image = nib.Nifti1Image(data, affine, header=header.copy() if header is not None else None)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    if header is None:
        spacing = loaded.spacing
        image.header.set_zooms((spacing[2], spacing[1], spacing[0]))
        image.header.set_xyzt_units("mm")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    path = out / f"{job.name}_label.nii.gz"
    nib.save(image, path)
    return path


def structure_rows(job: "Job", loaded: "Loaded", labels: np.ndarray, model: "Model", label_file: Path,
                   overlay_file: Path) -> list[dict]:
    """One CSV row per structure (and frame of a cine file): pixels, area mm^2 (2D, known spacing) or
    volume mL (3D)."""
    spacing = loaded.spacing
    cell = float(np.prod(spacing)) if spacing is not None else None
    per_frame = labels.reshape(loaded.frames, -1)
    frames = loaded.meta.get("frames", {})
    shape = labels.shape if loaded.is_3d else labels.shape[1:]
    if loaded.frames > 1:
        shape = (loaded.frames, labels.shape[0] // loaded.frames, *labels.shape[1:])
    rows = []
    for t in range(loaded.frames):
        counts = np.bincount(per_frame[t], minlength=len(model.class_names) + 1)
        phase = loaded.meta.get("phase", "")
        if loaded.frames > 1:
            phase = next((ph for ph, f in frames.items() if f == t + 1), "")
        for index, structure in enumerate(model.class_names, start=1):
            n = int(counts[index])
            rows.append({
                "input": job.shown, "kind": job.kind, "frame": t + 1 if loaded.frames > 1 else "",
                "label_file": label_file.name, "overlay_file": overlay_file.name,
                "shape": "x".join(str(s) for s in shape),
                "spacing_mm": "" if spacing is None else "x".join(f"{s:.4g}" for s in spacing),
                "patient": loaded.meta.get("patient", ""), "phase": phase,
                "structure": structure, "class_index": index, "pixels": n,
                "area_mm2": "" if loaded.is_3d or cell is None else num(n * cell),
                "volume_ml": num(n * cell / 1000.0) if loaded.is_3d else "",
                "edv_ml": "", "esv_ml": "", "ef_percent": "",
            })
    return rows


def num(value: float) -> float:
    """6 significant digits for the CSV."""
    return float(f"{value:.6g}")
