"""Moved: the CT heart reader is `seg.data.datasets.ct_heart` (re-exported here for older imports)."""
from seg.data.datasets.ct_heart import ct_heart, dicom_input, dicom_series  # noqa: F401
