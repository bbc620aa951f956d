"""MLflow tracking: the only module that imports mlflow.

Conventions (DESIGN.md): tracking URI `sqlite:///<project>/mlruns/mlflow.db` unless
MLFLOW_TRACKING_URI says otherwise; one experiment per task; run name `{model}-{loss}-s{seed}`;
params = the flattened resolved config; tags model/loss/dataset/seed/sweep_id/config_hash;
per-epoch metrics `train/loss`, `val/dice`, ...; final `test/*`; artifacts config.yaml, best
checkpoint, per-case CSV, overlays.
"""
from __future__ import annotations

import logging
import time
import traceback
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


def default_uri() -> str:
    return f"sqlite:///{DEFAULT_DB}"


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Experiment id by name; new experiments on a local sqlite store keep artifacts under mlruns/artifacts."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        artifact_location = (db.parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # another job of a parallel sweep created it first
        return client.get_experiment_by_name(name).experiment_id


class Tracker:
    """One MLflow run. Use as a context manager: an exception ends the run FAILED with the reason
    (tag `failure_reason`, artifact `traceback.txt`), KeyboardInterrupt ends it KILLED; else FINISHED.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, Any]):
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, uri)
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        self.status = "RUNNING"

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.set_tags({"failure_reason": "interrupted (KeyboardInterrupt)"})
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
