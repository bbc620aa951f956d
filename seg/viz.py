"""Contour overlays as PNG: the one drawing routine of the suite (training's test overlays, seg.predict's
`<name>_overlay.png`, the report's qualitative figures read those files).

    overlay(image (h, w), gt (H, W) | None, pred (H, W), num_labels) -> uint8 BGR (H, W, 3)
    overlay_volume(image (D, H, W), labels (D, H, W), num_labels) -> uint8 BGR montage
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

GT_COLOUR, PRED_COLOUR = (0, 200, 0), (0, 0, 255)          # BGR: ground truth green, prediction red
# BGR contour colours per structure (1, 2, 3, ...) when there is no ground truth to compare with
COLOURS = [(0, 0, 255), (0, 200, 0), (255, 80, 0), (0, 220, 255), (255, 0, 255), (255, 255, 0),
           (0, 128, 255), (128, 0, 255)]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Any-range image -> uint8, min-max scaled (a constant image becomes zeros)."""
    img = image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = np.zeros_like(img) if hi <= lo else (img - lo) / (hi - lo)
    return np.round(img * 255).astype(np.uint8)


def overlay(image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """image float (h, w) any range, gt / pred int (H, W) label maps -> uint8 BGR (H, W, 3).

    The image is min-max scaled and resized to the label size. With gt: each structure's contour,
    ground truth green and prediction red. Without (gt None): each structure's predicted contour
    in its own colour (COLOURS).
    """
    h, w = pred.shape
    img = to_uint8(image)
    if img.shape != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    for label in range(1, num_labels + 1):
        pairs = ((pred == label, COLOURS[(label - 1) % len(COLOURS)]),) if gt is None else \
            ((gt == label, GT_COLOUR), (pred == label, PRED_COLOUR))
        for mask, colour in pairs:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(canvas, contours, -1, colour, 1)
    return canvas


def overlay_volume(image: np.ndarray, labels: np.ndarray, num_labels: int, max_tiles: int = 24,
                   max_side: int = 384) -> np.ndarray:
    """image (D, H, W), labels (D, H, W) -> uint8 BGR: one slice's overlay (D = 1), else a montage of up
    to max_tiles slices (evenly spread), each at most max_side px."""
    depth = image.shape[0]
    picks = np.unique(np.linspace(0, depth - 1, min(depth, max_tiles)).round().astype(int))
    tiles = []
    for k in picks:
        canvas = overlay(image[k], None, labels[k], num_labels)
        h, w = canvas.shape[:2]
        if depth > 1 and max(h, w) > max_side:
            f = max_side / max(h, w)
            canvas = cv2.resize(canvas, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        tiles.append(canvas)
    if len(tiles) == 1:
        return tiles[0]
    cols = math.ceil(math.sqrt(len(tiles)))
    h, w = tiles[0].shape[:2]
    sheet = np.zeros((math.ceil(len(tiles) / cols) * h, cols * w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return sheet


def write_png(path: Path, image: np.ndarray) -> Path:
    """cv2.imwrite with an OSError naming the file when it fails; creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
    return path


def write_overlay(path: Path, image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray, num_labels: int) -> Path:
    """overlay(...) written as a PNG -> its path."""
    return write_png(path, overlay(image, gt, pred, num_labels))
