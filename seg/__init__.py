"""segsweep: Hydra-configured experiment suite for 2D medical image segmentation.

PROJECT_ROOT is the repository that holds conf/ (the Hydra configs), experiments/, outputs/ and
mlruns/ (docs/design.md, "Packaging"). It is found, in order: $SEGSWEEP_ROOT; the folder above this
package when it holds conf/config.yaml (a checkout, or an editable install: `pip install -e .`
leaves the package in the repository); the working directory when it holds conf/config.yaml (a
non-editable install run from a checkout); else the folder above this package.
"""
import os
from pathlib import Path


def _project_root() -> Path:
    env = os.environ.get("SEGSWEEP_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "conf" / "config.yaml").is_file():
        return here
    cwd = Path.cwd()
    if (cwd / "conf" / "config.yaml").is_file():
        return cwd.resolve()
    return here


PROJECT_ROOT = _project_root()
