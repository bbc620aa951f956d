"""The two objects every dataset reader returns: training samples and evaluation cases.

Data flows one way: reader (on-disk format) -> paired transforms -> SegData -> train loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset


@dataclass
class Case:
    """One evaluation unit: a 2D image (D=1) or a 3D volume (D slices), scored at original size.

    image:   float32 (D, C, S, S), normalised like training, resized to the model input size S
    label:   uint8 (D, H0, W0) at the original resolution, values 0..K-1 (binary: 0/1)
    spacing: mm per axis of `label`: (dz, dy, dx) when is_3d, else (dy, dx);
             (1.0, 1.0) for PNG data without physical spacing (distances are then in pixels)
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...]
    is_3d: bool = False
    meta: dict = field(default_factory=dict)


@dataclass
class SegData:
    """What a dataset reader returns.

    train: Dataset of (image float32 tensor (C, S, S), mask int64 tensor (S, S)), augmented
    val, test: sequences of Case (len() and indexing; may load lazily)
    class_names: foreground structure names, len 1 for binary tasks, K-1 for K classes
    split: case / patient ids per split, saved with the run
    """

    train: Dataset
    val: Sequence[Case]
    test: Sequence[Case]
    class_names: list[str]
    split: dict[str, list[str]]
