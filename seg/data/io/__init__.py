"""Format IO only: reading (and, for tests and phantoms, writing) PNG, NIfTI and DICOM files.

    seg.data.io.png     png_size (header + IEND check), read_png (8-bit grayscale), binary_mask
    seg.data.io.nifti   read_nifti -> Volume (z, y, x) + spacing (dz, dy, dx) mm, nifti_shape
    seg.data.io.dicom   read_dicom, read_dicom_series, ct_window, write_dicom_slice

Nothing here knows a dataset layout; errors name the file. Dataset readers live in
`seg.data.datasets`, one module per dataset.
"""
