"""PNG files: header check (a truncated download is named up front), 8-bit grayscale reading, binary masks.

    png_size(path)                -> (height, width) from the header; ValueError if not a PNG or truncated
    read_png(path)                -> (H, W) uint8 (colour images converted to grayscale)
    binary_mask(mask, path)       -> (H, W) uint8 0/1 from a 0/255 or 0/1 mask
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) from the PNG header; ValueError naming the file if it is no PNG or truncated
    (the file must end with the IEND chunk)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(size - 8, 0))
            tail = f.read(8)
    except OSError as err:
        raise ValueError(f"cannot read PNG file {path}: {err}") from err
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"corrupt or non-PNG file: {path} (bad PNG header)")
    if tail != _PNG_END:
        raise ValueError(f"truncated PNG file: {path} (no IEND chunk at the end; re-download it)")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return height, width


def read_png(path: Path) -> np.ndarray:
    """8-bit grayscale PNG (or JPEG) -> (H, W) uint8 (colour images are converted); ValueError naming the file."""
    data = np.fromfile(path, dtype=np.uint8)   # np.fromfile + imdecode: non-ASCII paths work too
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise ValueError(f"corrupt or unreadable PNG file: {path}")
    return image


def binary_mask(mask: np.ndarray, path: Path, strict: bool = True) -> np.ndarray:
    """(H, W) uint8 mask -> 0/1 uint8. Accepted values: {0, 1} or {0, 255}.

    Other values: ValueError naming the file and the values (strict), or foreground = value > 127
    (strict=False, for exports with anti-aliased edges).
    """
    if mask.max(initial=0) <= 1:
        return mask.astype(np.uint8)
    odd = (mask != 0) & (mask != 255)
    if odd.any():
        if strict:
            values = np.unique(mask[odd])
            raise ValueError(f"mask {path} holds values {values[:8].tolist()}"
                             f"{' ...' if values.size > 8 else ''} besides 0 and 255 ({int(odd.sum())} "
                             "pixels); expected a binary mask (0/255 or 0/1). Set strict_masks=false "
                             "to threshold at 128 instead")
    return (mask > 127).astype(np.uint8)
