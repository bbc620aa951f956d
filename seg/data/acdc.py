"""Moved: the ACDC reader is `seg.data.datasets.acdc`, NIfTI reading `seg.data.io.nifti`.

Re-exports for code written against the older layout (seg.predict, older tests); new code imports
the new homes.
"""
from seg.data.datasets.acdc import (  # noqa: F401
    LAYOUT, PHASES, STRUCTURES, Patient, _unit_slices, acdc, read_info,
)
from seg.data.io.nifti import Volume, nifti_shape, read_nifti  # noqa: F401
