"""MLflow tracking: the only module that imports mlflow (and seg/pyfunc_model.py, the logged model's code).

Conventions (docs/design.md, "Training"): tracking URI `sqlite:///<project>/mlruns/mlflow.db` unless
MLFLOW_TRACKING_URI says otherwise; one experiment per task; run name `{model}-{loss}-s{seed}`;
params = the flattened resolved config; tags model/loss/dataset/seed/sweep_id/config_hash;
per-epoch metrics `train/loss`, `val/dice`, ...; final `test/*`; artifacts config.yaml, best
checkpoint, per-case CSV, overlays.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from seg import PROJECT_ROOT
from seg.background import BackgroundJob

log = logging.getLogger(__name__)

DEFAULT_DB = PROJECT_ROOT / "mlruns" / "mlflow.db"
MAX_PARAM_LEN = 6000            # MLflow's limit on a param value
BATCH = {"params": 100, "metrics": 1000, "tags": 100}


PARENT_TAG = "segsweep.parent"     # "true" on the parent run of a sweep (not a configuration)
# the process training a run: seg.sweep.live_owner tells a live owner from a dead one by these
HEARTBEAT_TAG = "segsweep.heartbeat"   # unix seconds, refreshed every heartbeat_s while the run trains
HOST_TAG = "segsweep.host"
PID_TAG = "segsweep.pid"


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
        check_artifact_location(uri, experiment)
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
                 run_id: str | None = None, heartbeat_s: float | None = None):
        """A new run, or with run_id an existing one (FAILED / KILLED / RUNNING with a dead owner) reopened as
        RUNNING to be resumed: its tags are updated and its failure reason dropped; its metric history continues.
        heartbeat_s: refresh the run's heartbeat tag this often from a daemon thread until the run ends."""
        _ensure_store(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, uri)
        tags = {k: str(v) for k, v in tags.items()}
        tags.update({HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), HEARTBEAT_TAG: f"{time.time():.1f}"})
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
        self._metrics = BackgroundJob(f"metrics-{self.run_id}", daemon=True)   # log_metrics(wait=False)'s writes
        self._stop = threading.Event()
        self._beat = None
        if heartbeat_s:
            self._beat = threading.Thread(target=self._heartbeat, args=(float(heartbeat_s),), daemon=True,
                                          name=f"heartbeat-{self.run_id}")
            self._beat.start()

    def _heartbeat(self, every_s: float) -> None:
        warned = False
        while not self._stop.wait(every_s):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.1f}")
            except Exception as exc:  # a store hiccup must not kill the run; a stale beat only invites a resume
                if not warned:
                    log.warning("heartbeat of run %s failed: %s: %s", self.run_id, type(exc).__name__, exc)
                    warned = True

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=10)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            try:    # a busy store (sqlite "database is locked" while sibling jobs stop too) must not hide the KILLED
                self.set_tags({"failure_reason": f"interrupted: {str(exc) or exc_type.__name__}"})
            except Exception as err:
                log.warning("could not record the interrupt of run %s: %s: %s", self.run_id, type(err).__name__, err)
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
        """A background metrics write still running is waited for first (its error logged: the status is recorded anyway)."""
        self.stop_heartbeat()
        try:
            self.flush()
        except Exception as err:
            log.warning("metrics of run %s were not all logged: %s: %s", self.run_id, type(err).__name__, err)
        self.client.set_terminated(self.run_id, status=status)
        self.status = status

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), BATCH["params"]):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH["params"]])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, wait: bool = True) -> None:
        """Metrics at `step` (None: 0). wait=False writes them from a background thread and returns at once,
        after waiting for the previous such write (one at a time, in order; its error raised here); flush()
        waits for it and raises its error, end() flushes before it records the status.

        (MLflow's own async logging, log_batch(synchronous=False), keeps a thread polling its queue once a
        second: at exit every process waited 0.67 s for it, more than a short run's epochs gained.)"""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        batches = [items[i:i + BATCH["metrics"]] for i in range(0, len(items), BATCH["metrics"])]

        def write() -> None:
            for batch in batches:
                self.client.log_batch(self.run_id, metrics=batch)

        if wait:
            write()
            return
        self.flush()                    # the previous write's error, named as flush() names it
        self._metrics.start(write)

    def flush(self) -> None:
        """Wait for the metrics written with wait=False; MlflowException naming the run if they were not written."""
        try:
            self._metrics.wait()
        except Exception as err:
            raise mlflow.exceptions.MlflowException(
                f"run {self.run_id}: the background metrics write failed: {err}") from err

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


def set_run_tags(uri: str, run_id: str, tags: dict) -> None:
    """Set `tags` (values as strings) on one run of the store at `uri` (e.g. the Optuna sweeper's trial tags)."""
    client = MlflowClient(tracking_uri=uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


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


def _sweep_parents(sweep_dir: Path, jobs: list[dict]):
    """-> (parent run id, the jobs it lists, their tracking URI) for each parent run of a sweep
    (one per experiment its jobs logged to; their ids are in `<sweep_dir>/.mlflow_parent_<experiment>`)."""
    for id_file in sorted(sweep_dir.glob(".mlflow_parent_*")):
        if id_file.name == ".mlflow_parent.lock":
            continue
        parent_id = id_file.read_text().strip()
        mine = [j for j in jobs if j.get("parent_run_id") == parent_id]
        uri = next((j["tracking_uri"] for j in mine if j.get("tracking_uri")), None)
        if uri is not None:
            yield parent_id, mine, uri


def finish_sweep_parents(sweep_dir: Path, jobs: list[dict], status: str | None = None) -> list[str]:
    """Give every parent run of a sweep (one per experiment its jobs logged to) the table of its children
    (artifact children.csv, counts as metrics) and a final status: FINISHED when every job finished or was
    skipped as already finished, FAILED when any failed, KILLED when any was interrupted (or `status`)."""
    import csv
    import io

    done = []
    for parent_id, mine, uri in _sweep_parents(sweep_dir, jobs):
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
        final = status or ("KILLED" if counts["KILLED"] else "FAILED" if counts["FAILED"] else "FINISHED")
        client.set_terminated(parent_id, status=final)
        done.append(parent_id)
    return done


def end_orphan(uri: str, run_id: str, status: str, reason: str) -> bool:
    """End a run left RUNNING by a process that died (status FAILED or KILLED, tag failure_reason) -> True;
    False when the run is not RUNNING (it ended itself) or cannot be read."""
    client = MlflowClient(tracking_uri=uri)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
    except mlflow.exceptions.MlflowException:
        return False
    client.set_tag(run_id, "failure_reason", reason[:5000])
    client.set_terminated(run_id, status=status)
    return True


def running_runs_of_sweep(uri: str, experiment_ids: list[str], sweep_id: str) -> list:
    """Configuration runs (not parents) of a sweep still RUNNING."""
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(experiment_ids, filter_string=f"tags.sweep_id = '{sweep_id}' and "
                              "attributes.status = 'RUNNING'", max_results=10000)
    return [r for r in runs if r.data.tags.get(PARENT_TAG) != "true"]


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


# ----------------------------------------------------------------------------------------------------
# the store as a dashboard (issue 15): provenance, a tidy namespace, descriptions, the sweep's result

NOTE_TAG = "mlflow.note.content"      # the run / experiment description the MLflow UI shows
VERSIONED = ("torch", "mlflow", "hydra-core", "albumentations", "numpy")
# headline params: short names, the settings that describe an experiment (flattened config key each)
HEADLINE_PARAMS = {"model": "model.name", "loss": "loss.name", "dataset": "dataset.name",
                   "optimizer": "optimizer.name", "lr": "optimizer.lr", "epochs": "trainer.epochs",
                   "image_size": "dataset.image_size", "seed": "seed"}
MACHINE_KEYS = ("paths.", "tracking.uri", "hydra.")


def git_output(*args: str) -> str | None:
    """`git <args>` in the project checkout -> its stripped stdout; None when git fails or is absent."""
    import subprocess

    try:
        done = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance_tags(device: Any = None, threads: int | None = None) -> dict[str, str]:
    """Tags that say which code, on which machine, produced a run:
    `mlflow.source.git.commit` (+ `git_dirty` "true"/"false", both absent outside a git checkout),
    `mlflow.source.name` (the script), `mlflow.source.type` LOCAL, `command` (the command line),
    `mlflow.user`, `host`, `device`, `threads`, `version.<package>` for torch, mlflow, hydra-core,
    albumentations, numpy."""
    import getpass
    import importlib.metadata
    import socket
    import sys

    tags = {"mlflow.source.name": Path(sys.argv[0]).name or "python", "mlflow.source.type": "LOCAL",
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:5000], "host": socket.gethostname()}
    commit = git_output("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        status = git_output("status", "--porcelain", "--untracked-files=no")
        tags["git_dirty"] = "unknown" if status is None else str(bool(status)).lower()
        branch = git_output("rev-parse", "--abbrev-ref", "HEAD")
        if branch:
            tags["mlflow.source.git.branch"] = branch
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    for package in VERSIONED:
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            tags[f"version.{package}"] = "absent"
    if device is not None:
        tags["device"] = str(device)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    tags["threads"] = str(threads)
    return tags


def tidy_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flattened resolved config -> the params logged: without `_target_` class paths and machine paths
    (paths.*, tracking.uri, hydra.*), plus the headline params (HEADLINE_PARAMS: model, loss, dataset,
    optimizer, lr, epochs, image_size, seed) under short names, which the UI lists first to pick."""
    out = {k: v for k, v in flat.items()
           if not k.endswith("_target_") and not k.startswith(MACHINE_KEYS)}
    for short, key in HEADLINE_PARAMS.items():
        if key in flat and short not in out:
            out[short] = flat[key]
    return out


def summary_metric_key(key: str) -> str:
    """A summary key of seg.metrics.summarize -> its MLflow metric name: means under `test/`
    (test/dice, test/dice_lv, test/hd95_pooled), case counts under `test_n/` (dice_n -> test_n/dice,
    n_cases -> test_n/cases), spreads under `test_std/` (dice_lv_std -> test_std/dice_lv)."""
    if key == "n_cases":
        return "test_n/cases"
    if key.endswith("_n"):
        return f"test_n/{key[:-2]}"
    if key.endswith("_std"):
        return f"test_std/{key[:-4]}"
    return f"test/{key}"


def _describe(write: Callable[[], None], written: Callable[[], bool], what: str) -> None:
    """write() a description tag that every job of a sweep may write as it starts. Two jobs starting together
    both find it missing, and on a database store the second insert fails (PostgreSQL: "duplicate key value
    violates unique constraint experiment_tag_pk"): when written() then says the other job's text is there, it
    stands. A description is never worth a run: any other failure is a warning naming `what`, and the run
    goes on."""
    try:
        write()
    except mlflow.exceptions.MlflowException as err:
        if not written():
            log.warning("could not set the description of %s: %s", what,
                        str(err).splitlines()[0] if str(err) else type(err).__name__)


def describe_experiment(uri: str, experiment: str, text: str) -> None:
    """Set the experiment's description (`mlflow.note.content`) where it has none (a person's own text stays);
    two jobs at once, or a failure: _describe."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.tags.get(NOTE_TAG):
        return
    _describe(lambda: client.set_experiment_tag(exp.experiment_id, NOTE_TAG, text),
              lambda: bool(client.get_experiment(exp.experiment_id).tags.get(NOTE_TAG)),
              f"MLflow experiment {experiment}")


def sweep_title(study: str, started: str) -> str:
    """The parent run's name: the study (the `experiment=` config, else the MLflow experiment) and the
    minute the sweep started, e.g. `covid_arch_x_loss 2026-11-26 11:15`."""
    return f"{study} {started[:16]}".strip()


def describe_sweep_parent(uri: str, run_id: str, name: str, note: str) -> None:
    """Name a sweep's parent run and set its description (idempotent: every job of the sweep may call it)."""
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    if run.info.run_name != name:
        client.update_run(run_id, name=name)
    if run.data.tags.get(NOTE_TAG) != note:            # two jobs at once, or a failure: _describe
        _describe(lambda: client.set_tag(run_id, NOTE_TAG, note),
                  lambda: client.get_run(run_id).data.tags.get(NOTE_TAG) == note, f"the sweep's parent run {run_id}")


# the sweep link's sort: best test Dice first. Sorted by anything but the start time, the MLflow UI lists a
# filtered search flat (its `nestChildren` is on only without a filter or when sorted by start time), so the
# children show as rows instead of hiding behind the parent's "+"
UI_ORDER_BY = "metrics.`test/dice`"


def ui_url(uri: str, experiment_id: str, filter_string: str, port: int = 5000, order_by: str | None = None,
           ascending: bool = False) -> str:
    """The MLflow UI address that opens an experiment's runs filtered by `filter_string` (sorted by the
    MLflow order key `order_by`, e.g. "metrics.`test/dice`", descending unless `ascending`): the server
    itself for an http(s) store, else `mlflow ui` on 127.0.0.1:<port> (the command to start it is printed with it)."""
    from urllib.parse import quote

    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    url = f"{base}/#/experiments/{experiment_id}/runs?searchFilter={quote(filter_string)}"
    if order_by:
        url += f"&orderByKey={quote(order_by)}&orderByAsc={str(ascending).lower()}"
    return url


def log_sweep_comparison(uri: str, parent_id: str, experiment: str, sweep_id: str) -> dict:
    """Log a sweep's comparison on its parent run: the report's summary frame as an MLflow table
    (`comparison/summary.json`), its heatmap figure (`comparison/heatmaps.png`) and the whole HTML report
    (`report/index.html` with `report/figures/`), built by seg.report for this sweep only (smoke runs
    included: the parent shows what the sweep ran) -> {"table", "figure", "html"} (artifact paths logged)."""
    import tempfile

    import pandas as pd

    from seg.report import build_report

    client = MlflowClient(tracking_uri=uri)
    logged = {}
    with tempfile.TemporaryDirectory(prefix="seg-sweep-report-") as tmp:
        out = Path(tmp) / "report"
        result = build_report(uri, out, experiments=[experiment], sweep_id=sweep_id, include_smoke=True)
        summary = result["files"].get("summary")
        if summary is not None:
            frame = pd.read_csv(summary)
            client.log_table(parent_id, data=frame, artifact_file="comparison/summary.json")
            logged["table"] = "comparison/summary.json"
        heatmaps = sorted((out / "figures").glob("*_heatmaps.png"))
        if heatmaps:
            from PIL import Image

            # an MLflow image (UI "Images" panel + artifact) of the report's heatmap figure
            client.log_image(parent_id, Image.open(heatmaps[0]).convert("RGB"), "comparison/heatmaps.png")
            logged["figure"] = "comparison/heatmaps.png"
        client.log_artifacts(parent_id, str(out), "report")
        logged["html"] = "report/index.html"
    return logged


def link_completed_parents(client: MlflowClient, parent_id: str, skipped: list[str]) -> list[str]:
    """A re-run that skipped every job (all already FINISHED) completes earlier sweeps: their parents get
    tag `segsweep.confirmed_by` = this parent and a line in their description; this parent gets
    `segsweep.completes` = theirs (it holds the same runs' comparison) -> a line naming them."""
    olds = sorted({client.get_run(r).data.tags.get("mlflow.parentRunId", "") for r in skipped} - {"", parent_id})
    for old in olds:
        note = client.get_run(old).data.tags.get(NOTE_TAG, "")
        line = f"Re-run {parent_id} skipped every job of this sweep: all still FINISHED."
        client.set_tag(old, "segsweep.confirmed_by", parent_id)
        if line not in note:
            client.set_tag(old, NOTE_TAG, f"{note}\n\n{line}".strip())
    if olds:
        client.set_tag(parent_id, "segsweep.completes", ",".join(olds))
        return [f"  every job was already FINISHED: the runs belong to parent run(s) {', '.join(olds)}"]
    return []


def conclude_sweep(sweep_dir: Path, jobs: list[dict]) -> list[str]:
    """After finish_sweep_parents: log each parent's comparison (log_sweep_comparison; a failure is logged
    as a warning and a `comparison_error` tag, never raised) -> lines to print: per parent, the UI URL that
    opens the sweep's runs (the children of the parent, plus the runs it skipped as already FINISHED)."""
    lines = []
    for parent_id, mine, uri in _sweep_parents(sweep_dir, jobs):
        client = MlflowClient(tracking_uri=uri)
        parent = client.get_run(parent_id)
        experiment = client.get_experiment(parent.info.experiment_id)
        sweep_id = parent.data.tags.get("sweep_id", sweep_dir.name)
        try:
            logged = log_sweep_comparison(uri, parent_id, experiment.name, sweep_id)
            what = ", ".join(f"{k} {v}" for k, v in logged.items())
            lines.append(f"  parent run {parent.info.run_name!r} ({parent_id}) holds the comparison: {what}")
        except Exception as exc:  # the comparison is a convenience: it never fails the sweep
            log.warning("could not log the sweep's comparison on its parent run %s: %s: %s", parent_id,
                        type(exc).__name__, exc)
            client.set_tag(parent_id, "comparison_error", f"{type(exc).__name__}: {exc}"[:5000])
        skipped = [j["run_id"] for j in mine if j.get("status") == "SKIPPED" and j.get("run_id")]
        if skipped and len(skipped) == len(mine):
            lines += link_completed_parents(client, parent_id, skipped)
        if skipped:
            ids = ", ".join(f"'{r}'" for r in [parent_id, *[j["run_id"] for j in mine if j.get("run_id")]])
            filt = f"attributes.run_id IN ({ids})"
        else:
            filt = f"tags.mlflow.parentRunId = '{parent_id}'"
        start = "" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}, then "
        lines.append(f"  the sweep's runs in the MLflow UI: {start}open {ui_url(uri, experiment.experiment_id, filt, order_by=UI_ORDER_BY)}")
    return lines


def _requirements() -> list[str]:
    """The pinned runtime requirements (requirements.txt), passed to MLflow so it infers none (slow)."""
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def log_pyfunc_model(uri: str, run_id: str, checkpoint_path: Path, example: "Any") -> str:
    """Log a run's best checkpoint as the MLflow model `model` of the run (pyfunc, seg/pyfunc_model.py
    from code with the `seg` package: no pickled object; signature and input example: raw slices float32
    (D, H, W) -> labels uint8 (D, H, W)) -> its model URI `runs:/<run_id>/model`."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example = np.asarray(example, dtype=np.float32)
    # any number of slices of any size: the model resizes to its own image size and back
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
                               outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))
    mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import warnings

    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():  # fluent: links the model to the run
        warnings.filterwarnings("ignore", message=".*type hints.*")
        mlflow.pyfunc.log_model(name="model", python_model=str(PROJECT_ROOT / "seg" / "pyfunc_model.py"),
                                artifacts={"checkpoint": str(checkpoint_path)},
                                code_paths=[str(PROJECT_ROOT / "seg")], signature=signature,
                                input_example=example, pip_requirements=_requirements())
    return f"runs:/{run_id}/model"


def log_dataset_input(uri: str, run_id: str, name: str, split_file: Path, source_root: str,
                      counts: Mapping[str, int] | None = None) -> str:
    """Record the run's data as an MLflow dataset input (the UI's "Datasets" column): `name` (the dataset
    config), digest = the first 16 hex digits of sha256(split.json) (the same split <=> the same digest),
    source = the data root (or the phantom's folder); context tag "training", plus the split sizes as
    input tags -> the digest."""
    import hashlib

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    digest = hashlib.sha256(Path(split_file).read_bytes()).hexdigest()[:16]
    dataset = MetaDataset(LocalArtifactDatasetSource(str(source_root)), name=name, digest=digest)
    tags = [InputTag("mlflow.data.context", "training")]
    tags += [InputTag(f"n_{k}", str(v)) for k, v in (counts or {}).items()]
    MlflowClient(tracking_uri=uri).log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])
    return digest


@contextmanager
def system_metrics(uri: str, run_id: str, enabled: bool, interval_s: float = 10.0):
    """With `enabled` (tracking.system_metrics), MLflow's system metrics monitor samples CPU, memory,
    disk and network (GPU where pynvml finds one) into the run as `system/*` every `interval_s` seconds
    for the duration of the block (needs psutil)."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def _outside_store(uri: str, location: str) -> Path | None:
    """The store folder an experiment's local artifact location points into when that is not the folder of
    this sqlite store (`<old>/artifacts` of a moved or copied project); None when it is inside, or not local."""
    db = sqlite_path(uri)
    if db is None or not location.startswith("file:"):
        return None
    from urllib.parse import unquote, urlparse

    where = Path(unquote(urlparse(location).path))
    store = db.parent.resolve()
    if where == store or store in where.parents:
        return None
    return where.parent if where.name == "artifacts" else where


def check_artifact_location(uri: str, experiment) -> None:
    """Fail, before anything is written, when a local sqlite store's experiment keeps its artifacts outside
    the store's folder: the sqlite file keeps absolute locations, so a copied or moved project would
    otherwise write every artifact into the old project's folder (or fail when it is gone)."""
    old = _outside_store(uri, experiment.artifact_location or "")
    if old is not None:
        raise TrackingStoreError(
            f"MLflow experiment {experiment.name!r} in {uri} keeps its artifacts in {experiment.artifact_location}, "
            f"outside this store's folder {sqlite_path(uri).parent} (a moved or copied project?); nothing was "
            f"written. Point the store at its own folder with: python -m seg.tracking relocate --tracking-uri "
            f"{uri}  (or set MLFLOW_TRACKING_URI to the original store)")


def relocate_store(uri: str) -> list[tuple[str, str]]:
    """Rewrite the absolute artifact locations of a copied / moved local sqlite store so that they point into
    its own folder: every experiment location `<old>/artifacts...` becomes `<store>/artifacts...`, with the
    runs' artifact URIs and the logged models' locations under it -> [(old prefix, new prefix)] changed."""
    import sqlite3

    db = sqlite_path(uri)
    if db is None or not db.is_file():
        raise TrackingStoreError(f"relocate: {uri} is not a local sqlite store file")
    client = MlflowClient(tracking_uri=uri)
    moves = {}
    for exp in client.search_experiments(view_type=3):   # ALL: deleted experiments move too
        old = _outside_store(uri, exp.artifact_location or "")
        if old is not None:
            moves[old.as_uri()] = db.parent.resolve().as_uri()
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        for old, new in moves.items():
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                                  ("logged_models", "artifact_location")):
                if table in tables:
                    con.execute(f"update {table} set {column} = ? || substr({column}, ?) where {column} like ?",
                                (new, len(old) + 1, old + "%"))
    return sorted(moves.items())


def register_best(uri: str, experiment: str, name: str | None = None, monitor: str = "val/dice",
                  sweep_id: str | None = None):
    """Register the validation-selected configuration of a task (seg.report.runs.best_by_validation: the
    configuration with the best mean best/<monitor>, then its best seed) in the Model Registry as a new
    version of `name` (default `segsweep-<experiment>`), from that run's logged pyfunc model `model`;
    the version is tagged with the run, configuration and criterion -> the ModelVersion."""
    from seg.report.runs import best_by_validation

    run, config = best_by_validation(uri, experiment, monitor=monitor, sweep_id=sweep_id)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = name or f"segsweep-{experiment}"
    version = mlflow.register_model(f"runs:/{run.run_id}/model", name,
                                    tags={"run_name": run.name, "configuration": config.label,
                                          "selected_by": f"best mean best/{monitor} over seeds (validation only)",
                                          f"best/{monitor}": str(run.metrics.get(f"best/{monitor}")),
                                          "experiment": experiment})
    client.update_model_version(name, version.version, description=(
        f"{config.label} from experiment {experiment}: the configuration with the best mean best/{monitor} "
        f"over its {len(config.runs)} seed(s), its best seed's run {run.name} ({run.run_id}). Chosen on "
        "validation only; test metrics are in the run."))
    return version


def main(argv: list[str] | None = None) -> int:
    """python -m seg.tracking relocate|register [--tracking-uri URI]: see relocate_store, register_best."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m seg.tracking")
    parser.add_argument("command", choices=["relocate", "register"])
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else the project store")
    parser.add_argument("--experiment", help="register: the task (MLflow experiment), e.g. phantom_xray")
    parser.add_argument("--name", default=None, help="register: the registered model (default segsweep-<experiment>)")
    parser.add_argument("--monitor", default="val/dice", help="register: the validation criterion (default val/dice)")
    parser.add_argument("--sweep-id", default=None, help="register: choose within this sweep (default: every run)")
    args = parser.parse_args(argv)
    uri = resolve_uri(args.tracking_uri)
    if args.command == "register":
        if not args.experiment:
            parser.error("register needs --experiment NAME (the task, e.g. phantom_xray)")
        from seg.report.runs import ReportError

        try:
            version = register_best(uri, args.experiment, args.name, args.monitor, args.sweep_id)
        except (ReportError, mlflow.exceptions.MlflowException) as err:
            print(f"register: {err}")
            return 1
        print(f"registered {version.name} version {version.version} from run {version.run_id} "
              f"({version.tags.get('configuration', '')}); load it as models:/{version.name}/{version.version}")
        return 0
    try:
        moves = relocate_store(uri)
    except TrackingStoreError as err:
        print(err)
        return 1
    for old, new in moves:
        print(f"artifacts {old} -> {new}")
    print(f"{uri}: {len(moves)} artifact location(s) rewritten" if moves else f"{uri}: every location is already in its folder")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
