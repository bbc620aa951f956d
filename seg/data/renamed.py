"""Config names that changed, and the one-line message that names the new one.

The seven `phantom_*` dataset configs and five `phantom_*` experiments became one config per task:
`dataset.root` unset (null) = the embedded phantom. The MLflow experiment of a phantom run keeps
its old name (phantom_xray, phantom_cardiac, ...: the `phantom.experiment` key of each dataset
config), so existing stores and reports continue.

    refused(["dataset=phantom_xray"])  -> "dataset=phantom_xray was renamed: use dataset=covid_infection
                                           (dataset.root unset = the embedded phantom)"

Import-light on purpose: `run.py` checks its command line with it before Hydra starts.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

# old dataset config -> new one (the old names are also the MLflow experiments of phantom runs)
DATASETS = {
    "phantom_xray": "covid_infection",
    "phantom_lung": "covid_lung",
    "phantom_radiography": "covid_radiography",
    "phantom_cardiac": "acdc",
    "phantom_acdc_lv": "acdc_lv",
    "phantom_acdc_rv": "acdc_rv",
    "phantom_ct_heart": "ct_heart",
}
# old experiment -> new one
EXPERIMENTS = {
    "phantom_covid_arch_x_loss": "covid_arch_x_loss",
    "phantom_covid_lung_arch_x_loss": "covid_lung_arch_x_loss",
    "phantom_acdc_multiclass": "acdc_multiclass",
    "phantom_acdc_single_ventricle": "acdc_single_ventricle",
    "phantom_ct_heart": "ct_heart",
}
GROUPS = {"dataset": DATASETS, "experiment": EXPERIMENTS}


def refused(overrides: Sequence[str]) -> str | None:
    """The message for the first renamed config choice among Hydra command-line overrides, else None.

    Understands `group=a`, `+group=a`, `group=a,b` and `group=choice(a,b)` for the dataset and
    experiment groups.
    """
    for arg in overrides:
        key, sep, value = str(arg).partition("=")
        group = key.lstrip("+~")
        if not sep or group not in GROUPS:
            continue
        value = re.sub(r"^(choice|glob)\((.*)\)$", r"\2", value.strip())
        for choice in (v.strip().strip("'\"") for v in value.split(",")):
            new = GROUPS[group].get(choice)
            if new:
                return (f"{group}={choice} was renamed: use {group}={new} "
                        "(dataset.root unset = the embedded phantom)")
    return None
