"""Phantom trees written once per test session into pytest's tmp dirs (never the user's cache)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from seg.data.phantoms import write_acdc, write_covid_qu_ex


@pytest.fixture(scope="session")
def phantom_dir(phantom_cache) -> Path:
    """The session's tmp phantom folder, shared with the end-to-end tests (written once)."""
    return phantom_cache / "phantom"


@pytest.fixture(scope="session")
def covid_root(phantom_dir) -> Path:
    """<phantom_dir>/covid_qu_ex-v1/Infection Segmentation Data (read only: copy before editing)."""
    return write_covid_qu_ex(phantom_dir)


@pytest.fixture(scope="session")
def acdc_root(phantom_dir) -> Path:
    """<phantom_dir>/acdc-v1/database (read only: use `acdc_copy` to edit)."""
    return write_acdc(phantom_dir)


@pytest.fixture
def covid_copy(covid_root, tmp_path) -> Path:
    """An editable copy of the COVID phantom tree (parent folder, as a real download unpacks)."""
    dest = tmp_path / "COVID-QU-Ex" / covid_root.name
    shutil.copytree(covid_root, dest)
    return dest


@pytest.fixture
def acdc_copy(acdc_root, tmp_path):
    """make(training=[...], testing=[...], copy=[...]) -> a database root with those patients.

    Patient folders are symlinked (cheap) unless named in `copy` (real copies, safe to edit).
    """
    def make(training=None, testing=None, copy=()) -> Path:
        root = tmp_path / "ACDC" / "database"
        for part, pids in (("training", training), ("testing", testing)):
            if pids is None:
                continue
            (root / part).mkdir(parents=True)
            for pid in pids:
                src = acdc_root / part / pid
                if pid in copy:
                    shutil.copytree(src, root / part / pid)
                else:
                    (root / part / pid).symlink_to(src, target_is_directory=True)
        return root
    return make


@pytest.fixture(scope="session")
def lung_root(phantom_dir) -> Path:
    """<phantom_dir>/covid_qu_ex_lung-v1/Lung Segmentation Data (read only)."""
    from seg.data.phantoms import write_covid_lung

    return write_covid_lung(phantom_dir)


@pytest.fixture(scope="session")
def radiography_root(phantom_dir) -> Path:
    """<phantom_dir>/covid_radiography-v1/COVID-19_Radiography_Dataset (read only)."""
    from seg.data.phantoms import write_covid_radiography

    return write_covid_radiography(phantom_dir)


@pytest.fixture(scope="session")
def ct_root(phantom_dir) -> Path:
    """<phantom_dir>/ct_heart-v1/ct_heart (read only: copy before editing)."""
    from seg.data.phantoms import write_ct_heart

    return write_ct_heart(phantom_dir)
