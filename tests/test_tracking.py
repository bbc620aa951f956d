"""seg.tracking: a tracking URI that cannot work fails at once, in one line naming it; epoch metrics written in the
background land before fit ends and before the run's status, and a failed write fails the run."""
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


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the background-write tests (creating one takes seconds); each test has its own run."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def _epoch(tracker, logger, epoch: int, value: float) -> None:
    from types import SimpleNamespace

    logger.on_epoch_end(SimpleNamespace(epoch=epoch), {"train/loss": value, "val/dice": float("nan")})


def _history(tracker, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in tracker.client.get_metric_history(tracker.run_id, key)]


def test_epoch_metrics_are_written_in_the_background_and_all_there_when_fit_ends(store):
    from seg.engine.hooks import MLflowLogger
    from seg.tracking import Tracker

    with Tracker(store, "t", "r", {}) as tracker:
        logger = MLflowLogger(tracker)
        for epoch in range(3):
            _epoch(tracker, logger, epoch, 1.0 / (epoch + 1))
        logger.on_fit_end(None)
        assert sorted(_history(tracker, "train/loss")) == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
        assert _history(tracker, "val/dice") == []                  # NaN values are left out
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_failed_background_write_fails_the_run_at_the_next_epoch_or_fit_end(store):
    from mlflow.exceptions import MlflowException

    from seg.engine.hooks import MLflowLogger
    from seg.tracking import Tracker

    tracker = Tracker(store, "t", "r", {})
    logger = MLflowLogger(tracker)
    _epoch(tracker, logger, 0, 1.0)
    tracker.flush()                                                 # epoch 0's metrics are in
    tracker.client.delete_run(tracker.run_id)                      # the store now refuses this run's writes
    _epoch(tracker, logger, 1, 0.5)                                 # queued: no error yet
    with pytest.raises(MlflowException, match=f"run {tracker.run_id}: the background metrics write failed: .*active"):
        logger.on_fit_end(None)
    _epoch(tracker, logger, 2, 0.3)
    with pytest.raises(MlflowException, match=f"run {tracker.run_id}: the background metrics write failed: .*active"):
        _epoch(tracker, logger, 3, 0.2)
    tracker.stop_heartbeat()


def test_a_run_ending_with_metrics_still_queued_writes_them_before_its_status(store, monkeypatch):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from seg.engine.hooks import MLflowLogger
    from seg.tracking import Tracker

    write = SqlAlchemyStore.log_batch

    def slow_metrics(self, run_id, metrics=(), params=(), tags=()):
        if metrics:
            time.sleep(0.5)                                         # a busy store: the queued write lands late
        return write(self, run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", slow_metrics)
    seen_at_end = []
    with pytest.raises(KeyboardInterrupt):
        with Tracker(store, "t", "r", {}) as tracker:
            terminate = tracker.client.set_terminated
            monkeypatch.setattr(tracker.client, "set_terminated", lambda run_id, status: (
                seen_at_end.append(_history(tracker, "train/loss")), terminate(run_id, status=status)))
            _epoch(tracker, MLflowLogger(tracker), 0, 0.7)          # queued; SIGTERM right after it (KILLED)
            raise KeyboardInterrupt("SIGTERM")
    assert seen_at_end == [[(0, 0.7)]]                              # in the store before the status
    assert tracker.client.get_run(tracker.run_id).info.status == "KILLED"


def test_two_jobs_describing_the_experiment_or_the_sweep_parent_at_once_do_not_fail_either(monkeypatch, caplog):
    """Both jobs of a sweep find no description; the second insert clashes on a database store (seen on
    PostgreSQL: a job of the SLURM study FAILED on it). The other job's text stands, and a description that
    cannot be set at all is a warning, never a failed run."""
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    from seg import tracking

    class Store:
        tags: dict = {}
        other_job_wins = True

        def __init__(self, tracking_uri):
            pass

        def get_experiment_by_name(self, name):
            return SimpleNamespace(experiment_id="7", tags={})           # read before the other job wrote

        def get_experiment(self, experiment_id):
            return SimpleNamespace(experiment_id=experiment_id, tags=dict(Store.tags))

        def set_experiment_tag(self, experiment_id, key, value):
            if Store.other_job_wins:
                Store.tags[key] = "the other job's text"
            raise MlflowException('(psycopg2.errors.UniqueViolation) duplicate key value violates unique '
                                  'constraint "experiment_tag_pk"')

        def get_run(self, run_id):                               # a sweep's parent run, its name already set
            return SimpleNamespace(info=SimpleNamespace(run_name="study 2026-11-27 13:42"),
                                   data=SimpleNamespace(tags=dict(Store.tags)))

        def set_tag(self, run_id, key, value):
            if Store.other_job_wins:
                Store.tags[key] = value                           # the other job wrote the same note
            raise MlflowException('(psycopg2.errors.UniqueViolation) duplicate key value violates unique '
                                  'constraint "tag_pk"')

    monkeypatch.setattr(tracking, "MlflowClient", Store)
    caplog.set_level("WARNING")
    tracking.describe_experiment("http://127.0.0.1:1", "phantom_xray", "this job's text")
    assert Store.tags == {tracking.NOTE_TAG: "the other job's text"} and not caplog.records
    Store.tags, Store.other_job_wins = {}, False
    tracking.describe_experiment("http://127.0.0.1:1", "phantom_xray", "this job's text")
    (warning,) = caplog.records
    assert warning.getMessage() == ("could not set the description of MLflow experiment phantom_xray: "
                                    "(psycopg2.errors.UniqueViolation) duplicate key value violates unique "
                                    'constraint "experiment_tag_pk"')
    caplog.clear()
    Store.tags, Store.other_job_wins = {}, True                  # every job of a sweep names and describes its parent
    tracking.describe_sweep_parent("http://127.0.0.1:1", "p1", "study 2026-11-27 13:42", "**Sweep** notes")
    assert Store.tags == {tracking.NOTE_TAG: "**Sweep** notes"} and not caplog.records
    Store.tags, Store.other_job_wins = {}, False
    tracking.describe_sweep_parent("http://127.0.0.1:1", "p1", "study 2026-11-27 13:42", "**Sweep** notes")
    (warning,) = caplog.records
    assert warning.getMessage() == ("could not set the description of the sweep's parent run p1: "
                                    "(psycopg2.errors.UniqueViolation) duplicate key value violates unique "
                                    'constraint "tag_pk"')
