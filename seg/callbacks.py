"""Hydra callbacks. SweepSummary: at the end of a multirun, one line per job, and exit 1 if any failed."""
from __future__ import annotations

import logging
import math
import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("segsweep")


class SweepSummary(Callback):
    """Collects each job's status and returned metric; when the sweep ends, logs a summary and exits
    with status 1 if any job failed (every other job has run by then).

    A job fails when seg.train.run recorded a failure for its output dir (it returns NaN so the
    sweep goes on) or when Hydra itself saw an exception. Jobs run in this process (basic launcher).
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str, Any]] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from seg.train import FAILURES

        name = " ".join(job_return.overrides or []) or "(defaults)"
        reason = FAILURES.get(str(config.hydra.runtime.output_dir))
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            reason = f"{type(error).__name__}: {error}"
        if reason:
            self.jobs.append((name, "FAILED", reason))
        else:
            self.jobs.append((name, "FINISHED", job_return._return_value))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.jobs:
            return
        failed = [j for j in self.jobs if j[1] == "FAILED"]
        lines = [f"sweep done: {len(self.jobs) - len(failed)} of {len(self.jobs)} jobs FINISHED, {len(failed)} FAILED"]
        for name, status, value in self.jobs:
            shown = f"best {config.trainer.monitor} {value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)
            lines.append(f"  {status:8s} {name}  ->  {shown}")
        log.info("\n".join(lines))
        if failed:
            sys.exit(1)
