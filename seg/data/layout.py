"""Shared helpers of the dataset readers: finding a dataset's root at the right level, splits.

resolve_root accepts the dataset's top folder or its parent (as the download unpacks) and, when
the user points one level off (a parent further up, or a folder inside the dataset), says which
folder to pass instead. stratified_split splits keys (patients, images) by seed. PNG reading
lives in `seg.data.io.png`.

Cross-validation (the `cv` config node, README "Cross-validation") lives here too, in one place for
every dataset: `Folds.of(cv)` reads the node, `assign_folds` deals the keys of a training pool
(patients, images) into K folds stratified by group, `cv_split` makes fold i the validation set and the
other folds the training set, and `split_with_folds` builds the run's split (the test split untouched)
with the fold record that is saved in split.json.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------------
# cross-validation folds (one implementation for every dataset reader)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Folds:
    """K-fold cross-validation of a training pool: fold `fold` (0-based) of `folds` is the validation set,
    the other folds train; `seed` fixes which key goes to which fold (never the training seed), so every
    model, loss and training seed of a study sees the same folds.

    ValueError naming the config option (cv.folds, cv.fold, cv.seed) for a value out of range.
    """

    folds: int
    fold: int
    seed: int = 0

    def __post_init__(self):
        def whole(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not whole(self.folds) or self.folds < 2:
            raise ValueError(f"cv.folds={self.folds!r}: expected an integer >= 2 (or null: no cross-validation)")
        if not whole(self.fold) or not 0 <= self.fold < self.folds:
            raise ValueError(f"cv.fold={self.fold!r}: expected an integer in 0..{self.folds - 1} (cv.folds="
                             f"{self.folds})")
        if not whole(self.seed) or self.seed < 0:
            raise ValueError(f"cv.seed={self.seed!r}: expected an integer >= 0")

    @classmethod
    def of(cls, cv: "Folds | Mapping | None") -> "Folds | None":
        """The `cv` config node (a mapping with folds, fold, seed; or a Folds) -> Folds; None when it is
        None or its `folds` is null (cross-validation off)."""
        if cv is None or isinstance(cv, Folds):
            return cv
        if not isinstance(cv, Mapping):
            raise ValueError(f"cv={cv!r}: expected a mapping with folds, fold and seed (or null)")
        if cv.get("folds") is None:
            if cv.get("fold") is not None:
                raise ValueError(f"cv.fold={cv.get('fold')!r} without cv.folds: set cv.folds=K (K >= 2) too, "
                                 "or leave cv.fold unset (cv.folds=null: no cross-validation)")
            return None
        unknown = set(cv) - {"folds", "fold", "seed"}
        if unknown:
            raise ValueError(f"cv has unknown key(s) {sorted(unknown)}; expected folds, fold and seed")
        if cv.get("fold") is None:
            raise ValueError(f"cv.fold=null: expected an integer in 0..{cv['folds'] - 1 if isinstance(cv['folds'], int) else 'K-1'} "
                             f"with cv.folds={cv['folds']!r} (every fold: -m cv.fold='range(0,{cv['folds']})')")
        return cls(cv["folds"], cv["fold"], cv.get("seed", 0) if cv.get("seed") is not None else 0)

    def record(self) -> dict:
        return {"folds": self.folds, "fold": self.fold, "seed": self.seed}


def assign_folds(keys: Sequence[str], strata: Sequence[str], folds: int, seed: int, what: str) -> dict[str, int]:
    """Keys (patients, images) -> fold index 0..folds-1, stratified, by `seed`.

    The keys of each stratum (taken in natural order, then shuffled by `seed`) are laid one stratum after
    the other (strata by name) and dealt to the folds in turn, so fold sizes differ by at most one and
    each stratum's count per fold by at most one (a stratum with at least `folds` keys is in every fold).
    The result does not depend on the order of `keys`. ValueError naming `what` and cv.folds when there
    are fewer keys than folds or a key is repeated.
    """
    if len(keys) != len(strata):
        raise ValueError(f"{what}: {len(keys)} keys but {len(strata)} strata")
    if len(set(keys)) != len(keys):
        raise ValueError(f"{what}: a key is listed twice; fold assignment needs unique keys")
    if len(keys) < folds:
        raise ValueError(f"cv.folds={folds}: {what} has {len(keys)} key(s) to split, fewer than the folds; "
                         f"use cv.folds <= {len(keys)}")
    rng = np.random.default_rng(seed)
    by: dict[str, list[str]] = {}
    for key, stratum in sorted(zip(keys, strata), key=lambda ks: natural_key(ks[0])):
        by.setdefault(str(stratum), []).append(key)
    order: list[str] = []
    for stratum in sorted(by):
        members = by[stratum]
        order += [members[i] for i in rng.permutation(len(members))]
    return {key: i % folds for i, key in enumerate(order)}


def cv_split(keys: Sequence[str], strata: Sequence[str], cv: Folds, what: str) -> tuple[dict[str, list[str]], dict]:
    """A training pool -> ({"train", "val"} key lists in natural order, the fold record).

    Fold `cv.fold` of `assign_folds(keys, strata, cv.folds, cv.seed)` is "val", the other folds "train".
    The record (saved in split.json as "cv"): {"folds", "fold", "seed", "what", "members": the keys of
    each fold, fold 0 first}.
    """
    assignment = assign_folds(keys, strata, cv.folds, cv.seed, what)
    members = [sorted((k for k, f in assignment.items() if f == i), key=natural_key) for i in range(cv.folds)]
    val = members[cv.fold]
    train = sorted((k for k, f in assignment.items() if f != cv.fold), key=natural_key)
    return {"train": train, "val": val}, {**cv.record(), "what": what, "members": members}


def split_with_folds(pool: Sequence[str], strata: Sequence[str], test: Sequence[str], cv: Folds,
                     what: str) -> dict:
    """The split of a cross-validation run: the pool's fold `cv.fold` as "val", the rest of the pool as
    "train", `test` as given (it never moves), and the fold record under "cv" (see cv_split).
    ValueError when a test key is also in the pool."""
    both = set(pool) & set(test)
    if both:
        raise ValueError(f"{what}: {len(both)} key(s) in both the training pool and the test split, e.g. "
                         f"{sorted(both, key=natural_key)[0]}")
    parts, record = cv_split(pool, strata, cv, what)
    return {"train": parts["train"], "val": parts["val"], "test": list(test), "cv": record}


def split_for(keys: Sequence[str], strata: Sequence[str], val_fraction: float, test_fraction: float, seed: int,
              what: str, cv: "Folds | Mapping | None" = None) -> dict:
    """The split of a dataset without a published one: `stratified_split` by `seed`; with cross-validation
    (`cv`, see Folds.of) the test keys are those stratified_split holds out for seed=cv.seed (so the test
    split never moves with the training seed), and the remaining keys are dealt into folds
    (`split_with_folds`: fold cv.fold is "val"; the fold record under "cv")."""
    folds = Folds.of(cv)
    if folds is None:
        return stratified_split(keys, strata, val_fraction, test_fraction, seed, what)
    fixed = stratified_split(keys, strata, val_fraction, test_fraction, folds.seed, what)
    stratum = dict(zip(keys, strata))
    pool = fixed["train"] + fixed["val"]
    return split_with_folds(pool, [stratum[k] for k in pool], fixed["test"], folds, what)
