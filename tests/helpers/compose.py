"""The one Hydra compose helper of the tests (built on seg.config.compose, the package's own)."""
from __future__ import annotations

from typing import Sequence

from omegaconf import OmegaConf

from seg.config import compose


def compose_cfg(overrides: Sequence[str] = (), return_hydra_config: bool = False):
    """The composed run config (as run.py would see it) for the given overrides."""
    return compose(list(overrides), return_hydra_config=return_hydra_config)


def compose_resolved(overrides: Sequence[str] = ()) -> dict:
    """compose_cfg(...) as a resolved plain dict (what a run stores in its checkpoints and MLflow)."""
    return OmegaConf.to_container(compose_cfg(overrides), resolve=True)
