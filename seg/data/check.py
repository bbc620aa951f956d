"""Validate a dataset tree before training: `python -m seg.data.check DATASET [ROOT]`.

    python -m seg.data.check acdc /data/ACDC/database
    python -m seg.data.check covid_infection              # no ROOT: the embedded phantom
    python -m seg.data.check png_pairs /data/my_task --set dataset.source.class_names=[lesion,edema]
    make check-data DATASET=covid_infection ROOT="/data/COVID-QU-Ex/Infection Segmentation Data"

DATASET: a dataset config of conf/dataset/ (covid_infection, covid_lung, covid_radiography, acdc,
acdc_lv, acdc_rv, ct_heart, png_pairs, or one you added). ROOT: the folder you would pass as
`dataset.root` (the readers accept the same levels); omitted or empty: the dataset's phantom.

The check itself is the dataset module's `check` (`seg.data.datasets.<module>.check`), found
through the config's `dataset.source._target_`. Unlike the readers, which stop at the first error,
it reads every file and reports all it finds: counts per split and class (category / group /
patient), image and mask sizes, label values, spacing (NIfTI, DICOM), and every problem with the
file name: missing masks, masks without images, unexpected or non-integer label values, shape /
voxel size / affine mismatches between an image and its labels, a voxel size (pixdim) of 0, NaN
voxels, unreadable or truncated PNG / NIfTI / DICOM files, malformed Info.cfg. These are the checks
training runs on the validation and test data before epoch 1. Exit status: 0 clean, 1 problems
found, 2 unknown dataset / root not found / not in the layout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg.data.validate import Report


def dataset_choices() -> list[str]:
    from seg import PROJECT_ROOT

    return sorted(p.stem for p in (PROJECT_ROOT / "conf" / "dataset").glob("*.yaml"))


def dataset_config(dataset: str, overrides: tuple[str, ...] = ()) -> dict:
    """The resolved `dataset` node of conf/ for a dataset config name (plain dict)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import seg.config  # noqa: F401  (resolvers)
    from seg import PROJECT_ROOT
    from seg.data.renamed import refused

    message = refused([f"dataset={dataset}"])
    if message:
        raise ValueError(message)
    if dataset not in dataset_choices():
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(dataset_choices())}")
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=[f"dataset={dataset}", *overrides])
    return OmegaConf.to_container(cfg.dataset, resolve=True) | {"_cache": cfg.paths.cache}


def check(dataset: str, root: str | Path | None = None, overrides: tuple[str, ...] = ()) -> Report:
    """Run the check of the dataset config `dataset` on `root` (None / "": its phantom) -> Report.

    overrides: Hydra overrides of the config, as given to run.py (e.g. `dataset.source.class_names=[a,b]`).

    ValueError for an unknown dataset (or one with no phantom and no root); FileNotFoundError
    (naming root and the layout) when root is not the dataset.
    """
    from seg.data.datasets import module_for

    cfg = dataset_config(dataset, tuple(overrides))
    source = dict(cfg["source"])
    module = module_for(source.get("_target_", ""))
    if root is None or str(root).strip() == "":
        writer = (cfg.get("phantom") or {}).get("writer")
        if not writer:
            raise ValueError(f"dataset {dataset}: give ROOT (this dataset has no embedded phantom)")
        from seg.data.phantoms import write

        root = write(writer, Path(cfg["_cache"]) / "phantom")
    report = Report(dataset, Path(root))
    module.check(report, Path(root).expanduser(), source)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg.data.check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a dataset config: " + ", ".join(dataset_choices()))
    parser.add_argument("root", nargs="?", default=None,
                        help="the folder you pass as dataset.root (omitted: the embedded phantom)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a config override as given to run.py, e.g. dataset.source.class_names=[lesion]")
    parser.add_argument("--max-problems", type=int, default=50, help="problems listed (all are counted)")
    args = parser.parse_args(argv)
    try:
        report = check(args.dataset, args.root, tuple(args.overrides))
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001  (a bad --set: Hydra's override / composition errors)
        if type(err).__module__.split(".")[0] not in ("hydra", "omegaconf"):
            raise
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print(report.render(args.max_problems))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
