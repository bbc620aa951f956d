"""Shared fixtures: every test session writes the phantom data and MLflow runs under a temp dir."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import seg.config  # noqa: F401  (project_root resolver)
from seg import PROJECT_ROOT


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory) -> Path:
    """A session-wide SEGSWEEP_CACHE so phantom trees are written once per test session."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["SEGSWEEP_CACHE"] = str(path)
    return path


def compose_cfg(overrides: list[str] = ()):
    """The composed run config (as run.py would see it) for the given overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=list(overrides))
