"""Hydra's joblib launcher, made to survive signals and dead workers (conf/launcher/joblib.yaml).

The stock launcher (hydra_plugins.hydra_joblib_launcher) runs the whole sweep as one
`joblib.Parallel` call on loky processes: a worker that dies (the out-of-memory killer's SIGKILL)
breaks the pool, loky kills every other worker, and the sweep aborts with TerminatedWorkerError,
leaving the in-flight runs and the parent RUNNING; SIGTERM to the sweep leaves its workers training
as orphans.

`SafeJoblibLauncher` keeps joblib's process backend (loky) and Hydra's own `execute_job`, and only
changes how jobs are submitted: each job gets its own one-process loky executor, at most `n_jobs`
at a time, so a dead worker breaks only its own executor and fails only its own job (recorded
FAILED in its job_status.json with the exit code; seg.sweep.SweepSummary ends its MLflow run and
counts it). SIGTERM / SIGINT to the sweep are forwarded as SIGTERM to the running workers (each job
ends its run KILLED, seg.train), the workers are stopped (SIGKILL after `grace_s`), every
unfinished run and the parent run are marked KILLED (seg.sweep.close_interrupted) and the process
exits 143 / 130.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher._core import execute_job
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import open_dict

log = logging.getLogger(__name__)

GRACE_S = 60.0       # how long interrupted jobs get to end their runs KILLED before their workers are killed


class _Interrupt(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _death(exc: BaseException) -> str:
    """A loky TerminatedWorkerError / BrokenProcessPool -> the reason a user reads."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "SIGKILL" in str(exc) or "-9" in str(exc):
        return ("its worker process was killed (SIGKILL, as the out-of-memory killer does): "
                f"{type(exc).__name__}: {text}")
    return f"its worker process died: {type(exc).__name__}: {text}"


class SafeJoblibLauncher(JoblibLauncher):
    """The joblib launcher with one loky process per job (see the module docstring). Accepts the stock
    launcher's options; of those, `n_jobs` (parallel jobs; -1 = CPU cores) is used, plus `grace_s`."""

    def __init__(self, **kwargs: Any) -> None:
        self.grace_s = GRACE_S
        super().__init__(**kwargs)

    # -- helpers ---------------------------------------------------------------------------------

    def _n_jobs(self) -> int:
        n = self.joblib.get("n_jobs") or 1
        n = int(n)
        return max(1, os.cpu_count() or 1) if n < 0 else max(1, n)

    def _job_dir(self, idx: int, overrides: Sequence[str]) -> Path | None:
        """The output dir Hydra gives job `idx` (hydra.sweep.dir / hydra.sweep.subdir), computed in this process."""
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.num = idx
                cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
            return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        except Exception as exc:  # a job that cannot be composed failed in its worker with its own message
            log.warning("could not compute the output dir of job #%d: %s: %s", idx, type(exc).__name__, exc)
            return None

    def _record_death(self, idx: int, overrides: Sequence[str], reason: str) -> None:
        """job_status.json of a job whose worker died: FAILED with the reason (the job's own fields kept)."""
        job_dir = self._job_dir(idx, overrides)
        if job_dir is None:
            return
        path = job_dir / "job_status.json"
        try:
            job = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            job = {"overrides": " ".join(overrides)}
        if job.get("status") not in (None, "RUNNING"):
            return                               # it recorded its outcome before the worker died
        from seg.engine.checkpoint import write_text_atomic

        job.update(status="FAILED", reason=f"job #{idx} FAILED: {reason}")
        job_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(job, indent=1, default=str))

    # -- the launch ------------------------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from joblib.externals.loky.process_executor import ProcessPoolExecutor

        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        n_jobs = self._n_jobs()
        log.info("joblib (loky, one process per job, %d at a time) is launching %d jobs; sweep output dir: %s",
                 n_jobs, len(job_overrides), sweep_dir)
        for i, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))

        singleton_state = Singleton.get_state()
        pending = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        pending.reverse()
        running: dict = {}               # future -> (idx, overrides, executor)
        results: dict[int, JobReturn] = {}

        def on_signal(signum, frame):
            raise _Interrupt(signum)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while pending or running:
                while pending and len(running) < n_jobs:
                    idx, overrides = pending.pop()
                    executor = ProcessPoolExecutor(max_workers=1)
                    future = executor.submit(execute_job, idx, overrides, self.hydra_context, self.config,
                                             self.task_function, singleton_state)
                    running[future] = (idx, overrides, executor)
                done, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    idx, overrides, executor = running.pop(future)
                    results[idx] = self._collect(future, idx, overrides)
                    executor.shutdown(wait=True, kill_workers=True)
        except _Interrupt as stop:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self._stop(running, stop.signum, sweep_dir)
            sys.exit(128 + stop.signum)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return [results[i] for i in sorted(results)]

    def _collect(self, future, idx: int, overrides: Sequence[str]) -> JobReturn:
        try:
            ret = future.result()
            assert isinstance(ret, JobReturn)
            return ret
        except Exception as exc:   # the worker died (TerminatedWorkerError, BrokenProcessPool) or could not unpickle
            reason = _death(exc)
            log.error("job #%d (%s) FAILED: %s; the sweep goes on", idx, " ".join(filter_overrides(overrides)), reason)
            self._record_death(idx, overrides, reason)
            # COMPLETED with NaN, as seg.train.run returns for a failed job: Hydra's sweeper re-raises a FAILED
            # JobReturn and would abort the sweep; the failure is in job_status.json for the summary
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.return_value = math.nan
            return ret

    def _stop(self, running: dict, signum: int, sweep_dir: Path) -> None:
        """Forward SIGTERM to every running worker, give their jobs grace_s to end their runs KILLED, kill what
        is left, then mark every unfinished job / run and the parent run KILLED."""
        from seg.sweep import close_interrupted

        name = signal.Signals(signum).name
        workers = {pid: proc for _, _, ex in running.values() for pid, proc in (getattr(ex, "_processes", None) or {}).items()}
        log.warning("%s: stopping the sweep; SIGTERM to %d worker(s) %s", name, len(workers), sorted(workers))
        for pid in workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace_s
        futures = list(running)
        while futures and time.monotonic() < deadline:
            done, futures = wait(futures, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            futures = list(futures)
        for _, _, executor in running.values():
            executor.shutdown(wait=True, kill_workers=True)
        for pid, proc in workers.items():
            proc.join(timeout=10)
            if proc.is_alive():
                os.kill(pid, signal.SIGKILL)
                proc.join(timeout=10)
        try:
            close_interrupted(sweep_dir, name)
        except Exception as exc:
            log.warning("could not mark the sweep's runs KILLED: %s: %s", type(exc).__name__, exc)
        log.error("sweep interrupted by %s: running jobs and the sweep's parent run are KILLED (sweep dir %s)",
                  name, sweep_dir)
