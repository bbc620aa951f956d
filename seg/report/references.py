"""Published reference numbers for the report: they live with each dataset (seg.data.datasets.<name>.references),
here only the lookup by a run's dataset tag and the structure aliases the report matches them with."""
from __future__ import annotations

from seg.data.base import Reference
from seg.data.datasets import references

__all__ = ["Reference", "STRUCTURE_ALIASES", "references_for"]

STRUCTURE_ALIASES = {"rv": ("rv", "right_ventricle"), "myo": ("myo", "myocardium"),
                     "lv": ("lv", "left_ventricle"), "infection": ("infection", "covid", "lesion")}


def references_for(task: str, dataset: str) -> tuple[tuple[Reference, ...], str, str]:
    """(references, name of the real data set, what is not included) for a task, by its runs' dataset tag
    (current names such as covid_infection / acdc_lv, or the phantom names of older runs)."""
    published = references(dataset)
    return published.references, published.real_data, published.not_included
