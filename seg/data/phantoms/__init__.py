"""Phantom data: generators that write small trees in the real on-disk formats and return the root.

    write(name, cache_dir) -> Path      the tree of generator `name`, written once into cache_dir

    name               tree (root returned)                                   read by dataset config
    covid_qu_ex        <cache>/covid_qu_ex-v1/Infection Segmentation Data     covid_infection
    covid_lung         <cache>/covid_qu_ex_lung-v1/Lung Segmentation Data     covid_lung
    covid_radiography  <cache>/covid_radiography-v1/COVID-19_Radiography_Dataset   covid_radiography
    acdc               <cache>/acdc-v1/database                               acdc, acdc_lv, acdc_rv
    ct_heart           <cache>/ct_heart-v1/ct_heart                           ct_heart

Modules: `xray` (the three PNG chest X-ray trees), `cardiac` (ACDC), `ct` (CT heart), `common` (the
write-once cache, shared by all). A dataset config names its generator (`phantom.writer`); `seg.data.open_dataset` calls `write`
when `dataset.root` is unset. The dataset readers never import this package.
"""
from __future__ import annotations

import os
from pathlib import Path

from seg.data.phantoms.cardiac import ACDC_GROUPS, ACDC_TESTING, ACDC_TRAINING, ACDC_VERSION, write_acdc  # noqa: F401
from seg.data.phantoms.common import SEED, _write_once, remove_stale_temps  # noqa: F401
from seg.data.phantoms.ct import CT_VERSION, write_ct_heart  # noqa: F401
from seg.data.phantoms.xray import (  # noqa: F401
    COVID_CATEGORIES, COVID_COUNTS, COVID_SPLITS, COVID_SUBDIRS, COVID_VERSION, LUNG_VERSION, RADIOGRAPHY_VERSION,
    write_covid_lung, write_covid_qu_ex, write_covid_radiography,
)

WRITERS = {
    "covid_qu_ex": write_covid_qu_ex,
    "covid_lung": write_covid_lung,
    "covid_radiography": write_covid_radiography,
    "acdc": write_acdc,
    "ct_heart": write_ct_heart,
}


def write(name: str, cache_dir: str | os.PathLike) -> Path:
    """Write (once) the phantom tree of generator `name` into cache_dir -> its root (the folder to read).

    ValueError naming the known generators for an unknown name.
    """
    if name not in WRITERS:
        raise ValueError(f"unknown phantom generator {name!r}; known: {', '.join(WRITERS)}")
    return WRITERS[name](cache_dir)
