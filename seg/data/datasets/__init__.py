"""One module per dataset; each holds everything the suite knows about that dataset.

    seg.data.datasets.covid        COVID-QU-Ex: covid_infection, covid_lung (PNG)
    seg.data.datasets.radiography  COVID-19 Radiography Database: covid_radiography (PNG 299 / masks 256)
    seg.data.datasets.acdc         ACDC cine MRI: acdc (NIfTI; labels= for LV / RV)
    seg.data.datasets.ct_heart     CT heart, Kaggle layout: ct_heart (PNG slices; DICOM test scans)
    seg.data.datasets.png_pairs    your own data: images/ + masks/ PNG folders

The contract of a dataset module (adding a dataset = one module here + one conf/dataset/*.yaml):

    <reader>(root, image_size, seed, ...) -> SegData   the function a config's `dataset.source._target_`
                                                        names; `root` is where the data is (required)
    READERS                     the names of those reader functions (a closed list)
    class_names(source) -> list[str]                    foreground structure names for a config's
                                                        `dataset.source` (a plain dict)
    predict_reader(source) -> Reader                    seg.predict's intensity scaling + class names
    check(report, root, source) -> None                 read every file into a `seg.data.validate.Report`
    references(name) -> Published                       published results for the task `name`

Functions here:

    predict_reader(config)   the Reader of a run's resolved config (`dataset.source._target_`)
    references(name)         the Published references of a dataset name (a config name, or an older name)
    module_for(target)       the dataset module a `_target_` names

The lookup is closed: a `_target_` is mapped to a module only if it names a reader listed in
`READERS` of a module of this package (or one of the older targets in MOVED_TARGETS); nothing
else named in a file is ever imported or called.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from seg.data.base import Published, Reader

PACKAGE = __name__
CONTRACT = ("READERS", "class_names", "predict_reader", "check", "references")

# `_target_`s written by older versions (in checkpoints and MLflow runs) -> their current names
MOVED_TARGETS = {
    "seg.data.covid.covid_infection": f"{PACKAGE}.covid.covid_infection",
    "seg.data.covid.covid_lung": f"{PACKAGE}.covid.covid_lung",
    "seg.data.radiography.covid_radiography": f"{PACKAGE}.radiography.covid_radiography",
    "seg.data.acdc.acdc": f"{PACKAGE}.acdc.acdc",
    "seg.data.ct_heart.ct_heart": f"{PACKAGE}.ct_heart.ct_heart",
}


class UnknownDataset(ValueError):
    """A `_target_` or dataset name that is not a reader of this package."""


def module_names() -> tuple[str, ...]:
    """The dataset modules of this package (its files), sorted."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def module_for(target: str) -> ModuleType:
    """`seg.data.datasets.<module>.<reader>` (or an older target) -> the module; UnknownDataset otherwise."""
    target = MOVED_TARGETS.get(str(target), str(target))
    parts = target[len(PACKAGE) + 1:].split(".") if target.startswith(PACKAGE + ".") else []
    if len(parts) != 2 or parts[0] not in module_names():
        raise UnknownDataset(f"the dataset reader {target!r} is not a reader of {PACKAGE}; known readers: "
                             + ", ".join(readers()))
    module = importlib.import_module(f"{PACKAGE}.{parts[0]}")
    if parts[1] not in getattr(module, "READERS", ()):
        raise UnknownDataset(f"{parts[1]!r} is not a reader of {PACKAGE}.{parts[0]} (its readers: "
                             f"{', '.join(getattr(module, 'READERS', ()))})")
    return module


def readers() -> list[str]:
    """Every reader `_target_` of the package: 'seg.data.datasets.acdc.acdc', ..."""
    out = []
    for name in module_names():
        module = importlib.import_module(f"{PACKAGE}.{name}")
        out += [f"{PACKAGE}.{name}.{fn}" for fn in getattr(module, "READERS", ())]
    return out


def predict_reader(config: dict) -> Reader:
    """A run's resolved config (dict with `dataset.source`) -> the Reader of its dataset module.

    UnknownDataset naming the target (and the dataset) if `dataset.source._target_` is not a reader
    of this package.
    """
    dataset = config.get("dataset") or {}
    source = dict(dataset.get("source") or {})
    target = str(source.get("_target_", ""))
    try:
        module = module_for(target)
    except UnknownDataset as err:
        raise UnknownDataset(f"dataset {dataset.get('name')!r}: {err}") from None
    source["_target_"] = MOVED_TARGETS.get(target, target)
    return module.predict_reader(source)


def references(dataset_name: str) -> Published:
    """Published results for a dataset config name (covid_infection, acdc, acdc_lv, ...).

    Names of older versions (the dataset tag of older runs) are mapped to the current ones.
    An unknown name has none (an empty Published).
    """
    from seg.data.renamed import DATASETS

    name = DATASETS.get(dataset_name, dataset_name)
    for module_name in module_names():
        found = importlib.import_module(f"{PACKAGE}.{module_name}").references(name)
        if found.references:
            return found
    return Published()
