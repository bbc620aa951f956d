"""Shared fixtures: every test session writes the phantom data and MLflow runs under a temp dir.

`compose_cfg` is re-exported from tests/helpers/compose.py (the one compose helper) for the tests
that import it from here."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import seg.config  # noqa: F401  (project_root resolver)

# Logging each run's MLflow pyfunc model costs about 8 s per run; the tests that check the logged model
# (tests/test_dashboard.py) turn it back on for their own runs.
os.environ.setdefault("SEGSWEEP_LOG_MODEL", "false")
# `make test` runs the suite on two pytest-xdist workers: one torch / BLAS thread each (and in the runs
# they start as subprocesses), or two workers of two threads fight over two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
from tests.helpers.compose import compose_cfg, compose_resolved  # noqa: F401  (re-exported)


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory) -> Path:
    """A session-wide SEGSWEEP_CACHE so phantom trees are written once per test session."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["SEGSWEEP_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables and no runs (creating one runs migrations, 3-5 s on 2 cores: once)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("empty_store")
    MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").search_experiments()
    return root / "mlflow.db"


@pytest.fixture
def seeded_store(empty_store, tmp_path) -> str:
    """`tmp_path/mlflow.db` made a copy of the empty migrated store (what a first run would create, without
    paying the migrations per test) -> its sqlite URI."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"
