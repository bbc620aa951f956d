"""Shared fixtures: every test session writes the phantom data and MLflow runs under a temp dir.

`compose_cfg` is re-exported from tests/helpers/compose.py (the one compose helper) for the tests
that import it from here."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import seg.config  # noqa: F401  (project_root resolver)

# Logging each run's MLflow pyfunc model costs about 8 s per run; the tests that check the logged model
# (tests/test_dashboard.py) turn it back on for their own runs.
os.environ.setdefault("SEGSWEEP_LOG_MODEL", "false")
from tests.helpers.compose import compose_cfg, compose_resolved  # noqa: F401  (re-exported)


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory) -> Path:
    """A session-wide SEGSWEEP_CACHE so phantom trees are written once per test session."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["SEGSWEEP_CACHE"] = str(path)
    return path
