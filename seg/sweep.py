"""Sweep bookkeeping: config_hash, the resume lookup and plan, job status files and the sweep parent protocol.

Every job of a sweep (any launcher: jobs may run in other processes or on other machines) writes
its outcome to `<sweep_dir>/<job>/job_status.json` (atomically); `SweepSummary`, a Hydra callback
in the process that launched the sweep, reads them at the end, prints one line per job, closes the
sweep's parent run(s) in MLflow and exits 1 if any job failed (docs/design.md, "Sweeps").
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from seg.config import HASH_EXCLUDED, TRAINER_HASH_EXCLUDED, cv_enabled
from seg.engine import checkpoint
from seg.engine.checkpoint import write_text_atomic

log = logging.getLogger("segsweep")



def config_hash(resolved: dict, replace: Sequence[str]) -> str:
    """Hash of the settings that define a run's result, machine independent: not the paths, tracking,
    device, threads, nor the sweep mechanics (resume, debug, launcher settings, seeds: each seed is a run).
    `replace`: machine-specific path prefixes (cache, project root) replaced by placeholders.
    Cross-validation: `cv` (folds, fold, seed) is hashed only when cv.folds is set, so each fold is its own
    configuration (like a seed) and a run without CV keeps the hash it had before the `cv` node existed;
    likewise trainer.val_every counts only when it is not 1 (validate every epoch, as before the key), and
    trainer.checkpoint_every_s never does (when files are written does not change what is trained)."""
    keep = {k: v for k, v in resolved.items() if k not in HASH_EXCLUDED}
    if not cv_enabled(keep):
        keep.pop("cv", None)
    trainer = keep.get("trainer")
    if isinstance(trainer, dict):
        # validating every epoch is what every run did before trainer.val_every existed: the same hash
        dropped = TRAINER_HASH_EXCLUDED + (("val_every",) if trainer.get("val_every", 1) == 1 else ())
        keep["trainer"] = {k: v for k, v in trainer.items() if k not in dropped}
    text = json.dumps(keep, sort_keys=True, default=str)
    for i, path in enumerate(replace):
        text = text.replace(path, f"<path{i}>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hydra_context(cfg: DictConfig) -> dict:
    """Run dir, sweep id, multirun flag and overrides from Hydra; fallbacks when called without it."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return {"output_dir": Path(hc.runtime.output_dir), "multirun": multirun,
                "sweep_id": Path(hc.sweep.dir).name if multirun else "none",
                "sweep_dir": Path(hc.sweep.dir) if multirun else None,
                "overrides": " ".join(hc.overrides.task)}
    except ValueError:  # not under @hydra.main (tests, notebooks)
        from datetime import datetime

        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")   # two runs in one second: two dirs
        return {"output_dir": Path(cfg.paths.output) / "runs" / f"{stamp}_{cfg.tracking.run_name}",
                "multirun": False, "sweep_id": "none", "sweep_dir": None, "overrides": ""}


def previous_runs(uri: str, experiment: str, chash: str) -> tuple[Any | None, Any | None]:
    """(a FINISHED run of this configuration, else the newest FAILED / KILLED / RUNNING one) in MLflow."""
    from seg.tracking import runs_with_hash

    runs = runs_with_hash(uri, experiment, chash)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        return finished[0], None
    unfinished = [r for r in runs if r.info.status in ("FAILED", "KILLED", "RUNNING")]
    return None, (unfinished[0] if unfinished else None)


def _logged_epochs(uri: str, run_id: str) -> int:
    """The last epoch (0-based step) of `train/loss` an MLflow run holds; -1 for none."""
    from seg.tracking import metric_steps

    return max(metric_steps(uri, run_id, "train/loss"), default=-1)


def plan_resume(cfg: DictConfig, unfinished, tags: dict) -> dict:
    """How an unfinished run of this configuration continues -> {"run_id", "ckpt", "folder", "logged"}.

    The newest good state in its checkpoint folder (a damaged last.pt is named and set aside; see
    seg.engine.checkpoint.resume_state). The MLflow run is reopened only if it holds no epoch beyond
    that state (so no step is ever logged twice); otherwise a NEW run continues from the state, with
    the epochs up to it copied from the checkpoint's history, and says which run it replaces.
    """
    plan = {"run_id": None, "ckpt": None, "folder": None, "logged": -1}
    if unfinished is None:
        return plan
    old_dir = unfinished.data.tags.get("output_dir")
    folder = Path(old_dir) / "checkpoints" if old_dir else None
    ckpt, notes = checkpoint.resume_state(folder) if folder is not None else (None, [])
    state_epoch = int(ckpt["loop"]["epoch"]) if ckpt is not None else -1
    logged = _logged_epochs(cfg.tracking.uri, unfinished.info.run_id)
    copyable = ckpt is not None and ckpt.get("history") is not None and len(ckpt["history"]) == state_epoch + 1
    if logged > state_epoch and not (state_epoch < 0 or copyable):
        ckpt, state_epoch, notes = None, -1, notes + ["the checkpoint holds no metric history: starting over"]
    where = f"after epoch {state_epoch + 1}" if ckpt is not None else "from scratch (no good checkpoint)"
    same_run = logged <= state_epoch
    tags["resumed"] = int(unfinished.data.tags.get("resumed", "0")) + 1
    if notes:
        tags["resume_note"] = "; ".join(notes)[:5000]
    if same_run:
        plan["run_id"] = unfinished.info.run_id
    else:
        tags["resumes_run"] = unfinished.info.run_id
        notes.append(f"MLflow run {unfinished.info.run_id} already logged epoch {logged + 1}: continuing in a new run")
    log.info("resuming %s: MLflow run %s was %s; continuing %s%s", cfg.tracking.run_name, unfinished.info.run_id,
             unfinished.info.status, where, "" if same_run else " as a NEW MLflow run (it logged epochs past that state)")
    for note in notes:
        log.warning("resume: %s", note)
    plan.update(ckpt=ckpt, folder=folder, logged=logged if same_run else -1)
    return plan


# ---------------------------------------------------------------------------------------------
# one writer per configuration

HOST = socket.gethostname()


def lock_dir(uri: str, output: str | Path) -> Path:
    """Where the per-configuration lock files live: beside a local sqlite store (`<db dir>/locks`), so every
    checkout writing to that store shares them; for a server store `<paths.output>/locks` (other machines
    are kept out by the run's heartbeat, see live_owner)."""
    from seg.tracking import sqlite_path

    db = sqlite_path(uri)
    return (db.parent if db is not None else Path(output)) / "locks"


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


class ConfigLock:
    """An exclusive, non-blocking fcntl lock on `<folder>/<config_hash>.lock`, held by the job that trains
    the configuration for its whole run (the OS drops it when the process dies, however it dies).
    The file holds the holder's {"pid", "host", "run_id", "since"} for the message of a job that finds it busy."""

    def __init__(self, folder: str | Path, chash: str):
        self.path = Path(folder) / f"{chash}.lock"
        self._fh = None
        self.info: dict = {}

    def acquire(self) -> dict | None:
        """Take the lock -> None; or, when another process holds it, that holder's info ({} if unknown)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return _read_holder(self.path)
        self._fh = fh
        self.note(pid=os.getpid(), host=HOST, since=time.strftime("%Y-%m-%d %H:%M:%S"))
        return None

    def note(self, **info: Any) -> None:
        """Record more about the holder (the MLflow run id once it exists)."""
        if self._fh is None:
            return
        self.info.update(info)
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(self.info))
        self._fh.flush()

    def release(self) -> None:
        import fcntl

        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def holder_text(info: dict) -> str:
    """"run X on host H (pid P)" from a lock holder's info or a run's owner tags."""
    run = f"run {info['run_id']}" if info.get("run_id") else "another job (no MLflow run yet)"
    return f"{run} on host {info.get('host', '?')} (pid {info.get('pid', '?')})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_owner(run, stale_after_s: float, now: float | None = None) -> dict | None:
    """The owner of a RUNNING run of this configuration if it is still training it, else None.

    Alive = its heartbeat tag (seg.tracking.HEARTBEAT_TAG, refreshed by the job every tracking.heartbeat_s)
    is younger than `stale_after_s` and, on this host, its process still exists. A run without a heartbeat
    (written before this rule, or killed before its first beat) counts as dead: it is resumed.
    """
    from seg.tracking import HEARTBEAT_TAG, HOST_TAG, PID_TAG

    tags = run.data.tags
    try:
        beat = float(tags.get(HEARTBEAT_TAG, "0"))
        pid = int(tags.get(PID_TAG, "0"))
    except ValueError:
        return None
    now = time.time() if now is None else now
    if now - beat >= stale_after_s:
        return None
    host = tags.get(HOST_TAG, "?")
    if host == HOST and pid and not _pid_alive(pid):
        return None
    return {"run_id": run.info.run_id, "host": host, "pid": pid, "age_s": round(now - beat, 1)}


@contextmanager
def config_lock(uri: str, output: str | Path, chash: str):
    """with config_lock(...) as (lock, holder): holder is None when this job holds the configuration's lock,
    else the info of the process that holds it (the job must skip the configuration)."""
    lock = ConfigLock(lock_dir(uri, output), chash)
    holder = lock.acquire()
    try:
        yield lock, holder
    finally:
        lock.release()


def sweep_parent_id(cfg: DictConfig, ctx: dict) -> str:
    """The sweep's parent run (created by its first job; seg.tracking.sweep_parent), with the sweep's
    command line and grid recorded by SweepSummary.on_multirun_start in sweep.json."""
    from seg.tracking import sweep_parent

    info_file = ctx["sweep_dir"] / "sweep.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    run_id = sweep_parent(cfg.tracking.uri, cfg.tracking.experiment, ctx["sweep_id"], ctx["sweep_dir"], info)
    name_parent(cfg, run_id, info, ctx["sweep_id"])
    return run_id


def study_of(info: dict, experiment: str) -> str:
    """The study a sweep runs: its `experiment=` config (covid_arch_x_loss), else the MLflow experiment."""
    chosen = [o.split("=", 1)[1] for o in info.get("overrides", []) if o.startswith(("experiment=", "+experiment="))]
    return chosen[-1] if chosen else experiment


def name_parent(cfg: DictConfig, run_id: str, info: dict, sweep_id: str) -> None:
    """Name the parent run after the study and the sweep's start (seg.tracking.sweep_title) and describe
    it: the command, the grid, and where its comparison appears when the sweep ends."""
    from seg.tracking import describe_sweep_parent, sweep_title

    study = study_of(info, str(cfg.tracking.experiment))
    started = info.get("started") or sweep_id.replace("_", " ").replace("-", ":")
    grid = info.get("grid") or {}
    note = "\n\n".join([
        f"**Sweep {sweep_id}** of study `{study}` in experiment `{cfg.tracking.experiment}`, started {started}.",
        f"Command: `{info.get('command', '?')}`",
        "Grid: " + ("; ".join(f"`{k}` = {v}" for k, v in grid.items())
                    or f"`{' '.join(info.get('overrides', [])) or '(defaults)'}`"),
        "Children: one run per configuration (expand this row, or filter `tags.mlflow.parentRunId`). When the "
        "sweep ends this run holds its comparison: `comparison/summary.json` (table), `comparison/heatmaps.png` "
        "and the HTML report `report/index.html`; `children.csv` lists every job and its status."])
    describe_sweep_parent(cfg.tracking.uri, run_id, sweep_title(study, started), note)


def write_job_status(out_dir: Path, job: dict) -> None:
    """<out_dir>/job_status.json, atomically; a failure to write is logged, never raised (the run's own
    outcome matters more)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "job_status.json", json.dumps(job, indent=1, default=str))
    except OSError as exc:
        log.warning("could not write %s: %s", out_dir / "job_status.json", exc)


def read_jobs(sweep_dir: Path) -> list[dict]:
    """The job_status.json every job of a sweep leaves in its output dir (seg.train.run), in job order."""
    jobs = []
    for path in sweep_dir.glob("*/job_status.json"):
        try:
            job = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            job = {"status": "UNKNOWN", "reason": f"unreadable {path}: {exc}"}
        job["job"] = path.parent.name
        jobs.append(job)

    def order(job: dict) -> tuple:
        head = job["job"].split("_", 1)[0]
        return (int(head) if head.isdigit() else math.inf, job["job"])

    return sorted(jobs, key=order)


def settle_jobs(sweep_dir: Path, jobs: list[dict], interrupted: bool | str = False) -> int:
    """After every job of a sweep has returned (or been stopped): a job still RUNNING in its job_status.json
    lost its process (killed, e.g. by the out-of-memory killer, or crashed); it becomes FAILED (KILLED when
    the sweep was interrupted; `interrupted` may name the signal), its file is rewritten, and its MLflow run -
    and any other run of the sweep still RUNNING in MLflow - is ended the same way with the reason.
    Returns the number of runs ended."""
    from seg.tracking import end_orphan, running_runs_of_sweep

    status = "KILLED" if interrupted else "FAILED"
    stopped = f"when the sweep was interrupted ({interrupted})" if isinstance(interrupted, str) \
        else "when the sweep was interrupted"
    ended = 0
    for job in jobs:
        if job["status"] == "RUNNING":
            job["status"] = status
            job["reason"] = (f"the job's process (pid {job.get('pid', '?')} on host {job.get('host', '?')}) ended "
                             + (stopped if interrupted else
                                "without recording an outcome: killed (e.g. by the out-of-memory killer) or crashed"))
            write_job_status(sweep_dir / job["job"], {k: v for k, v in job.items() if k != "job"})
            log.error("job %s %s: %s", job["job"], status, job["reason"])
        if job["status"] in ("FAILED", "KILLED") and job.get("run_id") and job.get("tracking_uri"):
            try:
                ended += end_orphan(job["tracking_uri"], job["run_id"], job["status"], job.get("reason") or status)
            except Exception as exc:
                log.warning("could not end run %s: %s: %s", job["run_id"], type(exc).__name__, exc)
    sweep_id = sweep_dir.name
    for id_file in sorted(sweep_dir.glob(".mlflow_parent_*")):
        if id_file.name == ".mlflow_parent.lock":
            continue
        parent_id = id_file.read_text().strip()
        uri = next((j["tracking_uri"] for j in jobs if j.get("parent_run_id") == parent_id and j.get("tracking_uri")),
                   None)
        if uri is None:
            continue
        try:
            from mlflow import MlflowClient

            experiment_id = MlflowClient(tracking_uri=uri).get_run(parent_id).info.experiment_id
            for run in running_runs_of_sweep(uri, [experiment_id], sweep_id):
                reason = ("its job's process ended " + (stopped if interrupted else
                          "without recording an outcome (killed or crashed)"))
                ended += end_orphan(uri, run.info.run_id, status, reason)
        except Exception as exc:
            log.warning("could not check the sweep's runs in MLflow: %s: %s", type(exc).__name__, exc)
    return ended


def close_interrupted(sweep_dir: Path, signame: str = "interrupted") -> None:
    """The sweep was stopped by SIGTERM / SIGINT (seg.launcher): every unfinished job and run KILLED, and the
    parent run(s) KILLED."""
    from seg.tracking import finish_sweep_parents

    jobs = read_jobs(sweep_dir)
    settle_jobs(sweep_dir, jobs, interrupted=signame)
    if jobs:
        finish_sweep_parents(sweep_dir, jobs, status="KILLED")


class SweepSummary(Callback):
    """Works with every launcher: each job writes its outcome to `<sweep_dir>/<job>/job_status.json`
    and this callback, in the process that launched the sweep, reads them at the end. Statuses:
    FINISHED, SKIPPED (already FINISHED in an earlier sweep, resume=true), FAILED, KILLED."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        grid = OmegaConf.to_container(config.hydra.sweeper.params, resolve=True) \
            if config.hydra.sweeper.get("params") else {}
        info = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "argv": sys.argv,
                "grid": grid, "overrides": list(config.hydra.overrides.task),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text_atomic(sweep_dir / "sweep.json", json.dumps(info, indent=1, default=str))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from seg.tracking import conclude_sweep, finish_sweep_parents

        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = read_jobs(sweep_dir)
        if not jobs:
            return
        try:
            settle_jobs(sweep_dir, jobs)
        except Exception as exc:
            log.warning("could not settle the sweep's unfinished jobs: %s: %s", type(exc).__name__, exc)
        try:
            finish_sweep_parents(sweep_dir, jobs)
        except Exception as exc:  # the summary and the exit status matter more than the parent's bookkeeping
            log.warning("could not close the sweep's parent run(s) in MLflow: %s: %s", type(exc).__name__, exc)
        try:
            concluded = conclude_sweep(sweep_dir, jobs)
        except Exception as exc:  # as above: a comparison that cannot be logged never fails the sweep
            log.warning("could not log the sweep's comparison in MLflow: %s: %s", type(exc).__name__, exc)
            concluded = []
        counts = {s: sum(j["status"] == s for j in jobs) for s in ("FINISHED", "SKIPPED", "FAILED", "KILLED")}
        bad = len(jobs) - counts["FINISHED"] - counts["SKIPPED"]
        lines = [f"sweep done: {counts['FINISHED']} of {len(jobs)} jobs FINISHED, {counts['SKIPPED']} SKIPPED "
                 f"(already finished), {bad} FAILED" + (f" ({counts['KILLED']} KILLED)" if counts["KILLED"] else "")]
        common = set.intersection(*(set((j.get("overrides") or "").split()) for j in jobs))
        for job in jobs:
            label = " ".join(o for o in (job.get("overrides") or "").split() if o not in common) or "(defaults)"
            value = job.get("value")
            if job["status"] in ("FINISHED", "SKIPPED") and isinstance(value, (int, float)) and not math.isnan(value):
                shown = f"best {config.trainer.monitor} {value:.4f}"
            else:
                shown = ""
            if job.get("reason"):
                shown = f"{shown}  ({job['reason']})" if shown else job["reason"]
            lines.append(f"  {job['status']:8s} {label}  ->  {shown}")
        if common:
            lines.append(f"  every job: {' '.join(sorted(common))}")
        lines.append(f"  sweep dir {sweep_dir}")
        lines += concluded
        log.info("\n".join(lines))
        if bad:
            sys.exit(1)
