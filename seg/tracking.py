"""MLflow tracking: the only module that imports mlflow.

Conventions (docs/design.md, "Training"): tracking URI `sqlite:///<project>/mlruns/mlflow.db` unless
MLFLOW_TRACKING_URI says otherwise; one experiment per task; run name `{model}-{loss}-s{seed}`;
params = the flattened resolved config; tags model/loss/dataset/seed/sweep_id/config_hash;
per-epoch metrics `train/loss`, `val/dice`, ...; final `test/*`; artifacts config.yaml, best
checkpoint, per-case CSV, overlays.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from seg import PROJECT_ROOT

log = logging.getLogger(__name__)

DEFAULT_DB = PROJECT_ROOT / "mlruns" / "mlflow.db"
MAX_PARAM_LEN = 6000            # MLflow's limit on a param value
BATCH = {"params": 100, "metrics": 1000, "tags": 100}


PARENT_TAG = "segsweep.parent"     # "true" on the parent run of a sweep (not a configuration)


def default_uri() -> str:
    return f"sqlite:///{DEFAULT_DB}"


def resolve_uri(explicit: str | None = None) -> str:
    """The tracking URI a command uses: its own option, else $MLFLOW_TRACKING_URI, else the project store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a local `sqlite:///` store; None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextmanager
def _locked(path: Path):
    """An exclusive flock on `path` (created if missing) for the duration of the block: serialises jobs
    of a sweep running in several processes, or on several machines sharing the folder."""
    import fcntl

    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_READY: set[str] = set()


class TrackingStoreError(RuntimeError):
    """The tracking URI cannot be used (plain path, unreachable server, read-only store): one line, names it."""


# an unreachable server answers within this many seconds (MLflow's own retries take minutes)
HTTP_TIMEOUT_S = float(os.environ.get("SEGSWEEP_TRACKING_TIMEOUT", "5"))


def check_store(uri: str) -> None:
    """Fail fast, naming the URI, where MLflow would fail late or misleadingly.

    - a plain path or `file:` URI: MLflow >= 3.13 refuses file stores (with a "maintenance mode" error);
    - an http(s) server: GET <uri>/health within HTTP_TIMEOUT_S seconds;
    - a local sqlite store whose file or folder is not writable.
    """
    if "://" not in uri or uri.startswith("file:"):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        raise TrackingStoreError(f"tracking URI {uri!r} is a plain folder: MLflow >= 3.13 refuses file stores; use "
                                 f"sqlite:///{Path(path).expanduser().resolve() / 'mlflow.db'} or a server "
                                 "(http://host:port) in MLFLOW_TRACKING_URI / tracking.uri")
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HTTP_TIMEOUT_S) as reply:
                reply.read(64)
        except urllib.error.HTTPError as err:
            if err.code >= 500:
                raise TrackingStoreError(f"MLflow tracking server {uri} answers HTTP {err.code} on /health") from None
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingStoreError(f"MLflow tracking server {uri} is unreachable ({reason}); start it or point "
                                     "MLFLOW_TRACKING_URI / tracking.uri at a running one") from None
        return
    db = sqlite_path(uri)
    if db is not None:
        folder = next((p for p in [db.parent, *db.parent.parents] if p.exists()), None)
        target = db if db.exists() else folder
        if target is not None and not os.access(target, os.W_OK):
            raise TrackingStoreError(f"MLflow store {uri} is read-only ({target} is not writable); use a writable "
                                     "folder or another MLFLOW_TRACKING_URI")


def _ensure_store(uri: str) -> None:
    """Check the store (check_store) and create a local sqlite store once, under a file lock: MLflow creates
    and migrates the schema on the first connection, and jobs of a parallel sweep that do it at the same
    moment collide ("table ... already exists"). Other stores (a tracking server) need nothing more."""
    if uri in _READY:
        return
    check_store(uri)
    db = sqlite_path(uri)
    if db is None:
        _READY.add(uri)
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with _locked(db.with_name(db.name + ".init.lock")):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _READY.add(uri)


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Experiment id by name; new experiments on a local sqlite store keep artifacts under mlruns/artifacts."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    db = sqlite_path(uri)
    artifact_location = (db.parent / "artifacts").resolve().as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # another job of a parallel sweep created it first
        return client.get_experiment_by_name(name).experiment_id


class Tracker:
    """One MLflow run. Use as a context manager: an exception ends the run FAILED with the reason
    (tag `failure_reason`, artifact `traceback.txt`), KeyboardInterrupt ends it KILLED; else FINISHED.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, Any],
                 run_id: str | None = None):
        """A new run, or with run_id an existing one (FAILED / KILLED) reopened as RUNNING to be resumed:
        its tags are updated and its failure reason dropped; its metric history continues."""
        _ensure_store(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, uri)
        tags = {k: str(v) for k, v in tags.items()}
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            if "failure_reason" in self.client.get_run(run_id).data.tags:
                self.client.delete_tag(run_id, "failure_reason")
            self.set_tags(tags)
        self.status = "RUNNING"

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.set_tags({"failure_reason": f"interrupted: {str(exc) or exc_type.__name__}"})
            self.end("KILLED")
        else:
            reason = f"{exc_type.__name__}: {exc}"
            try:
                self.set_tags({"failure_reason": reason[:5000]})
                self.client.log_text(self.run_id, "".join(traceback.format_exception(exc_type, exc, tb)),
                                     "traceback.txt")
            finally:
                self.end("FAILED")
        return False

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
        self.status = status

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), BATCH["params"]):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH["params"]])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), BATCH["metrics"]):
            self.client.log_batch(self.run_id, metrics=items[i:i + BATCH["metrics"]])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), BATCH["tags"]):
            self.client.log_batch(self.run_id, tags=items[i:i + BATCH["tags"]])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LEN else text[:MAX_PARAM_LEN - 3] + "..."


def search_runs(uri: str, experiment: str, filter_string: str = "") -> list:
    """Runs of one experiment (newest first) as mlflow Run objects; [] when the experiment is absent."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=10000))


def metric_steps(uri: str, run_id: str, key: str) -> list[int]:
    """The steps at which a run logged `key` (in logging order)."""
    return [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]


def runs_with_hash(uri: str, experiment: str, config_hash: str) -> list:
    """Active (not deleted) runs of one configuration, newest first."""
    _ensure_store(uri)
    return search_runs(uri, experiment, f"tags.config_hash = '{config_hash}'")


def sweep_parent(uri: str, experiment: str, sweep_id: str, sweep_dir: Path, info: Mapping[str, Any]) -> str:
    """Run id of the parent run of sweep `sweep_id` in `experiment`, created by the first job that asks.

    Jobs of one sweep may run in several processes or machines (joblib, submitit): a lock file in the
    shared sweep dir makes exactly one of them create the parent; the others read its id from
    `<sweep_dir>/.mlflow_parent_<experiment>`. The parent holds the sweep's command line and grid
    (`info`, from seg.callbacks) as tags and params; seg.callbacks sets its final status.
    """
    _ensure_store(uri)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    id_file = sweep_dir / f".mlflow_parent_{safe}"
    with _locked(sweep_dir / ".mlflow_parent.lock"):
        if id_file.exists():
            return id_file.read_text().strip()
        client = MlflowClient(tracking_uri=uri)
        experiment_id = get_or_create_experiment(client, experiment, uri)
        tags = {PARENT_TAG: "true", "sweep_id": sweep_id, "sweep_dir": str(sweep_dir),
                "command": str(info.get("command", ""))[:5000]}
        # a job killed (SLURM requeue, SIGKILL) after creating the parent but before writing id_file left it
        # in MLflow: it is adopted, not created twice
        found = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = 'true' and tags.sweep_dir = "
                                   f"'{sweep_dir}'", max_results=1)
        run_id = found[0].info.run_id if found else \
            client.create_run(experiment_id, run_name=f"sweep-{sweep_id}", tags=tags).info.run_id
        grid = info.get("grid") or {}
        params = [Param(f"grid.{k}", _param_value(v)) for k, v in grid.items()]
        params.append(Param("sweep.overrides", _param_value(" ".join(info.get("overrides", [])) or "-")))
        client.log_batch(run_id, params=params)  # an adopted parent may lack them (same values otherwise)
        id_file.write_text(run_id)
        return run_id


def finish_sweep_parents(sweep_dir: Path, jobs: list[dict]) -> list[str]:
    """Give every parent run of a sweep (one per experiment its jobs logged to) the table of its children
    (artifact children.csv, counts as metrics) and a final status: FINISHED when every job finished or was
    skipped as already finished, FAILED when any failed, KILLED when any was interrupted."""
    import csv
    import io

    done = []
    for id_file in sorted(sweep_dir.glob(".mlflow_parent_*")):
        if id_file.name == ".mlflow_parent.lock":
            continue
        parent_id = id_file.read_text().strip()
        mine = [j for j in jobs if j.get("parent_run_id") == parent_id]
        uri = next((j["tracking_uri"] for j in mine if j.get("tracking_uri")), None)
        if uri is None:
            continue
        client = MlflowClient(tracking_uri=uri)
        statuses = [j["status"] for j in mine]
        counts = {s: statuses.count(s) for s in ("FINISHED", "SKIPPED", "FAILED", "KILLED")}
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["job", "status", "run_id", "run_name", "overrides", "value",
                                                 "reason"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(mine)
        client.log_text(parent_id, buf.getvalue(), "children.csv")
        now = int(time.time() * 1000)
        client.log_batch(parent_id, metrics=[Metric(f"jobs/{k.lower()}", v, now, 0) for k, v in counts.items()]
                         + [Metric("jobs/total", len(mine), now, 0)])
        status = "KILLED" if counts["KILLED"] else "FAILED" if counts["FAILED"] else "FINISHED"
        client.set_terminated(parent_id, status=status)
        done.append(parent_id)
    return done


def kill_sweep_parent(uri: str, parent_run_id: str) -> None:
    """Mark a sweep's parent run KILLED (the sweep was interrupted)."""
    MlflowClient(tracking_uri=uri).set_terminated(parent_run_id, status="KILLED")


def download_artifact(uri: str, run_id: str, artifact_path: str, dst_dir: str | Path) -> Path:
    """Copy one artifact of a run into dst_dir (an existing folder) -> its local path.

    LookupError if the run does not exist, FileNotFoundError if it has no such artifact.
    """
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise LookupError(f"MLflow run {run_id!r} not found at {uri} ({err.message.splitlines()[0]})") from None
    try:
        return Path(client.download_artifacts(run_id, artifact_path, str(dst_dir)))
    except (mlflow.exceptions.MlflowException, OSError) as err:
        raise FileNotFoundError(f"MLflow run {run_id} ({run.info.run_name}, {run.info.status}) has no artifact "
                                f"{artifact_path!r} at {run.info.artifact_uri}: {err}") from None
