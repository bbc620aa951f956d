"""Hydra callbacks. SweepSummary: records the sweep's command line and grid when it starts; when it
ends, prints one line per job, closes the sweep's parent run(s) in MLflow, and exits 1 if any job failed.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("segsweep")


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
    """Works with every launcher: jobs may run in other processes or on other machines, so each job
    writes its outcome to `<sweep_dir>/<job>/job_status.json` and this callback, in the process that
    launched the sweep, reads them at the end. Statuses: FINISHED, SKIPPED (already FINISHED in an
    earlier sweep, resume=true), FAILED, KILLED."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        grid = OmegaConf.to_container(config.hydra.sweeper.params, resolve=True) \
            if config.hydra.sweeper.get("params") else {}
        info = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "argv": sys.argv,
                "grid": grid, "overrides": list(config.hydra.overrides.task),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        (sweep_dir / "sweep.json").write_text(json.dumps(info, indent=1, default=str))

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
