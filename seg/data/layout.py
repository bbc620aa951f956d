"""Shared helpers of the dataset readers: finding a dataset's root at the right level, splits.

resolve_root accepts the dataset's top folder or its parent (as the download unpacks) and, when
the user points one level off (a parent further up, or a folder inside the dataset), says which
folder to pass instead. stratified_split splits keys (patients, images) by seed. PNG reading
lives in `seg.data.io.png`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seg.data.io.png import binary_mask, png_size, read_png  # noqa: F401  (re-exported for older imports)


def natural_key(name: str) -> list:
    """'img10.png' after 'img9.png': digits compare as numbers."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _fits(folder: Path, required: Sequence[str]) -> str | None:
    """None if every required sub-folder exists, else the first missing path."""
    for rel in required:
        if not (folder / rel).is_dir():
            return str(folder / rel)
    return None


def resolve_root(root: str | Path | None, top: str | None, required: Sequence[str], layout: str,
                 dataset: str, option: str = "dataset.root") -> Path:
    """The folder holding `required` (relative sub-folders): root/top, or root itself.

    top: the dataset's own folder name (e.g. "Infection Segmentation Data"), None if it has none.
    FileNotFoundError naming root and the expected layout otherwise; if root is a folder inside
    the dataset (a child) or the dataset sits one or two levels below root, the message names
    the folder to pass instead. ValueError if root is None.
    """
    if root is None or str(root).strip() == "":
        raise ValueError(f"{dataset}: no root given; set {option}=/path/to/the/download "
                         f"(the folder to pass:\n{layout})")
    root = Path(root).expanduser()
    # the Kaggle zips of COVID-QU-Ex nest the top folder twice ("X/X/Train"): accept that too
    if top is None:
        candidates = [root]
    elif root.name == top:
        candidates = [root, root / top]
    else:
        candidates = [root / top, root / top / top, root]
    missing = []
    for cand in candidates:
        first = _fits(cand, required)
        if first is None:
            return cand
        missing.append(first)
    head = f"{dataset} not found: {root}"
    if not root.exists():
        raise FileNotFoundError(f"{head} does not exist.\nExpected layout:\n{layout}")
    hint = None
    for up in list(root.parents)[:4]:                        # pointed inside the dataset
        for cand in ([up] if top is None or up.name == top else [up / top, up]):
            if _fits(cand, required) is None:
                hint = f"{dataset}: {root} is a folder inside the dataset; pass {cand} instead"
                break
        if hint:
            break
    if hint is None and root.is_dir():                       # pointed too far up
        subs = [p for p in sorted(root.iterdir()) if p.is_dir()]
        deeper = subs + [q for p in subs for q in sorted(p.iterdir()) if q.is_dir()]
        for cand in deeper:
            if (top is None or cand.name == top) and _fits(cand, required) is None:
                hint = f"{dataset} not found directly in {root}; it is further down: pass {cand} instead"
                break
    message = hint or f"{head} is not in the expected layout (missing " + " and ".join(missing) + ")"
    raise FileNotFoundError(f"{message}.\nExpected layout:\n{layout}")


def raise_unpaired(unpaired: Sequence[Path], mask_dir: str) -> None:
    """FileNotFoundError listing (the first 10) images that have no mask of the same name in mask_dir/."""
    if not unpaired:
        return
    shown = "\n  ".join(str(p) for p in unpaired[:10])
    more = f"\n  ... and {len(unpaired) - 10} more" if len(unpaired) > 10 else ""
    raise FileNotFoundError(f"{len(unpaired)} image(s) without a mask of the same name "
                            f"in '{mask_dir}/':\n  {shown}{more}")


def stratified_split(keys: Sequence[str], strata: Sequence[str], val_fraction: float, test_fraction: float,
                     seed: int, what: str) -> dict[str, list[str]]:
    """Keys (patients or images) -> {"train", "val", "test"} lists, by seed, stratified.

    Per stratum round(fraction * n) keys go to val and to test; overall at least one key in each
    of val and test (taken from the largest stratum) when test_fraction > 0 (val always). Each
    key lands in exactly one split. ValueError naming the fractions if they leave no training
    data, or if there are too few keys.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"{name}={f!r}; expected a share in [0, 1)")
    if not val_fraction > 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction!r}, test_fraction={test_fraction!r}: expected "
                         "val_fraction > 0 and val_fraction + test_fraction < 1")
    need = 2 + (test_fraction > 0)
    if len(keys) < need:
        raise ValueError(f"{what}: need at least {need} to split into train/val"
                         f"{'/test' if test_fraction > 0 else ''}, found {len(keys)}")
    rng = np.random.default_rng(seed)
    by: dict[str, list[str]] = {}
    for key, stratum in sorted(zip(keys, strata)):
        by.setdefault(stratum, []).append(key)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for stratum in sorted(by):
        members = [by[stratum][i] for i in rng.permutation(len(by[stratum]))]
        n_val = int(np.floor(val_fraction * len(members) + 0.5))
        n_test = int(np.floor(test_fraction * len(members) + 0.5))
        out["val"] += members[:n_val]
        out["test"] += members[n_val:n_val + n_test]
        out["train"] += members[n_val + n_test:]
    for part in ("val", "test") if test_fraction > 0 else ("val",):
        if not out[part]:                       # tiny data: move one training key over
            out[part].append(out["train"].pop(int(rng.integers(len(out["train"])))))
    if not out["train"]:
        raise ValueError(f"{what}: val_fraction={val_fraction}, test_fraction={test_fraction} leave no "
                         f"training data out of {len(keys)}")
    return {k: sorted(v, key=natural_key) for k, v in out.items()}
