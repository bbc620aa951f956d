"""hparams=optuna (hydra_plugins/segsweep_optuna): the search space, where the study is stored, the search loop
(batches, failed trials, resume after an interruption) with a stand-in launcher, and end to end through run.py."""
from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.segsweep_optuna import optuna_sweeper as osw
from seg import PROJECT_ROOT
from tests.helpers.compose import compose_cfg

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- search space ----------------------------------------------------------------------------------


def test_the_default_search_space_parses_to_optuna_distributions():
    cfg = compose_cfg(["hparams=optuna"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    dists, fixed = osw.search_space(params, ["model=resunet"])
    assert dists == {"optimizer.lr": FloatDistribution(1e-5, 1e-2, log=True),
                     "trainer.batch_size": CategoricalDistribution([8, 16, 32]),
                     "loss.weights.dice": FloatDistribution(0.1, 10.0, log=True)}
    assert fixed == ["model=resunet"]
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.segsweep_optuna.optuna_sweeper.SegsweepOptunaSweeper"
    assert sweeper.storage == "auto" and sweeper.direction == "maximize" and sweeper.n_trials == 20
    assert sweeper.study_name == "covid_infection-unet-bce_dice" and sweeper.sampler.seed == 0
    assert sweeper.n_jobs == 1
    assert compose_cfg(["hparams=optuna", "launcher=joblib", "n_jobs=3"], return_hydra_config=True).hydra.sweeper.n_jobs == 3


@pytest.mark.parametrize("text, expected", [
    ("interval(0.1, 0.5)", FloatDistribution(0.1, 0.5)),
    ("tag(log, interval(1e-5, 1e-2))", FloatDistribution(1e-5, 1e-2, log=True)),
    ("tag(int, interval(2, 9))", IntDistribution(2, 9)),
    ("tag(int, log, interval(1, 64))", IntDistribution(1, 64, log=True)),
    ("range(8, 33, 8)", IntDistribution(8, 32, step=8)),          # Hydra's range: 8, 16, 24, 32 (33 excluded)
    ("range(1, 5)", IntDistribution(1, 4)),
    ("tag(log, range(1, 5))", IntDistribution(1, 4, log=True)),
    ("range(0.0, 1.0, 0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
    ("choice(8, 16, 32)", CategoricalDistribution([8, 16, 32])),
    ("unet,resunet", CategoricalDistribution(["unet", "resunet"])),
    ("choice(true, false, 'a b', 0.5)", CategoricalDistribution([True, False, "a b", 0.5])),
])
def test_each_sweep_form_becomes_its_distribution(text, expected):
    dists, fixed = osw.search_space({"x": text}, [])
    assert dists == {"x": expected} and fixed == []


def test_the_command_line_replaces_a_param_and_adds_sweeps():
    dists, fixed = osw.search_space({"optimizer.lr": "tag(log, interval(1e-5, 1e-2))", "seed": 3},
                                    ["optimizer.lr=0.001", "model=unet,resunet", "+foo.bar=interval(1, 2)"])
    assert dists == {"model": CategoricalDistribution(["unet", "resunet"]), "+foo.bar": FloatDistribution(1.0, 2.0)}
    assert fixed == ["seed=3", "optimizer.lr=0.001"]


@pytest.mark.parametrize("text, message", [
    ("tag(log, interval(0, 1))", "x: tag(log, interval(0.0, 1.0)) needs a start above 0"),
    ("interval(2, 1)", "x: interval(2.0, 1.0) needs its start below its end"),
    ("tag(lg, interval(1, 2))", "x: unknown tag(s) lg; the search space knows log, int"),
    ("tag(log, range(1, 9, 2))", "x: tag(log, range(...)) needs step 1"),
    ("tag(log, choice(1, 2))", "x: tag(log) applies to interval() / range(), not choice()"),
    ("range(5, 1)", "x: range(5, 1, 1) holds no value"),
    ("tag(int, interval(1.5, 3))", "x: tag(int, interval(1.5, 3.0)) needs whole numbers"),
])
def test_a_space_optuna_cannot_sample_is_refused_naming_the_key(text, message):
    with pytest.raises(osw.SearchSpaceError) as err:
        osw.search_space({"x": text}, [])
    assert message in str(err.value)


@pytest.mark.parametrize("value, text", [
    (1e-05, "1e-05"), (0.000123, "0.000123"), (16, "16"), (True, "true"), (None, "null"),
    ("resunet", "resunet"), ("a b", "a b"), ("a,b", "'a,b'"), (" a", "' a'"), ("8", "'8'"), ("null", "'null'"), ("it's", '"it\'s"'), ("a'b\"c", "'a\\'b\"c'"),
])
def test_sampled_values_go_back_as_overrides_hydra_reads_as_the_same_value(value, text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert osw.value_text(value) == text
    assert OverridesParser.create().parse_override(f"k={text}").value() == value


# --- storage ---------------------------------------------------------------------------------------


def test_storage_auto_puts_the_study_beside_a_sqlite_tracking_store():
    url, where = osw.study_storage("auto", "sqlite:////data/mlruns/mlflow.db", env={})
    assert url == "sqlite:////data/mlruns/optuna.db" and where == "beside the tracking store (sqlite:////data/mlruns/mlflow.db)"
    assert osw.study_storage("auto", "sqlite:///mlruns/mlflow.db", env={})[0] == "sqlite:///mlruns/optuna.db"


def test_storage_auto_uses_a_schema_of_its_own_in_the_postgres_tracking_database():
    url, where = osw.study_storage("auto", "postgresql+psycopg2://mlflow:pw@127.0.0.1:55432/mlflow", env={})
    assert url == "postgresql+psycopg2://mlflow:pw@127.0.0.1:55432/mlflow?options=-csearch_path%3Doptuna"
    assert where == "in the tracking store's database, schema optuna"
    assert osw.shown(url) == "postgresql+psycopg2://mlflow:***@127.0.0.1:55432/mlflow?options=-csearch_path%3Doptuna"


def test_storage_for_a_tracking_server_comes_from_the_environment_or_stays_in_memory():
    url, where = osw.study_storage("auto", "http://127.0.0.1:55000", env={})
    assert url is None
    assert where.startswith("no database can be derived from the tracking URI http://127.0.0.1:55000; "
                            "set hydra.sweeper.storage=URL or $SEGSWEEP_OPTUNA_STORAGE")
    env = {"SEGSWEEP_OPTUNA_STORAGE": "postgresql://mlflow@127.0.0.1:55432/mlflow"}
    url, where = osw.study_storage("auto", "http://127.0.0.1:55000", env=env)
    assert url == "postgresql://mlflow@127.0.0.1:55432/mlflow?options=-csearch_path%3Doptuna"
    assert where == "$SEGSWEEP_OPTUNA_STORAGE, schema optuna"


def test_storage_null_is_memory_and_an_explicit_url_is_kept():
    assert osw.study_storage(None, "sqlite:////x/mlflow.db", env={})[0] is None
    assert osw.study_storage("null", "sqlite:////x/mlflow.db", env={})[0] is None
    assert osw.study_storage("sqlite:////y/study.db", "sqlite:////x/mlflow.db", env={}) == (
        "sqlite:////y/study.db", "hydra.sweeper.storage")
    pg = "postgresql://u@h/db?options=-csearch_path%3Dmine"
    assert osw.study_storage(pg, "http://h:5000", env={}) == (pg, "hydra.sweeper.storage, schema mine")


def test_an_explicit_storage_in_mlflows_own_sqlite_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is the MLflow tracking store's own file; MLflow and Optuna both keep "
                                         "their schema version in a table named alembic_version"):
        osw.study_storage(f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/mlflow.db", env={})


def test_optuna_cannot_share_mlflows_sqlite_file_so_it_gets_its_own(empty_store, tmp_path):
    """Why storage=auto never uses mlflow.db: Optuna reads MLflow's alembic_version row as its own schema version."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    with pytest.raises(RuntimeError, match="no longer compatible with the table schema"):
        optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/mlflow.db")
    revision = sqlite3.connect(tmp_path / "mlflow.db").execute("SELECT version_num FROM alembic_version").fetchall()
    url, _ = osw.study_storage("auto", f"sqlite:///{tmp_path}/mlflow.db", env={})
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"a": 1.0}, distributions={"a": FloatDistribution(0, 2)}, value=0.5))
    assert (tmp_path / "optuna.db").exists()
    assert sqlite3.connect(tmp_path / "mlflow.db").execute("SELECT version_num FROM alembic_version").fetchall() == revision


# --- the search loop, with a stand-in launcher -----------------------------------------------------


class FakeLauncher:
    """Returns, per job, what seg.train.run would: -|log10(lr) + 3| (best at lr=1e-3); NaN or an exception for
    the job indices named in `nan` / `raise_at`; `stop_at` raises KeyboardInterrupt (a killed search) instead."""

    def __init__(self, nan=(), raise_at=(), stop_at=None):
        self.batches, self.nan, self.raise_at, self.stop_at = [], set(nan), set(raise_at), stop_at

    def launch(self, batch, initial_job_idx):
        if self.stop_at is not None and initial_job_idx >= self.stop_at:
            raise KeyboardInterrupt("killed")
        self.batches.append([list(b) for b in batch])
        out = []
        for i, overrides in enumerate(batch):
            idx = initial_job_idx + i
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            lr = float(next(o for o in overrides if o.startswith("optimizer.lr=")).split("=")[1])
            if idx in self.raise_at:
                ret.status, ret._return_value = JobStatus.FAILED, RuntimeError("out of memory")
            else:
                ret._return_value = math.nan if idx in self.nan else -abs(math.log10(lr) + 3)
            out.append(ret)
        return out


def _sweeper(tmp_path, launcher, n_trials, n_jobs=1, storage="auto", uri=None, overrides=()):
    cfg = compose_cfg(["hparams=optuna", f"paths.output={tmp_path}", f"hydra.sweep.dir={tmp_path}/sweep",
                       f"tracking.uri={uri or f'sqlite:///{tmp_path}/mlflow.db'}", *overrides], return_hydra_config=True)
    sw = osw.SegsweepOptunaSweeper(direction="maximize", study_name="study", storage=storage, n_trials=n_trials,
                                   n_jobs=n_jobs, sampler=OmegaConf.create({"seed": 0, "n_startup_trials": 2}),
                                   params=OmegaConf.to_container(cfg.hydra.sweeper.params))
    sw.config, sw.launcher = cfg, launcher

    class Context:
        config_loader = None

    sw.hydra_context = Context()
    sw.validate_batch_is_legal = lambda batch: None   # composing every trial is run.py's job (end-to-end tests)
    return sw


def _study(tmp_path):
    return optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")


def test_trials_run_in_batches_and_failed_ones_are_told_fail(tmp_path, caplog):
    launcher = FakeLauncher(nan=[1], raise_at=[2])
    caplog.set_level("INFO")
    _sweeper(tmp_path, launcher, n_trials=5, n_jobs=2).sweep(["model=resunet"])
    assert [len(b) for b in launcher.batches] == [2, 2, 1]
    first = launcher.batches[0][0]
    assert first[0] == "model=resunet" and [o.split("=")[0] for o in first[1:]] == [
        "optimizer.lr", "trainer.batch_size", "loss.weights.dice"]
    study = _study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                               TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[1].user_attrs["fail_reason"] == "the task returned nan"
    assert study.trials[2].user_attrs["fail_reason"] == "RuntimeError: out of memory"
    lr0 = study.trials[0].params["optimizer.lr"]
    assert study.trials[0].value == pytest.approx(-abs(math.log10(lr0) + 3))
    assert "optuna: new study; n_trials=5: 5 remain" in caplog.text
    assert "optuna: trial 1 FAILED (the task returned nan); the search goes on" in caplog.text
    results = OmegaConf.load(tmp_path / "sweep" / "optuna_results.yaml")
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert results.best_trial == best.number and results.complete == 3 and results.failed == 2
    assert results.storage == f"sqlite:///{tmp_path}/optuna.db"

    # the same command again: n_trials is the study's total; 3 COMPLETE count, the 2 FAIL are run again
    again = FakeLauncher()
    caplog.clear()
    _sweeper(tmp_path, again, n_trials=5, n_jobs=2).sweep(["model=resunet"])
    assert [len(b) for b in again.batches] == [2]
    assert "optuna: found 5 trials (3 COMPLETE, 2 FAIL); n_trials=5: 2 remain" in caplog.text
    assert sum(t.state == TrialState.COMPLETE for t in _study(tmp_path).trials) == 5
    # a study that is complete launches nothing
    done = FakeLauncher()
    _sweeper(tmp_path, done, n_trials=5).sweep(["model=resunet"])
    assert done.batches == []


def test_a_stopped_search_hands_its_running_trials_to_the_next_one(tmp_path, caplog):
    killed = FakeLauncher(stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        _sweeper(tmp_path, killed, n_trials=6, n_jobs=2).sweep([])
    study = _study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    assert study.trials[2].user_attrs["fail_reason"] == ("the search stopped (KeyboardInterrupt: killed) while it ran; "
                                                         "its parameters were re-enqueued")
    lost = [dict(t.params) for t in study.trials[2:4]]
    resumed = FakeLauncher()
    caplog.set_level("INFO")
    _sweeper(tmp_path, resumed, n_trials=6, n_jobs=2).sweep([])
    assert "optuna: found 6 trials (2 COMPLETE, 2 FAIL, 2 WAITING); n_trials=6: 4 remain" in caplog.text
    trials = _study(tmp_path).trials
    assert [dict(t.params) for t in trials[4:6]] == lost                  # the lost configurations run first
    assert [t.user_attrs["retry_of"] for t in trials[4:6]] == [2, 3]
    assert [o for o in resumed.batches[0][0] if o.startswith("optimizer.lr=")] == [
        f"optimizer.lr={osw.value_text(lost[0]['optimizer.lr'])}"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6 and len(trials) == 8
    assert [len(b) for b in resumed.batches] == [2, 2]


def test_trials_a_dead_search_left_running_are_failed_and_trained_again(tmp_path, caplog):
    """A search killed with SIGKILL (or its machine lost) leaves RUNNING trials: the next search takes them over."""
    _sweeper(tmp_path, FakeLauncher(), n_trials=1).sweep([])
    study = _study(tmp_path)
    dists = osw.search_space(OmegaConf.to_container(compose_cfg(["hparams=optuna"], return_hydra_config=True)
                                                    .hydra.sweeper.params), [])[0]
    dead = study.ask(dists)
    dead.set_user_attr("search", f"{osw.HOST}:999999999:1.00")          # a pid of this host that is gone
    elsewhere = study.ask(dists)
    elsewhere.set_user_attr("search", "another-host:12:1.00")           # unknowable: taken over as well
    resumed = FakeLauncher()
    caplog.set_level("INFO")
    _sweeper(tmp_path, resumed, n_trials=3).sweep([])
    assert ("optuna: found 3 trials (1 COMPLETE, 0 FAIL, 2 left RUNNING by an interrupted search: marked FAIL, "
            "parameters re-enqueued); n_trials=3: 2 remain") in caplog.text
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.params for t in trials[3:]] == [dead.params, elsewhere.params]
    assert trials[1].user_attrs["fail_reason"] == ("left RUNNING by an interrupted search; its parameters were "
                                                   "re-enqueued")


def test_a_running_trial_of_a_live_search_is_left_alone(tmp_path):
    study = optuna.create_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.set_user_attr("search", osw._process_id())        # this process: alive
    remaining, line = osw.resume(study, 3)
    assert remaining == 2 and line == "found 1 trials (0 COMPLETE, 0 FAIL, 1 RUNNING in another live search); n_trials=3: 2 remain"
    assert study.trials[0].state == TrialState.RUNNING


def test_with_a_tracking_server_and_no_storage_the_study_is_in_memory_with_one_warning(tmp_path, caplog,
                                                                                         monkeypatch):
    monkeypatch.delenv("SEGSWEEP_OPTUNA_STORAGE", raising=False)
    launcher = FakeLauncher()
    _sweeper(tmp_path, launcher, n_trials=2, uri="http://127.0.0.1:1").sweep([])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["optuna: study 'study' in memory: no database can be derived from the tracking URI "
                        "http://127.0.0.1:1; set hydra.sweeper.storage=URL or $SEGSWEEP_OPTUNA_STORAGE (e.g. the "
                        "PostgreSQL database behind the tracking server) so an interrupted search resumes"]
    assert len(launcher.batches) == 2 and not list(tmp_path.glob("*.db"))


def test_a_study_of_the_other_direction_is_refused(tmp_path):
    optuna.create_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db", direction="minimize")
    with pytest.raises(ValueError) as err:
        _sweeper(tmp_path, FakeLauncher(), n_trials=1).sweep([])
    assert str(err.value) == (f"hydra.sweeper.direction=maximize, but study 'study' in sqlite:///{tmp_path}/optuna.db "
                              "was created to minimize: set hydra.sweeper.study_name=NAME for a new study")


def test_a_dry_run_stores_nothing(tmp_path, caplog):
    caplog.set_level("INFO")
    sw = _sweeper(tmp_path, FakeLauncher(), n_trials=1, overrides=["launcher=slurm", "slurm.dry_run=true"])
    sw.sweep([])
    assert sw.dry_run and "optuna: study 'study' in memory (dry run: nothing is stored)" in caplog.text
    assert not (tmp_path / "optuna.db").exists()


def test_a_resumed_search_does_not_replay_the_first_ones_random_trials(tmp_path):
    """The sampler's seed is seed + trials held, so the second search's start-up trials are new configurations."""
    first = FakeLauncher()
    _sweeper(tmp_path, first, n_trials=1).sweep([])
    second = FakeLauncher()
    _sweeper(tmp_path, second, n_trials=2).sweep([])
    assert first.batches[0][0] != second.batches[0][0]
    fresh = FakeLauncher()
    _sweeper(tmp_path / "other", fresh, n_trials=1).sweep([])
    assert fresh.batches[0][0] == first.batches[0][0]               # same seed, new study: same first trial


# --- end to end ------------------------------------------------------------------------------------

TINY = ["profile.image_size=32", "profile.epochs=1", "trainer.limit_train_batches=1", "tracking.overlays=0"]


def _search(tmp_path: Path, phantom_cache: Path, sweep: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "SEGSWEEP_CACHE": str(phantom_cache)}
    env.pop("SEGSWEEP_OPTUNA_STORAGE", None)
    tiny = [o for o in TINY if o.split("=")[0] not in {a.split("=")[0] for a in args}]
    return subprocess.run([sys.executable, "run.py", "-m", "hparams=optuna", *tiny, *args,
                           f"paths.output={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/{sweep}"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)


def _children(tmp_path: Path) -> list:
    from seg.tracking import PARENT_TAG, search_runs

    runs = search_runs(f"sqlite:///{tmp_path}/mlflow.db", "phantom_xray")
    return [r for r in runs if r.data.tags.get(PARENT_TAG) != "true"]


@pytest.mark.slow   # two trials through run.py: about 80 s on 2 shared cores
def test_a_search_stores_its_trials_beside_the_tracking_store(tmp_path, seeded_store, phantom_cache):
    """Two trials in one search: optuna.db beside mlflow.db holds them, their values are the runs' best val Dice."""
    done = _search(tmp_path, phantom_cache, "s1", "hydra.sweeper.n_trials=2")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "optuna: new study; n_trials=2: 2 remain" in out
    study = optuna.load_study(study_name="covid_infection-unet-bce_dice", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    runs = {r.info.run_id: r for r in _children(tmp_path)}
    assert len(runs) == 2 and {r.info.status for r in runs.values()} == {"FINISHED"}
    for trial in study.trials:
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert trial.value == pytest.approx(run.data.metrics["best/val/dice"], abs=1e-12)
        assert run.data.tags["optuna.study"] == "covid_infection-unet-bce_dice"
        assert run.data.tags["optuna.trial"] == str(trial.number)
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(trial.params["optimizer.lr"], rel=1e-9)
        assert int(run.data.params["trainer.batch_size"]) == trial.params["trainer.batch_size"]
    # the tracking store is untouched by Optuna: its alembic_version is MLflow's
    assert sqlite3.connect(tmp_path / "mlflow.db").execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    assert "trials" not in {r[0] for r in sqlite3.connect(tmp_path / "mlflow.db").execute(
        "SELECT name FROM sqlite_master WHERE type='table'")}


@pytest.mark.slow   # three searches through run.py: about 3 minutes on 2 shared cores
def test_a_killed_search_resumes_without_rerunning_completed_trials(tmp_path, seeded_store, phantom_cache):
    """Search 1 completes trial 0; search 2 is killed (SIGTERM) after trial 1's first epoch; the same command
    again fails trial 1, trains its parameters as trial 2, which continues trial 1's MLflow run from its
    checkpoint, and does not train trial 0's configuration again."""
    two = ["profile.epochs=2", "hydra.sweeper.n_trials=2"]
    first = _search(tmp_path, phantom_cache, "s1", "profile.epochs=2", "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-3000:]
    (run0,) = _children(tmp_path)
    killed = _search(tmp_path, phantom_cache, "s2", *two, "debug.sigterm_after_epoch=1")
    assert killed.returncode == 143, killed.stderr[-3000:]
    name, url = "covid_infection-unet-bce_dice", f"sqlite:///{tmp_path}/optuna.db"
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["fail_reason"].startswith("the search stopped (SystemExit: 143) while it ran")
    again = _search(tmp_path, phantom_cache, "s3", *two)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "optuna: found 3 trials (1 COMPLETE, 1 FAIL, 1 WAITING); n_trials=2: 1 remain" in out
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1
    runs = {r.info.run_id: r for r in _children(tmp_path)}
    assert len(runs) == 2                                     # trial 0's configuration was not trained again
    assert runs[run0.info.run_id].info.end_time == run0.info.end_time
    resumed = runs[trials[2].user_attrs["mlflow_run_id"]]      # the killed run, continued after epoch 1
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed"] == "1"
    assert resumed.data.tags["optuna.trial"] == "2" and "continuing after epoch 1" in out
    assert trials[2].value == pytest.approx(resumed.data.metrics["best/val/dice"], abs=1e-12)


# --- PostgreSQL ------------------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL server on a free 127.0.0.1 port with a database `mlflow` -> its URL."""
    import socket
    import tempfile

    bin_dir = _pg_bin()
    if bin_dir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql) or not root: no PostgreSQL test")
    root = Path(tempfile.mkdtemp(prefix="segsweep-pg-", dir="/var/tmp"))
    shutil.chown(root, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_pg = lambda *cmd: subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], check=True,
                                        capture_output=True, text=True, timeout=120)
    try:
        as_pg(bin_dir / "initdb", "-D", root / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8")
        as_pg(bin_dir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-t", "60",
              "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
        as_pg(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "mlflow")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(bin_dir / "pg_ctl"), "-D", str(root / "data"),
                        "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow   # a PostgreSQL server, MLflow's migrations and one trial through run.py
def test_postgres_study_lives_in_its_own_schema_of_the_tracking_database(postgres, tmp_path, phantom_cache):
    from mlflow import MlflowClient
    from sqlalchemy import create_engine, text

    MlflowClient(tracking_uri=postgres).search_experiments()        # MLflow's tables in schema public
    engine = create_engine(postgres)
    with engine.connect() as conn:
        mlflow_revision = conn.execute(text("SELECT version_num FROM public.alembic_version")).scalar_one()
    url, where = osw.study_storage("auto", postgres, env={})
    assert where == "in the tracking store's database, schema optuna"
    osw.prepare_storage(url)
    osw.prepare_storage(url)                                         # idempotent
    study = optuna.create_study(study_name="s", storage=url, direction="maximize", load_if_exists=True)
    study.add_trial(optuna.trial.create_trial(params={"a": 1.0}, distributions={"a": FloatDistribution(0, 2)},
                                              value=0.5))
    again = optuna.load_study(study_name="s", storage=url)
    assert [t.value for t in again.trials] == [0.5]
    with engine.connect() as conn:
        tables = {(r[0], r[1]) for r in conn.execute(text(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name IN "
            "('trials', 'studies', 'alembic_version', 'runs')"))}
        assert conn.execute(text("SELECT version_num FROM public.alembic_version")).scalar_one() == mlflow_revision
    engine.dispose()
    assert tables == {("optuna", "trials"), ("optuna", "studies"), ("optuna", "alembic_version"),
                      ("public", "alembic_version"), ("public", "runs")}
    assert MlflowClient(tracking_uri=postgres).search_experiments()[0].name == "Default"
    # why the schema: in MLflow's own schema Optuna takes MLflow's alembic_version row for its schema version

    # a search with the PostgreSQL store as tracking URI (cwd tmp_path: MLflow's default artifact root is ./mlruns)
    env = {**os.environ, "MLFLOW_TRACKING_URI": postgres, "SEGSWEEP_CACHE": str(phantom_cache)}
    env.pop("SEGSWEEP_OPTUNA_STORAGE", None)
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "run.py"), "-m", "hparams=optuna", *TINY,
                           "hydra.sweeper.n_trials=1", f"paths.output={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/s"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (f"optuna: study 'covid_infection-unet-bce_dice' in {postgres}?options=-csearch_path%3Doptuna (in the "
            "tracking store's database, schema optuna)") in done.stdout + done.stderr
    (trial,) = optuna.load_study(study_name="covid_infection-unet-bce_dice", storage=url).trials
    run = MlflowClient(tracking_uri=postgres).get_run(trial.user_attrs["mlflow_run_id"])
    assert trial.state == TrialState.COMPLETE and run.info.status == "FINISHED"
    assert trial.value == pytest.approx(run.data.metrics["best/val/dice"], abs=1e-12)
    assert run.data.tags["optuna.trial"] == "0"

    # why the schema: in MLflow's own schema Optuna takes MLflow's alembic_version row for its schema version
    with pytest.raises(RuntimeError, match="no longer compatible with the table schema"):
        optuna.storages.RDBStorage(postgres)
