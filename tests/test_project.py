"""What a fresh clone needs: the files CI and the README rely on are tracked, and the Make targets
the README names exist and do what they say."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from seg import PROJECT_ROOT


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return set(out.stdout.split())


def test_fresh_clone_has_what_ci_and_make_need():
    tracked = _tracked()
    for path in (".ci/run", "Makefile", "README.md", "requirements.txt", "requirements-dev.txt", "run.py",
                 "conf/config.yaml", "pytest.ini"):
        assert path in tracked, path
    assert "make test" in (PROJECT_ROOT / ".ci/run").read_text()


def test_readme_make_targets_exist():
    readme = (PROJECT_ROOT / "README.md").read_text()
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    for target in set(re.findall(r"make ([a-z][a-z-]*)", readme)):
        assert re.search(rf"^{target}:", makefile, re.M), f"README names 'make {target}', Makefile lacks it"


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_targets_build_the_venv_from_requirements():
    dry = subprocess.run(["make", "-n", "-B", "test"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    assert "-m venv .venv" in dry and "-r requirements.txt -r requirements-dev.txt" in dry
    assert 'pytest -m "not slow"' in dry
    sweep = subprocess.run(["make", "-n", "sweep"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    assert "run.py -m experiment=covid_arch_x_loss" in sweep
    ui = subprocess.run(["make", "-n", "ui"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    assert "--host 127.0.0.1" in ui and "sqlite:///" in ui


def test_torch_is_pinned_to_the_cpu_wheel():
    reqs = (PROJECT_ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", reqs, re.M)
    for line in reqs.splitlines():
        if line and not line.startswith("#"):
            assert "==" in line, f"unpinned requirement: {line}"
