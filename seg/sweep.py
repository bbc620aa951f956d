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
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from seg.engine import checkpoint
from seg.engine.checkpoint import write_text_atomic

log = logging.getLogger("segsweep")

# top-level config keys that do not change what a run computes (see config_hash)
HASH_EXCLUDED = ("paths", "tracking", "device", "threads", "hydra", "resume", "debug", "n_jobs", "slurm",
                 "seeds", "class_weights")


def config_hash(resolved: dict, replace: Sequence[str]) -> str:
    """Hash of the settings that define a run's result, machine independent: not the paths, tracking,
    device, threads, nor the sweep mechanics (resume, debug, launcher settings, seeds: each seed is a run).
    `replace`: machine-specific path prefixes (cache, project root) replaced by placeholders."""
    keep = {k: v for k, v in resolved.items() if k not in HASH_EXCLUDED}
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
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
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


def sweep_parent_id(cfg: DictConfig, ctx: dict) -> str:
    """The sweep's parent run (created by its first job; seg.tracking.sweep_parent), with the sweep's
    command line and grid recorded by SweepSummary.on_multirun_start in sweep.json."""
    from seg.tracking import sweep_parent

    info_file = ctx["sweep_dir"] / "sweep.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    return sweep_parent(cfg.tracking.uri, cfg.tracking.experiment, ctx["sweep_id"], ctx["sweep_dir"], info)


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
        from seg.tracking import finish_sweep_parents

        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = read_jobs(sweep_dir)
        if not jobs:
            return
        try:
            finish_sweep_parents(sweep_dir, jobs)
        except Exception as exc:  # the summary and the exit status matter more than the parent's bookkeeping
            log.warning("could not close the sweep's parent run(s) in MLflow: %s: %s", type(exc).__name__, exc)
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
        log.info("\n".join(lines))
        if bad:
            sys.exit(1)
