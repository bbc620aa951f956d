"""The interface objects of the data layer: what a reader returns (SegData of Cases), what predict
needs of a dataset (Reader) and a dataset's published results (Reference, Published).

Data flows one way: reader (on-disk format) -> paired transforms -> SegData -> train loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

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


@dataclass
class Reader:
    """What `seg.predict` needs of a dataset: how its reader scales intensities, and its class names.

    name:        the dataset module ("acdc", "covid", ...)
    scale:       raw pixels (D, H, W) (uint8 for 8-bit images, float32 modality units otherwise) ->
                 what the reader hands to the transform: (D, H, W) uint8, or float32 in [0, 1]
    class_names: foreground structure names, as SegData.class_names
    """

    name: str
    scale: Callable[[np.ndarray], np.ndarray]
    class_names: list[str]


@dataclass(frozen=True)
class Reference:
    """A published result on the real data set (never computed here): Dice in % per structure + "mean"."""

    method: str
    dice: dict
    source: str
    note: str = ""
    hd95: str = ""      # which HD95 definition the paper reports, where it reports one (docs/metrics.md)


@dataclass(frozen=True)
class Published:
    """The published references of a task: references, the real data set they are on, what is left out."""

    references: tuple[Reference, ...] = ()
    real_data: str = ""
    not_included: str = ""
