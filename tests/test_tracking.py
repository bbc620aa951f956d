"""seg.tracking.check_store: a tracking URI that cannot work fails at once, in one line naming it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from seg import PROJECT_ROOT
from seg.tracking import TrackingStoreError, check_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri", ["/tmp/somewhere/mlruns", "mlruns", "file:///tmp/somewhere/mlruns"])
def test_plain_path_names_the_sqlite_uri_to_use(uri):
    with pytest.raises(TrackingStoreError, match=r"plain folder: MLflow >= 3.13 refuses file stores; use sqlite:///.*mlflow.db"):
        check_store(uri)


def test_unreachable_server_fails_within_seconds_naming_it():
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingStoreError, match=f"MLflow tracking server {uri} is unreachable"):
        check_store(uri)
    assert time.monotonic() - start < 30   # a bound on hanging (MLflow's retries take minutes), not a benchmark


def test_sqlite_store_in_a_new_folder_is_fine(tmp_path):
    check_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")


def test_run_with_unreachable_server_is_one_line_and_exit_1(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}",
           "SEGSWEEP_CACHE": str(tmp_path / "cache")}
    env.pop("SEGSWEEP_DEBUG", None)
    proc = subprocess.run([sys.executable, "run.py", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TrackingStoreError: MLflow tracking server http://127.0.0.1:" in errors[0]
    assert "Traceback" not in proc.stderr
