"""The data layer: format IO, one module per dataset, the phantoms, and the one switch between them.

    seg.data.open_dataset(dataset_cfg, seed, cache_dir) -> SegData     what training calls
    seg.data.io          png, nifti, dicom: format IO only
    seg.data.datasets    one module per dataset: reader, check, predict preprocessing, class names,
                         published references (adding a dataset = one module + one conf/dataset yaml)
    seg.data.phantoms    generators that write small trees in the real formats and return a root
    seg.data.pairs       generic PNG image/mask pairs (items, train / evaluation datasets)
    seg.data.validate    checks shared by the readers and `seg.data.check`; validate_cases
    seg.data.check       `python -m seg.data.check DATASET ROOT`: validate a tree (CLI)
    seg.data.transforms  build_transforms (paired albumentations), PairedDataset
    seg.data.layout      resolve_root (wrong-level hints), stratified_split
    seg.data.base        Case, SegData, Reader, Reference, Published
    seg.data.renamed     config names that changed, and the message naming the new one

Data flows one way: config -> open_dataset -> (phantom writer, if root is unset) -> reader ->
SegData. Readers never import the phantoms.
"""
import os

# albumentations asks PyPI for a newer version on import (2 s timeout per process when offline)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["Case", "SegData", "open_dataset"]


def open_dataset(dataset_cfg, seed: int, cache_dir, cv=None):
    """The dataset of a run: `dataset` config node, seed, cache folder -> SegData, val/test checked.

    dataset_cfg: the run's `dataset` node (DictConfig or dict) with `name`, `root`, `source` (a
        `_target_` node: the reader and its arguments) and `phantom.writer` (the generator of the
        embedded phantom, `seg.data.phantoms.WRITERS`).
    seed: fixes the split (where the reader makes one) and the training augmentations.
    cache_dir: where phantoms are written (`<cache_dir>/phantom/...`, once; `paths.cache`).
    cv: the run's `cv` node ({"folds", "fold", "seed"}; None or folds null: no cross-validation). With
        folds set it reaches the reader as its `cv` argument: the training patients / images are dealt
        into folds by seg.data.layout (fold `fold` = validation; the test split does not move) and
        SegData.split["cv"] records the folds.

    `dataset.root` set: the reader reads that folder. Unset (null): the dataset's phantom is written
    once (or found) under cache_dir and the same reader reads it. Then every validation and test
    case is read and checked (labels, shapes, dtype, finite values, spacing > 0; the readers add
    image / label geometry), so a corrupt file fails here, naming it, before epoch 1.
    Errors: ValueError / FileNotFoundError naming the option or the file.
    """
    from pathlib import Path

    from omegaconf import DictConfig, OmegaConf

    from seg.config import build
    from seg.data.validate import validate_cases

    cfg = OmegaConf.create(dataset_cfg) if not isinstance(dataset_cfg, DictConfig) else dataset_cfg
    name = cfg.get("name", "dataset")
    root = cfg.get("root")
    if root is None or str(root).strip() == "":
        writer = OmegaConf.select(cfg, "phantom.writer")
        if not writer:
            raise ValueError(f"dataset {name}: dataset.root is unset and this dataset has no embedded phantom; "
                             f"set dataset.root=/path/to/the/data")
        if cache_dir is None:
            raise ValueError(f"dataset {name}: dataset.root is unset (the embedded phantom) but no cache "
                             "folder was given to write it to (paths.cache)")
        from seg.data.phantoms import write

        root = write(str(writer), Path(cache_dir) / "phantom")
    from seg.data.layout import Folds

    folds = Folds.of(OmegaConf.to_container(cv, resolve=True) if isinstance(cv, DictConfig) else cv)
    extra = {} if folds is None else {"cv": folds.record()}
    if extra:
        import inspect

        from seg.data.datasets import module_for

        target = str(cfg.source.get("_target_", ""))
        reader = getattr(module_for(target), target.rsplit(".", 1)[-1])
        if "cv" not in inspect.signature(reader).parameters:
            raise ValueError(f"dataset {name}: cv.folds={folds.folds}: the reader {target} takes no `cv` argument, "
                             "so it cannot split its training data into folds")
    data = build(cfg.source, seed=seed, root=str(root), **extra)
    validate_cases(data, what=f"dataset {name} ({root})")
    return data


def __getattr__(name):   # Case / SegData on first use: `import seg.data.renamed` stays light
    if name in ("Case", "SegData"):
        from seg.data import base

        return getattr(base, name)
    raise AttributeError(f"module 'seg.data' has no attribute {name!r}")
