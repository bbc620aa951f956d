"""`launcher=slurm`: hydra-submitit-launcher's SLURM launcher with what segsweep needs on a real cluster.

On top of `hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher` (one sbatch job array,
one configuration per task):

- **dry run** (`slurm.dry_run=true`): prints the sbatch script and the job list, submits nothing, works
  on any machine;
- **off a cluster** (no `sbatch` on PATH) the sweep stops with one line instead of submitit's traceback;
- **tracking**: a `sqlite://` tracking URI is refused (jobs on several nodes would write one sqlite file
  over a network file system) unless `slurm.allow_sqlite=true` (a single-node cluster);
- **pre-emption / time limit**: SLURM's `--signal` (SIGUSR2, submitit requeues the job) ends the MLflow
  run KILLED, as SIGTERM does (seg.train); the requeued job resumes that run from checkpoints/last.pt;
- **job states without accounting**: where `sacct` has no database (a small cluster without slurmdbd)
  job states come from `squeue`, so a job that ends without a result (cancelled, killed, node failure)
  ends the wait; such a job is reported FAILED in the sweep summary instead of raising in the launcher.

The plugin lives in the `hydra_plugins` namespace (Hydra only instantiates launchers from there);
conf/launcher/slurm.yaml selects it.
"""

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

# states after which a SLURM job never runs again (anything else: it is, or may be again, pending or running)
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


@dataclass
class SegsweepSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.segsweep_slurm.slurm_launcher.SegsweepSlurmLauncher"
    dry_run: bool = False            # print the sbatch script and the job list, submit nothing
    allow_sqlite: bool = False       # accept a sqlite:// tracking URI (single-node clusters only)
    slurm_conf: Optional[str] = None  # exported as SLURM_CONF (a cluster whose slurm.conf is not in /etc/slurm)
    tracking_uri: Optional[str] = None  # the sweep's tracking URI, checked before anything is submitted
    requeue: bool = True             # sbatch --requeue (pre-empted or requeued jobs come back), else --no-requeue


ConfigStore.instance().store(group="hydra/launcher", name="segsweep_slurm", node=SegsweepSlurmConf,
                             provider="segsweep")

OWN_KEYS = ("dry_run", "allow_sqlite", "slurm_conf", "tracking_uri", "requeue")


def stop(message: str) -> None:
    """End the command with one line on stderr (exit status 2), no traceback."""
    sys.stderr.write(f"launcher=slurm: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def tracking_problem(uri: Optional[str], allow_sqlite: bool) -> Optional[str]:
    """Why jobs on a cluster must not log to `uri`, or None when they may."""
    if uri and uri.startswith("sqlite:") and not allow_sqlite:
        return (f"the tracking store is {uri}, a sqlite file that jobs on several nodes would corrupt; point "
                "every job at a tracking server: export MLFLOW_TRACKING_URI=http://HOST:PORT (an `mlflow server` "
                "with a PostgreSQL backend, README 'Scaling out'), or set slurm.allow_sqlite=true on a "
                "single-node cluster")
    if uri and not uri.startswith(("http://", "https://", "sqlite:", "databricks")) and "://" not in uri:
        return f"the tracking URI {uri!r} is a local path; jobs on other nodes need http://HOST:PORT"
    return None


def squeue_states(job_ids: Sequence[str]) -> str:
    """`squeue` for every state of the given job ids, as sacct's --parsable2 table (JobID|State|NodeList).

    States that are not final (pending, running, requeued, configuring, suspended, ...) read as RUNNING
    or PENDING, so submitit keeps waiting for them."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T|%N", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lines = ["JobID|State|NodeList"]
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        job, state, nodes = parts
        if state not in FINAL_STATES:
            state = "PENDING" if state == "PENDING" else "RUNNING"
        lines.append(f"{job}|{state}|{nodes}")
    return "\n".join(lines) + "\n"


def _watcher_class():
    from submitit.core import logger as submitit_logger
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueFallbackWatcher(SlurmInfoWatcher):
        """submitit's sacct watcher; when sacct fails (no accounting database) it asks squeue instead."""

        def update(self) -> None:
            import time

            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            try:
                self._output = subprocess.check_output(command, shell=False, stderr=subprocess.PIPE, timeout=60)
            except (subprocess.SubprocessError, OSError):
                job_ids = [c for c in command[command.index("-j"):] if c != "-j"]
                try:
                    self._output = squeue_states(job_ids).encode()
                except (subprocess.SubprocessError, OSError) as exc:
                    submitit_logger.get_logger().warning(f"neither sacct nor squeue answered: {exc}")
                    self._last_status_check = time.time()
                    return
            self._info_dict.update(self.read_info(self._output))
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return SqueueFallbackWatcher


def end_runs_killed_on_requeue() -> None:
    """In a job: wrap submitit's handler of SLURM's `--signal` (SIGUSR2 before a time limit or a pre-emption).
    submitit checkpoints the job (the same Hydra job again), runs `scontrol requeue` and exits with
    SystemExit; the exit is turned into KeyboardInterrupt so seg.train ends the MLflow run KILLED (not FAILED)
    with its last epoch checkpointed, and the requeued job resumes it."""
    import submitit

    signum = submitit.JobEnvironment._usr_sig()
    handler = signal.getsignal(signum)
    if not callable(handler) or getattr(handler, "_segsweep", False):
        return

    def requeued(sig, frame):
        try:
            handler(sig, frame)
        except SystemExit:
            # the requeue makes SLURM send SIGTERM next: it must not interrupt the run's own clean-up
            # (ending it KILLED in MLflow); SIGKILL follows after the cluster's KillWait anyway
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise KeyboardInterrupt(f"{signal.Signals(sig).name}: SLURM pre-empted or timed out the job, "
                                    "which is requeued") from None

    requeued._segsweep = True
    signal.signal(signum, requeued)


class SegsweepSlurmLauncher(SlurmLauncher):
    def __init__(self, **params: Any) -> None:
        own = {k: params.pop(k, None) for k in OWN_KEYS}
        extra = dict(params.get("additional_parameters") or {})
        extra["requeue" if own["requeue"] in (None, True) else "no-requeue"] = True
        params["additional_parameters"] = extra
        super().__init__(**params)
        self.dry_run = bool(own["dry_run"])
        self.allow_sqlite = bool(own["allow_sqlite"])
        self.slurm_conf = own["slurm_conf"]
        self.tracking_uri = own["tracking_uri"]

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Runs in the SLURM job (unpickled by submitit)."""
        end_runs_killed_on_requeue()
        return super().__call__(*args, **kwargs)

    # -- what would be submitted ------------------------------------------------------------------
    def _executor(self, check_srun: bool):
        from submitit.slurm.slurm import SlurmExecutor

        class Executor(SlurmExecutor):
            @classmethod
            def affinity(cls) -> int:  # the dry run renders the script where there is no srun
                return 2 if not check_srun else SlurmExecutor.affinity()

        params = dict(self.params)
        executor = Executor(folder=params.pop("submitit_folder"), max_num_timeout=params.pop("max_num_timeout", 0))
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        generic = {k: v for k, v in params.items() if k in base}
        specific = {k: v for k, v in params.items() if k not in base}
        executor.update_parameters(**executor._convert_parameters(generic), **specific)
        return executor

    def sbatch_script(self, n_jobs: int) -> str:
        """The sbatch script of a sweep of n_jobs jobs, as submitit writes it."""
        executor = self._executor(check_srun=False)
        if n_jobs > 1:
            executor.parameters["map_count"] = n_jobs
        return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")

    def _print_dry_run(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
        assert self.config is not None
        n = len(job_overrides)
        lines = [f"# dry run (slurm.dry_run=true): nothing submitted. `sbatch` would get this script "
                 f"({'a job array of ' + str(n) + ' tasks' if n > 1 else 'one job'}):", "",
                 self.sbatch_script(n).rstrip(), "",
                 f"# jobs ({n}); sweep dir {self.config.hydra.sweep.dir}; tracking {self.tracking_uri}"]
        for i, overrides in enumerate(job_overrides):
            lines.append(f"#{initial_job_idx + i}: {' '.join(filter_overrides(overrides))}")
        problem = tracking_problem(self.tracking_uri, self.allow_sqlite)
        if problem:
            lines.append(f"# NOTE: a real submission would stop here: {problem}")
        print("\n".join(lines), flush=True)

    # -- launch -------------------------------------------------------------------------------------
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and len(job_overrides) > 0
        if self.dry_run:
            self._print_dry_run(job_overrides, initial_job_idx)
            raise SystemExit(0)
        if self.slurm_conf:
            if not Path(self.slurm_conf).is_file():
                stop(f"slurm.conf_file={self.slurm_conf} does not exist: is the cluster up? "
                     "(the local one: make cluster-up)")
            os.environ["SLURM_CONF"] = str(self.slurm_conf)  # submitit's sbatch / squeue and the jobs read it
        missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
        if missing:
            stop(f"no SLURM here ({' and '.join(missing)} not on PATH): run the sweep on a cluster's login node, "
                 "or preview the jobs with slurm.dry_run=true")
        problem = tracking_problem(self.tracking_uri, self.allow_sqlite)
        if problem:
            stop(problem)

        import submitit
        from submitit.slurm import slurm as submitit_slurm

        submitit_slurm.SlurmJob.watcher = _watcher_class()(delay_s=60)
        executor = self._executor(check_srun=True)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        job_params: List[Any] = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        try:
            jobs = executor.map_array(self, *zip(*job_params))
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as exc:
            stop(f"sbatch refused the job array: {' '.join(str(exc).split())[:500]}")
        log.info("submitted SLURM job%s %s", "s" if len(jobs) > 1 else "", jobs[0].job_id.split("_")[0])
        results = []
        for job, (overrides, _, idx, _, _) in zip(jobs, job_params):
            try:
                results.append(job.results()[0])
            except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as exc:
                results.append(self._lost(job, overrides, idx, exc))
        return results

    def _lost(self, job, overrides: List[str], idx: int, exc: Exception) -> JobReturn:
        """A job that ended without a result (cancelled, killed, node failure): recorded FAILED in its
        job_status.json, unless the job itself wrote a final status, so the sweep summary counts it."""
        assert self.config is not None and self.hydra_context is not None
        reason = f"SLURM job {job.job_id} ended without a result (state {job.state}); log {job.paths.stderr}"
        log.error("job #%d (%s): %s", idx, " ".join(filter_overrides(overrides)), reason)
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        status_file = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir) / "job_status.json"
        status: Dict[str, Any] = {}
        if status_file.is_file():
            try:
                status = json.loads(status_file.read_text())
            except (OSError, json.JSONDecodeError):
                status = {}
        if status.get("status") not in ("FINISHED", "SKIPPED", "FAILED", "KILLED"):
            status.update(status="FAILED", reason=reason, overrides=" ".join(overrides),
                          run_name=str(cfg.tracking.run_name), tracking_uri=str(cfg.tracking.uri))
            status_file.parent.mkdir(parents=True, exist_ok=True)
            status_file.write_text(json.dumps(status, indent=1, default=str))
        ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
        ret.return_value = math.nan
        return ret
