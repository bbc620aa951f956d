"""`hparams=optuna`: a Hydra sweeper that runs an Optuna study (TPE) over segsweep's runs.

    python run.py -m hparams=optuna model=resunet hydra.sweeper.n_trials=30

- **search space**: `hydra.sweeper.params` (conf/hparams/optuna.yaml) plus sweep overrides on the command
  line, in Hydra's override grammar: `interval(a, b)` -> a float in [a, b]; `tag(log, interval(a, b))` ->
  log-uniform; `tag(int, interval(a, b))` -> an integer; `range(a, b[, step])` -> the values Hydra's range
  lists (b excluded), integers or floats on that step grid; `choice(x, y, ...)` or `x,y,...` -> categorical.
  Plain values are fixed for every trial.
- **trials**: `n_jobs` trials per batch, launched through the configured launcher (basic, joblib, slurm);
  the objective is the float the task returns (seg.train.run: the best validation Dice). A trial whose job
  raised or returned a non-finite value is told to Optuna as FAIL and the search goes on.
- **storage** (`hydra.sweeper.storage`): `auto` (default) = `$SEGSWEEP_OPTUNA_STORAGE` if set, else derived from
  the MLflow tracking URI: `sqlite:///DIR/mlflow.db` -> `sqlite:///DIR/optuna.db` (a file of its own: MLflow and
  Optuna both keep their schema version in an alembic table named `alembic_version`, so one file cannot hold
  both); `postgresql://...` -> the same database, schema `optuna` (created if missing); a tracking server
  (http/https) or another store -> in memory with a one-line warning. `null` = in memory. An explicit URL is
  used as given, except that a PostgreSQL URL without `options` gets the `optuna` schema.
- **resume**: the study (`study_name`, `load_if_exists`) continues where it stopped: `n_trials` is the study's
  total, its COMPLETE trials count toward it. A search stopped while trials ran (Ctrl-C, SIGTERM, a launcher
  that exits) marks them FAIL and re-enqueues their parameters; trials that a search killed outright left
  RUNNING (its process is gone) get the same at the next search. The configuration is trained again first,
  and seg's own resume by config_hash continues its MLflow run from the last checkpoint. The sampler's seed is `seed` plus the number of trials
  the study already holds, so a resumed search does not replay the random start-up trials of the first one.
- **MLflow**: each trial's run is tagged `optuna.study` and `optuna.trial`; the trial keeps the run id as
  user attribute `mlflow_run_id`.
"""

import json
import logging
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

STORAGE_ENV = "SEGSWEEP_OPTUNA_STORAGE"   # the study's database where the tracking URI does not give one
SCHEMA = "optuna"                         # PostgreSQL schema of the study tables (MLflow keeps `public`)
STUDY_FILE = "optuna.db"                  # sqlite: the study's file beside the tracking store's mlflow.db
TAGS = ("log", "int")                     # tags the search space understands
HOST = socket.gethostname()


@dataclass
class SamplerConf:
    seed: Optional[int] = None        # TPE's seed (conf/hparams/optuna.yaml: `${seed}`); null = random
    n_startup_trials: int = 10        # random trials before TPE models the results


@dataclass
class SegsweepOptunaConf:
    _target_: str = "hydra_plugins.segsweep_optuna.optuna_sweeper.SegsweepOptunaSweeper"
    direction: str = "maximize"       # maximize | minimize the task's return value
    study_name: Optional[str] = None  # null: Optuna names a new study (and nothing can resume it)
    storage: Optional[str] = "auto"   # auto | null (in memory) | a database URL
    n_trials: int = 20                # the study's total (COMPLETE trials of earlier searches count)
    n_jobs: int = 1                   # trials per batch (launched together)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="segsweep_optuna", node=SegsweepOptunaConf,
                             provider="segsweep")


class SearchSpaceError(ValueError):
    """A search-space entry Optuna cannot sample; the message names the key."""


# ---------------------------------------------------------------------------------------------
# search space


def _distribution(key: str, sweep: Any) -> Any:
    """One parsed sweep (Hydra's ChoiceSweep / RangeSweep / IntervalSweep) -> an Optuna distribution."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    tags = set(sweep.tags)
    unknown = sorted(tags - set(TAGS))
    if unknown:
        raise SearchSpaceError(f"{key}: unknown tag(s) {', '.join(unknown)}; the search space knows {', '.join(TAGS)}")
    log_scale = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        if tags:
            raise SearchSpaceError(f"{key}: tag({', '.join(sorted(tags))}) applies to interval() / range(), not choice()")
        for value in sweep.list:
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise SearchSpaceError(f"{key}: choice() values must be numbers, strings, booleans or null; "
                                       f"got {value!r}")
        return CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, RangeSweep):
        values = [float(v) if not isinstance(v, int) else v for v in sweep.range()]
        if not values:
            raise SearchSpaceError(f"{key}: range({sweep.start}, {sweep.stop}, {sweep.step}) holds no value")
        step = abs(sweep.step)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (sweep.start, sweep.stop, sweep.step)):
            if log_scale and step != 1:
                raise SearchSpaceError(f"{key}: tag(log, range(...)) needs step 1 (Optuna samples log-scaled "
                                       f"integers without a step); got step {step}")
            return IntDistribution(min(values), max(values), step=step, log=log_scale)
        if log_scale:
            raise SearchSpaceError(f"{key}: tag(log, range(...)) of floats: use tag(log, interval({sweep.start}, "
                                   f"{sweep.stop})) for a log-uniform float")
        low, high = min(values), max(values)
        if low == high:
            return CategoricalDistribution([low])
        return FloatDistribution(low, high, step=float(step))
    if isinstance(sweep, IntervalSweep):
        low, high = float(sweep.start), float(sweep.end)
        if not low < high:
            raise SearchSpaceError(f"{key}: interval({sweep.start}, {sweep.end}) needs its start below its end")
        if log_scale and low <= 0:
            raise SearchSpaceError(f"{key}: tag(log, interval({sweep.start}, {sweep.end})) needs a start above 0")
        if "int" in tags:
            if low != int(low) or high != int(high):
                raise SearchSpaceError(f"{key}: tag(int, interval({sweep.start}, {sweep.end})) needs whole numbers")
            return IntDistribution(int(low), int(high), log=log_scale)
        return FloatDistribution(low, high, log=log_scale)
    raise SearchSpaceError(f"{key}: {type(sweep).__name__} is not a search space (use interval, range or choice)")


def search_space(params: Mapping[str, Any], arguments: Sequence[str],
                 parser: Optional[OverridesParser] = None) -> Tuple[Dict[str, Any], List[str]]:
    """`hydra.sweeper.params` and the command line's task overrides -> (Optuna distributions by override key,
    the fixed overrides every trial gets). A key on the command line replaces the same key in params."""
    parser = parser or OverridesParser.create()
    merged: Dict[str, Any] = {}
    texts = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    for override in parser.parse_overrides(texts):
        key = override.get_key_element()
        merged.pop(key, None)      # keep the command line's order for keys it sets again
        merged[key] = override
    distributions: Dict[str, Any] = {}
    fixed: List[str] = []
    for key, override in merged.items():
        if override.is_sweep_override():
            distributions[key] = _distribution(key, override.value())
        else:
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    return distributions, fixed


def value_text(value: Any, parser: Optional[OverridesParser] = None) -> str:
    """A sampled value as an override value Hydra parses back to the same value (strings quoted when needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, int) or math.isfinite(value) else str(value)
    text = str(value)
    parser = parser or OverridesParser.create()

    def reads_back(candidate: str) -> bool:
        try:
            back = parser.parse_override(f"k={candidate}").value()
        except Exception:
            return False
        return type(back) is str and back == text

    quoted = [f"'{text}'", f'"{text}"', "'" + text.replace("'", "\\'") + "'"]
    for candidate in [text, *quoted]:
        if reads_back(candidate):
            return candidate
    raise SearchSpaceError(f"the value {text!r} cannot be written as a Hydra override")


# ---------------------------------------------------------------------------------------------
# storage


def _pg_schema(url: Any) -> Optional[str]:
    """The schema a PostgreSQL URL's `options=-csearch_path=X` selects, else None."""
    found = re.search(r"search_path\s*=\s*([A-Za-z_][A-Za-z0-9_]*)", str(url.query.get("options", "")))
    return found.group(1) if found else None


def _with_schema(url: Any) -> Any:
    """A PostgreSQL URL without `options` -> the same URL with search_path set to the `optuna` schema."""
    if "options" in url.query:
        return url
    return url.update_query_dict({"options": f"-csearch_path={SCHEMA}"})


def study_storage(storage: Optional[str], tracking_uri: Optional[str],
                  env: Optional[Mapping[str, str]] = None) -> Tuple[Optional[str], str]:
    """`hydra.sweeper.storage` and the MLflow tracking URI -> (the study's database URL or None for in memory,
    a sentence saying where the study lives and why)."""
    from sqlalchemy.engine import make_url

    env = os.environ if env is None else env
    if storage is None or str(storage).strip().lower() in ("", "null", "none", "memory"):
        return None, "hydra.sweeper.storage=null: an interrupted search starts over"
    storage = str(storage).strip()
    if storage == "auto":
        if env.get(STORAGE_ENV):
            storage = env[STORAGE_ENV]
            source = f"${STORAGE_ENV}"
        else:
            uri = str(tracking_uri or "")
            scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
            if scheme == "sqlite":
                url = make_url(uri)
                if not url.database or url.database == ":memory:":
                    return None, f"the tracking store {uri} is an in-memory sqlite database"
                db = Path(url.database)
                name = STUDY_FILE if db.name != STUDY_FILE else "optuna_study.db"
                out = url.set(database=str(db.with_name(name)))
                return out.render_as_string(hide_password=False), f"beside the tracking store ({uri})"
            if scheme == "postgresql":
                out = _with_schema(make_url(uri))
                return (out.render_as_string(hide_password=False),
                        f"in the tracking store's database, schema {_pg_schema(out)}")
            return None, (f"no database can be derived from the tracking URI {uri or '(none)'}; set "
                          f"hydra.sweeper.storage=URL or ${STORAGE_ENV} (e.g. the PostgreSQL database behind the "
                          "tracking server) so an interrupted search resumes")
    else:
        source = "hydra.sweeper.storage"
    url = make_url(storage)
    if url.get_backend_name() == "postgresql":
        url = _with_schema(url)
        return url.render_as_string(hide_password=False), f"{source}, schema {_pg_schema(url) or '(default)'}"
    if url.get_backend_name() == "sqlite" and tracking_uri and str(tracking_uri).startswith("sqlite:"):
        mine, theirs = url.database, make_url(str(tracking_uri)).database
        if mine and theirs and Path(mine).resolve() == Path(theirs).resolve():
            raise ValueError(f"{source}={storage} is the MLflow tracking store's own file; MLflow and Optuna both "
                             f"keep their schema version in a table named alembic_version: use "
                             f"{Path(theirs).with_name(STUDY_FILE)} (storage=auto does)")
    return url.render_as_string(hide_password=False), source


def shown(url: Optional[str]) -> str:
    """A storage URL for the log: password hidden."""
    if url is None:
        return "memory"
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def prepare_storage(url: str) -> None:
    """What Optuna does not create itself: the sqlite file's folder, the PostgreSQL schema."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    elif parsed.get_backend_name() == "postgresql":
        schema = _pg_schema(parsed)
        if schema is None:
            return
        options = {k: v for k, v in parsed.query.items() if k != "options"}
        engine = create_engine(parsed.set(query=options), pool_pre_ping=True)
        try:
            with engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        finally:
            engine.dispose()


# ---------------------------------------------------------------------------------------------
# resume


def _process_id(pid: Optional[int] = None) -> str:
    """host:pid:start time of a process (the start time tells a reused pid apart)."""
    import psutil

    pid = os.getpid() if pid is None else pid
    return f"{HOST}:{pid}:{psutil.Process(pid).create_time():.2f}"


def _search_alive(owner: Optional[str]) -> bool:
    """Whether the search process `owner` (host:pid:start) still runs; False for another host (unknowable)."""
    if not owner:
        return False
    host, pid, _ = (owner.split(":") + ["", "", ""])[:3]
    if host != HOST or not pid.isdigit():
        return False
    try:
        return _process_id(int(pid)) == owner
    except Exception:
        return False


def requeue(study: Any, trial: Any, why: str) -> None:
    """A RUNNING trial whose job will not report: FAIL (`fail_reason` says why) and its parameters enqueued, so the
    next trial the study hands out trains that configuration again (segsweep resumes its MLflow run)."""
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"{why}; its parameters were re-enqueued")
    study.tell(trial.number, state=TrialState.FAIL)
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def resume(study: Any, n_trials: int) -> Tuple[int, str]:
    """Continue a study: trials left RUNNING by a search that is gone are marked FAIL and their parameters
    re-enqueued. -> (trials to run now, one line saying what was found)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    stale, live = [], []
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            (live if _search_alive(trial.user_attrs.get("search")) else stale).append(trial)
    for trial in stale:
        requeue(study, trial, "left RUNNING by an interrupted search")
    count = lambda state: sum(t.state == state for t in trials)
    complete = count(TrialState.COMPLETE) + count(TrialState.PRUNED)
    remaining = max(0, n_trials - complete - len(live))
    parts = [f"{complete} COMPLETE", f"{count(TrialState.FAIL)} FAIL"]
    if stale:
        parts.append(f"{len(stale)} left RUNNING by an interrupted search: marked FAIL, parameters re-enqueued")
    if live:
        parts.append(f"{len(live)} RUNNING in another live search")
    if count(TrialState.WAITING):
        parts.append(f"{count(TrialState.WAITING)} WAITING")
    line = (f"found {len(trials)} trials ({', '.join(parts)}); n_trials={n_trials}: {remaining} remain"
            if trials else f"new study; n_trials={n_trials}: {remaining} remain")
    return remaining, line


# ---------------------------------------------------------------------------------------------
# trial outcome


def _job_status(ret: JobReturn) -> dict:
    """The job_status.json seg.train.run left in the job's output dir (run id, outcome, reason), or {}."""
    out = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
    if not out:
        return {}
    try:
        job = json.loads((Path(out) / "job_status.json").read_text())
    except (OSError, json.JSONDecodeError):
        job = {}
    job["output_dir"] = str(out)
    return job


def objective(ret: JobReturn) -> Tuple[Optional[float], str]:
    """A launched job -> (its finite return value, "") or (None, why the trial FAILED)."""
    if ret.status == JobStatus.FAILED:
        exc = ret._return_value
        return None, f"{type(exc).__name__}: {exc}" if exc is not None else "the job failed"
    value = ret._return_value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None, f"the task returned {value!r}, not a number"
    if not math.isfinite(value):
        return None, f"the task returned {value}"
    return value, ""


def tag_run(job: Mapping[str, Any], tags: Mapping[str, Any]) -> None:
    """Tag the trial's MLflow run (from its job_status.json); a failure is a warning, never the search's end."""
    if not job.get("run_id") or not job.get("tracking_uri"):
        return
    try:
        from seg.tracking import set_run_tags

        set_run_tags(job["tracking_uri"], job["run_id"], tags)
    except Exception as exc:
        log.warning("could not tag MLflow run %s with the Optuna trial: %s: %s", job["run_id"],
                    type(exc).__name__, exc)


# ---------------------------------------------------------------------------------------------
# the sweeper


class SegsweepOptunaSweeper(Sweeper):
    def __init__(self, direction: str, study_name: Optional[str], storage: Optional[str], n_trials: int,
                 n_jobs: int, sampler: Any, params: Optional[Mapping[str, Any]] = None) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={direction!r}: expected maximize or minimize")
        if int(n_trials) < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials}: expected 1 or more")
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.sweeper.n_jobs={n_jobs}: expected 1 or more")
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.seed = sampler.get("seed") if sampler is not None else None
        self.n_startup_trials = int(sampler.get("n_startup_trials", 10)) if sampler is not None else 10
        self.params = dict(params or {})
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.dry_run = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def open_study(self) -> Tuple[Any, Optional[str]]:
        """Create or load the study where `storage` says -> (study, storage URL or None)."""
        import optuna

        if self.dry_run:
            url, where = None, "dry run: nothing is stored"
        else:
            url, where = study_storage(self.storage, OmegaConf.select(self.config, "tracking.uri", default=None))
        if url is not None:
            prepare_storage(url)
        study = optuna.create_study(study_name=self.study_name, storage=url, direction=self.direction,
                                    load_if_exists=True)
        if study.direction.name.lower() != self.direction:
            raise ValueError(f"hydra.sweeper.direction={self.direction}, but study {study.study_name!r} in {shown(url)} "
                             f"was created to {study.direction.name.lower()}: set hydra.sweeper.study_name=NAME "
                             "for a new study")
        # the seed moves on with the study, so a resumed search does not replay the first one's random trials
        held = len(study.get_trials(deepcopy=False))
        seed = None if self.seed is None else int(self.seed) + held
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
        if url is not None:
            log.info("optuna: study %r in %s (%s)", study.study_name, shown(url), where)
        elif self.dry_run or self.storage is None or str(self.storage).strip().lower() in ("", "null", "none"):
            log.info("optuna: study %r in memory (%s)", study.study_name, where)
        else:
            log.warning("optuna: study %r in memory: %s", study.study_name, where)
        return study, url

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        distributions, fixed = search_space(self.params, arguments, parser)
        if not distributions:
            raise SearchSpaceError("hparams=optuna: nothing to search; give hydra.sweeper.params (or a sweep "
                                   "override such as optimizer.lr='tag(log, interval(1e-5, 1e-2))')")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        from optuna.trial import TrialState

        # launcher=slurm slurm.dry_run=true prints the first batch and exits: nothing goes into the study's database
        self.dry_run = bool(OmegaConf.select(self.config, "hydra.launcher.dry_run", default=False))
        study, url = self.open_study()
        remaining, line = resume(study, self.n_trials)
        log.info("optuna: %s", line)
        search = _process_id()
        returns: List[Sequence[JobReturn]] = []
        job_idx = 0
        while job_idx < remaining:
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, remaining - job_idx))]
            batch = []
            for trial in trials:
                trial.set_user_attr("search", search)
                trial.set_user_attr("sweep_dir", str(sweep_dir))
                batch.append(fixed + [f"{k}={value_text(v, parser)}" for k, v in trial.params.items()])
            try:
                self.validate_batch_is_legal(batch)
            except Exception:
                for trial in trials:
                    study.tell(trial, state=TrialState.FAIL)
                raise
            try:
                results = self.launcher.launch(batch, initial_job_idx=job_idx)
            except BaseException as exc:   # Ctrl-C, SIGTERM (exit 143), a launcher that stops: the next search
                for trial in trials:       # trains these configurations first
                    try:
                        requeue(study, trial, f"the search stopped ({type(exc).__name__}: {exc}) while it ran")
                    except Exception as err:   # the next search finds it RUNNING and re-enqueues it then
                        log.warning("optuna: could not re-enqueue trial %d: %s: %s", trial.number,
                                    type(err).__name__, err)
                raise
            for trial, ret in zip(trials, results):
                self._tell(study, trial, ret)
            job_idx += len(trials)
            returns.append(results)
        self._report(study, url, sweep_dir)
        return returns

    def _tell(self, study: Any, trial: Any, ret: JobReturn) -> None:
        from optuna.trial import TrialState

        job = _job_status(ret)
        for attr, key in (("mlflow_run_id", "run_id"), ("output_dir", "output_dir"), ("job_status", "status")):
            if job.get(key):
                trial.set_user_attr(attr, str(job[key]))
        tag_run(job, {"optuna.study": study.study_name, "optuna.trial": trial.number})
        value, why = objective(ret)
        if value is None:
            trial.set_user_attr("fail_reason", (job.get("reason") or why)[:2000])
            study.tell(trial, state=TrialState.FAIL)
            log.warning("optuna: trial %d FAILED (%s); the search goes on", trial.number, job.get("reason") or why)
        else:
            study.tell(trial, value)
            log.info("optuna: trial %d -> %.6g (%s)", trial.number, value,
                     " ".join(f"{k}={value_text(v)}" for k, v in trial.params.items()))

    def _report(self, study: Any, url: Optional[str], sweep_dir: Path) -> None:
        """Log the best trial and write it to <sweep_dir>/optuna_results.yaml."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        result: Dict[str, Any] = {"study_name": study.study_name, "storage": shown(url),
                                  "direction": self.direction, "n_trials": self.n_trials,
                                  "complete": len(done), "failed": sum(t.state == TrialState.FAIL for t in trials)}
        if done:
            best = study.best_trial
            result.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                          best_mlflow_run_id=best.user_attrs.get("mlflow_run_id"))
            log.info("optuna: best of %d COMPLETE trials: #%d -> %.6g (%s)", len(done), best.number, best.value,
                     " ".join(f"{k}={value_text(v)}" for k, v in best.params.items()))
        else:
            log.warning("optuna: study %r has no COMPLETE trial", study.study_name)
        OmegaConf.save(OmegaConf.create(result), sweep_dir / "optuna_results.yaml")
