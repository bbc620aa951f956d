"""Moved: the phantom generators are `seg.data.phantoms` (re-exported here for older imports)."""
from seg.data.phantoms import (  # noqa: F401
    write_acdc, write_covid_lung, write_covid_qu_ex, write_covid_radiography, write_ct_heart,
)
