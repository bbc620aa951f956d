"""Config helpers: the `project_root` resolver and instantiation of `_target_` nodes.

Paths resolve from the project root, never from the working directory (Hydra does not chdir).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seg import PROJECT_ROOT

# top-level config keys that do not change what a run computes: config_hash (seg.sweep) leaves them out,
# and the report (seg.report.runs) does not split configurations on them. Paths, tracking, the device, its
# threads and the weights' memory layout are machine-specific, the rest is sweep mechanics (each seed is
# its own run; `class_weights` reaches the result through the loss node, which is hashed).
HASH_EXCLUDED = ("paths", "tracking", "device", "threads", "memory_format", "hydra", "resume", "debug", "n_jobs",
                 "slurm", "seeds", "class_weights")
TRAINER_HASH_EXCLUDED = ("checkpoint_every_s",)    # trainer keys that change when files are written, not results

# Keys that describe a node for humans and MLflow (run names, tags) and are not constructor arguments.
META_KEYS = ("name", "size")

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def cpu_share(n_jobs: int) -> int:
    """Torch threads per job when n_jobs run at once on this machine: its cores split evenly, at least 1."""
    n_jobs = int(n_jobs)
    if n_jobs < 1:
        raise ValueError(f"n_jobs={n_jobs}; expected an integer >= 1")
    return max(1, (os.cpu_count() or 1) // n_jobs)


if not OmegaConf.has_resolver("cpu_share"):
    OmegaConf.register_new_resolver("cpu_share", cpu_share)


def if_null(value: Any, then: Any, otherwise: Any) -> Any:
    """`${if_null:${dataset.root},A,B}`: A when the value is null (e.g. the phantom), else B."""
    return then if value is None or (isinstance(value, str) and value.strip() == "") else otherwise


if not OmegaConf.has_resolver("if_null"):
    OmegaConf.register_new_resolver("if_null", if_null)


def cv_suffix(folds: Any, fold: Any) -> str:
    """`${cv_suffix:${cv.folds},${cv.fold}}`: "-f<fold>" for a cross-validation run (folds set), else ""."""
    return "" if folds is None else f"-f{fold}"


if not OmegaConf.has_resolver("cv_suffix"):
    OmegaConf.register_new_resolver("cv_suffix", cv_suffix)


def cv_enabled(cfg: Any) -> bool:
    """True when a (resolved or composed) config runs k-fold cross-validation: `cv.folds` set."""
    cv = cfg.get("cv") if hasattr(cfg, "get") else None
    return cv is not None and cv.get("folds") is not None


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a `_target_` node without its META_KEYS; kwargs are run-time arguments.

    Returns None for an empty node (e.g. `scheduler=none`).
    """
    if node is None or "_target_" not in node:
        return None
    container = OmegaConf.to_container(node, resolve=True)
    for key in META_KEYS:
        container.pop(key, None)
    if container.get("_partial_"):  # arguments that arrive at run time (optimizer params, ...)
        return instantiate(container)(**kwargs)
    try:
        return instantiate(container, **kwargs)
    except InstantiationException as err:
        # Hydra wraps the constructor's own error in a one-line repr ("\n" escaped); the original
        # exception (e.g. a missing dataset root with its expected layout) reads better as it is.
        if err.__cause__ is not None:
            raise err.__cause__ from None
        raise


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml composed with `overrides`, as run.py would see it (outside @hydra.main): the one
    compose helper of the package (seg.models.summary, the benchmarks, tests/helpers use it)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]} (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def scheduler_patience_warning(cfg: DictConfig) -> str | None:
    """A warning when the plateau scheduler's LR cut can never act before early stopping; else None.

    ReduceLROnPlateau cuts the LR once more than `scheduler.patience` epochs in a row fail to improve,
    i.e. at the (patience + 1)-th such epoch; early stopping ends training after
    `trainer.early_stopping` of them (the same epoch's scheduler step comes first). The reduced LR
    trains at least one epoch only when patience + 1 < early_stopping, i.e. patience <= early_stopping
    - 2. With early stopping off (0), the bound is `trainer.epochs` instead. Other schedulers: None.
    """
    scheduler = cfg.get("scheduler")
    if scheduler is None or "patience" not in scheduler or not str(scheduler.get("_target_", "")).endswith(
            "ReduceLROnPlateau"):
        return None
    patience = int(scheduler.patience)
    trainer = cfg.trainer
    stop, what = int(trainer.get("early_stopping") or 0), "trainer.early_stopping"
    if stop <= 0:
        stop, what = int(trainer.epochs), "trainer.epochs"
    if patience + 1 < stop:
        return None
    return (f"scheduler.patience={patience} can never lower the learning rate before training ends: the LR is cut "
            f"after {patience + 1} epochs without improvement, and {what}={stop} ends training by then. Use "
            f"scheduler.patience <= {max(stop - 2, 0)} (or raise {what}).")
