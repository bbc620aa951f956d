"""Dataset readers, one module per on-disk format, and the phantom data written in those formats.

    seg.data.covid.covid_infection         COVID-QU-Ex "Infection Segmentation Data" (PNG)
    seg.data.covid.covid_lung              COVID-QU-Ex "Lung Segmentation Data" (PNG)
    seg.data.radiography.covid_radiography COVID-19 Radiography Database (PNG 299 / masks 256)
    seg.data.acdc.acdc                     ACDC cine MRI database (NIfTI); read_nifti; labels= for LV / RV
    seg.data.ct_heart.ct_heart             CT heart, Kaggle layout (PNG slices; DICOM test scans)
    seg.data.dicom                         read_dicom, read_dicom_series, ct_window, write_dicom_slice
    seg.data.check                         `python -m seg.data.check DATASET ROOT`: validate a tree
    seg.data.phantom                       write_covid_qu_ex, write_covid_lung, write_covid_radiography,
                                           write_acdc, write_ct_heart (phantoms in the real layouts)
    seg.data.transforms                    build_transforms (paired albumentations), PairedDataset
    seg.data.layout                        resolve_root (wrong-level hints), PNG checks, stratified_split
    seg.data.base                          Case, SegData (what every reader returns)

Import readers from their modules (config targets name them so: `seg.data.acdc.acdc`); this
package re-exports only the interface dataclasses, so the name of a module is never shadowed
by a function of the same name.
"""
import os

# albumentations asks PyPI for a newer version on import (2 s timeout per process when offline)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from seg.data.base import Case, SegData  # noqa: E402

__all__ = ["Case", "SegData"]
