"""Overlays of ground truth (green) and prediction (red) contours on an image, as PNG."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def overlay(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """image float (h, w) any range, gt / pred int (H, W) label maps -> uint8 BGR (H, W, 3).

    The image is min-max scaled and resized to the label size; each structure's contour is drawn,
    ground truth green and prediction red.
    """
    h, w = gt.shape
    img = image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = np.zeros_like(img) if hi <= lo else (img - lo) / (hi - lo)
    img = cv2.resize((img * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    for label in range(1, num_labels + 1):
        for mask, color in ((gt == label, (0, 200, 0)), (pred == label, (0, 0, 255))):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(canvas, contours, -1, color, 1)
    return canvas


def write_overlay(path: Path, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, num_labels: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), overlay(image, gt, pred, num_labels)):
        raise OSError(f"could not write overlay {path}")
    return path
