"""Moved: DICOM reading and writing is `seg.data.io.dicom` (re-exported here for older imports)."""
from seg.data.io.dicom import (  # noqa: F401
    DicomImage, DicomVolume, ct_window, list_dicom_files, read_dicom, read_dicom_series, write_dicom_slice,
)
