"""Sweeps: the experiment grids, resume (skip FINISHED, re-run deleted, continue KILLED from the last
checkpoint), the parent run per sweep, and the parallel launchers (joblib, submitit) writing to one store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from seg import PROJECT_ROOT
from seg.config import cpu_share
from seg.tracking import PARENT_TAG, search_runs
from seg.sweep import HASH_EXCLUDED, config_hash
from tests.helpers.compose import compose_cfg, compose_resolved

TINY = ["profile.image_size=32", "profile.epochs=1", "trainer.limit_train_batches=2", "tracking.overlays=1"]

# experiment -> (dataset of its first job, jobs in its grid with the default seeds)
STUDIES = {
    "covid_arch_x_loss": ("covid_infection", 27),
    "covid_lung_arch_x_loss": ("covid_lung", 27),
    "acdc_single_ventricle": ("acdc_lv", 18),
    "acdc_multiclass": ("acdc", 27),
    "ct_heart": ("ct_heart", 6),
}


def _grid(experiment: str, overrides: list[str] = ()) -> tuple:
    """(composed config, list of job override lists) as Hydra's basic sweeper expands the experiment."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose_cfg([f"experiment={experiment}", *overrides], return_hydra_config=True)
    parser = OverridesParser.create()
    axes = [[f"{k}={v}" for v in parser.parse_override(f"{k}={v}").sweep_string_iterator()]
            for k, v in cfg.hydra.sweeper.params.items()]
    jobs = [[]]
    for axis in axes:
        jobs = [job + [value] for job in jobs for value in axis]
    return cfg, jobs


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_every_study_runs_on_the_phantom_or_a_real_root_with_the_same_grid(study):
    """One study file: dataset.root set = the real data, 3 seeds; unset = the embedded phantom, 1 seed."""
    dataset, n_jobs = STUDIES[study]
    cfg, jobs = _grid(study, ["dataset.root=/data/real"])
    assert cfg.dataset.name == dataset and cfg.seeds == 3 and len(jobs) == n_jobs
    assert cfg.tracking.experiment == dataset
    twin, twin_jobs = _grid(study)
    assert twin.seeds == 1 and len(twin_jobs) == n_jobs // 3
    assert twin.dataset.root is None and twin.tracking.experiment.startswith("phantom_")
    # same models and losses as the real study; seeds= widens the phantom study like the real one
    strip = lambda js: sorted({" ".join(o for o in j if not o.startswith(("seed=", "dataset="))) for j in js})
    assert strip(jobs) == strip(twin_jobs)
    assert len(_grid(study, ["seeds=3"])[1]) == n_jobs


def test_ct_heart_study_trains_like_the_reference_project():
    cfg, jobs = _grid("ct_heart")
    assert cfg.optimizer.lr == 1e-4 and cfg.scheduler.factor == 0.1 and cfg.scheduler.patience == 10
    assert cfg.trainer.early_stopping == 10 and cfg.trainer.accumulate == 4 and cfg.amp == "auto"
    assert sorted(j[0] for j in jobs) == ["loss=bce_dice", "loss=dice"]


def test_weighted_ce_of_the_acdc_study_takes_its_class_weights():
    cfg, jobs = _grid("acdc_multiclass")
    assert {j[1] for j in jobs} == {"loss=wce", "loss=dice", "loss=dice_focal"}
    cfg = compose_cfg(["experiment=acdc_multiclass", "loss=wce"])
    assert list(cfg.loss.class_weights) == [0.1, 1.0, 1.0, 1.0] and cfg.dataset.num_classes == 4
    assert compose_cfg(["loss=wce"]).loss.class_weights is None


def test_config_hash_ignores_sweep_mechanics_not_settings():
    base = ["model=unet", "loss=dice"]
    h = lambda o: config_hash(compose_resolved(base + o), [])
    assert h([]) == h(["resume=false", "debug.sigterm_after_epoch=2", "threads=1", "device=cpu",
                       "memory_format=channels_last"])
    assert h([]) != h(["seed=1"]) and h([]) != h(["optimizer.lr=0.01"]) and h([]) != h(["trainer.epochs=3"])
    assert {"resume", "debug", "threads", "seeds"} <= set(HASH_EXCLUDED)


def test_config_hash_changes_with_the_scheduler():
    h = lambda o: config_hash(compose_resolved(["model=unet", "loss=dice"] + o), [])
    base = h([])
    assert len({base, h(["scheduler=cosine"]), h(["scheduler=none"]), h(["scheduler.patience=3"])}) == 4


def _moved(machine: str, dataset_root: str) -> str:
    """config_hash of one configuration on `machine`: project, cache and dataset root all under it."""
    cache, root = f"/{machine}/cache", f"/{machine}/project"
    resolved = compose_resolved(["model=unet", "loss=dice", f"paths.cache={cache}", f"paths.root={root}",
                                 f"dataset.root={dataset_root.format(cache=cache, root=root)}"])
    return config_hash(resolved, [cache, root])


@pytest.mark.parametrize("dataset_root", ["{root}/data/covid", "{cache}/phantom/covid"])
def test_config_hash_survives_a_moved_project_or_cache_but_not_another_dataset(dataset_root):
    assert _moved("m1", dataset_root) == _moved("m2/other", dataset_root)
    assert _moved("m1", dataset_root) != _moved("m1", dataset_root + "_v2")


def test_config_hash_replaces_each_path_by_its_placeholder():
    resolved = {"dataset": {"root": "/a/proj/data"}, "cache_dir": "/a/cache/x", "paths": {"root": "/elsewhere"}}
    import hashlib
    import json as _json

    text = _json.dumps({"cache_dir": "<path0>/x", "dataset": {"root": "<path1>/data"}}, sort_keys=True)
    assert config_hash(resolved, ["/a/cache", "/a/proj"]) == hashlib.sha256(text.encode()).hexdigest()[:16]


class _Reached(Exception):
    """Raised by the patched data loader: the run went on to train."""


@pytest.mark.parametrize("resume,trains", [(False, True), (True, False)])
def test_resume_false_trains_a_finished_configuration_again_in_process(tmp_path, seeded_store, monkeypatch, resume, trains):
    """A FINISHED run with the same config_hash exists: resume=true skips the job (its best value
    returned, job_status SKIPPED), resume=false goes on to open the data and train."""
    from types import SimpleNamespace

    import seg.train

    finished = SimpleNamespace(info=SimpleNamespace(run_id="r1", status="FINISHED"),
                               data=SimpleNamespace(metrics={"best/val/dice": 0.75}, tags={"sweep_id": "s0"}))
    lookups = []
    monkeypatch.setattr(seg.train, "previous_runs", lambda uri, exp, chash: lookups.append(chash) or (finished, None))

    def reached(cfg):
        raise _Reached("training")

    monkeypatch.setattr(seg.train, "_open_data", reached)
    cfg = compose_cfg(["model=unet", "loss=dice", f"resume={str(resume).lower()}", f"paths.output={tmp_path}",
                       f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    if trains:
        with pytest.raises(_Reached):
            seg.train.run(cfg)
        assert lookups == []
    else:
        assert seg.train.run(cfg) == 0.75 and len(lookups) == 1
        (status,) = tmp_path.glob("runs/*/job_status.json")
        job = json.loads(status.read_text())
        assert job["status"] == "SKIPPED" and job["run_id"] == "r1" and job["config_hash"] == lookups[0]


def test_previous_runs_prefers_a_finished_run_then_the_newest_unfinished(monkeypatch):
    from types import SimpleNamespace

    import seg.sweep
    import seg.tracking

    def run(i, status):
        return SimpleNamespace(info=SimpleNamespace(run_id=i, status=status))

    found = {"h1": [run("a", "FAILED"), run("b", "FINISHED"), run("c", "FINISHED")],
             "h2": [run("d", "SCHEDULED"), run("e", "KILLED"), run("f", "FAILED")], "h3": [],
             "failed": [run("g", "SCHEDULED"), run("h", "FAILED")], "running": [run("i", "RUNNING")]}
    asked = []

    def runs_with_hash(uri, exp, chash):
        asked.append((uri, exp, chash))
        return found[chash]

    monkeypatch.setattr(seg.tracking, "runs_with_hash", runs_with_hash)
    done, unfinished = seg.sweep.previous_runs("u", "x", "h1")
    assert done.info.run_id == "b" and unfinished is None
    assert asked == [("u", "x", "h1")]         # this store and this experiment, not some default
    done, unfinished = seg.sweep.previous_runs("u", "x", "h2")
    assert done is None and unfinished.info.run_id == "e"
    assert seg.sweep.previous_runs("u", "x", "h3") == (None, None)
    # a FAILED run and a RUNNING one (its owner died) are each resumed; a SCHEDULED one never started
    assert seg.sweep.previous_runs("u", "x", "failed")[1].info.run_id == "h"
    assert seg.sweep.previous_runs("u", "x", "running")[1].info.run_id == "i"


def test_read_jobs_lists_every_jobs_status_in_job_number_order_and_names_an_unreadable_one(tmp_path):
    from seg.sweep import read_jobs

    for name, body in (("10_unet-dice-s0", {"status": "FINISHED", "run_id": "r10"}),
                       ("2_unet-bce_dice-s0", {"status": "FAILED", "run_id": "r2"}),    # "_" in the name too
                       ("0_resunet-bce-s0", None), ("notes", {"status": "FINISHED"})):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "job_status.json"
        path.write_text("{not json" if body is None else json.dumps(body))
    (tmp_path / "1_no_status").mkdir()                          # a job that wrote nothing is not listed
    jobs = read_jobs(tmp_path)
    assert [j["job"] for j in jobs] == ["0_resunet-bce-s0", "2_unet-bce_dice-s0", "10_unet-dice-s0", "notes"]
    assert jobs[0]["status"] == "UNKNOWN" and str(tmp_path / "0_resunet-bce-s0" / "job_status.json") in jobs[0]["reason"]
    assert (jobs[1]["status"], jobs[1]["run_id"], jobs[2]["status"], jobs[2]["run_id"]) == ("FAILED", "r2", "FINISHED", "r10")
    assert read_jobs(tmp_path / "1_no_status") == []


def test_joblib_launcher_splits_the_cores_between_jobs():
    cores = os.cpu_count() or 1
    assert cpu_share(1) == cores and cpu_share(2) == max(1, cores // 2) and cpu_share(10 * cores) == 1
    with pytest.raises(ValueError, match="n_jobs=0"):
        cpu_share(0)
    cfg = compose_cfg(["launcher=joblib", "n_jobs=2"])
    assert cfg.threads == max(1, cores // 2)


# --- end to end ------------------------------------------------------------------------------------


def _run(args: list[str], tmp_path: Path, phantom_cache: Path, sweep: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "SEGSWEEP_CACHE": str(phantom_cache)}
    return subprocess.run([sys.executable, "run.py", "-m", *TINY, *args, f"hydra.sweep.dir={tmp_path}/{sweep}"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)


def _runs(tmp_path: Path, experiment: str = "phantom_xray") -> tuple[list, list]:
    """(configuration runs, sweep parent runs) of an experiment, active ones only."""
    runs = search_runs(f"sqlite:///{tmp_path}/mlflow.db", experiment)
    return ([r for r in runs if r.data.tags.get(PARENT_TAG) != "true"],
            [r for r in runs if r.data.tags.get(PARENT_TAG) == "true"])


def client_of(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


@pytest.mark.slow   # a full sweep of subprocess runs: make test-all
def test_rerun_skips_finished_runs_and_reruns_only_the_deleted_one(tmp_path, seeded_store, phantom_cache):
    args = ["model=unet", "loss=dice,bce"]
    first = _run(args, tmp_path, phantom_cache, "s1")
    assert first.returncode == 0, first.stderr[-3000:]
    runs, parents = _runs(tmp_path)
    assert sorted(r.info.run_name for r in runs) == ["unet-bce-s0", "unet-dice-s0"]
    assert {r.info.status for r in runs} == {"FINISHED"} and len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_id"] == "s1"
    assert "model=unet" in parent.data.params["sweep.overrides"]
    assert "loss=dice,bce" in parent.data.tags["command"] and parent.data.metrics["jobs/finished"] == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    children = Path(parent.info.artifact_uri.removeprefix("file://")) / "children.csv"
    assert children.read_text().count("FINISHED") == 2

    second = _run(args, tmp_path, phantom_cache, "s2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 of 2 jobs FINISHED, 2 SKIPPED" in second.stdout
    assert "skipped unet-dice-s0: already FINISHED" in second.stdout
    runs_now, parents = _runs(tmp_path)
    assert len(runs_now) == 2 and len(parents) == 2
    # the re-run's parent lists both skipped jobs with the runs that stand for them
    (parent2,) = [p for p in parents if p.data.tags["sweep_id"] == "s2"]
    assert parent2.info.status == "FINISHED" and parent2.data.metrics["jobs/skipped"] == 2
    listed = (Path(parent2.info.artifact_uri.removeprefix("file://")) / "children.csv").read_text()
    assert listed.count("SKIPPED") == 2 and all(r.info.run_id in listed for r in runs_now)
    # ... holds their comparison and names the parent of the sweep it completes, which names it back
    assert parent2.data.tags["segsweep.completes"] == parent.info.run_id
    assert {a.path for a in client_of(tmp_path).list_artifacts(parent2.info.run_id, "comparison")} == {
        "comparison/summary.json", "comparison/heatmaps.png"}
    assert client_of(tmp_path).get_run(parent.info.run_id).data.tags["segsweep.confirmed_by"] == parent2.info.run_id

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    deleted = next(r for r in runs if r.info.run_name == "unet-bce-s0")
    client.delete_run(deleted.info.run_id)
    third = _run(args, tmp_path, phantom_cache, "s3")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "1 of 2 jobs FINISHED, 1 SKIPPED" in third.stdout
    runs, _ = _runs(tmp_path)
    assert sorted(r.info.run_name for r in runs) == ["unet-bce-s0", "unet-dice-s0"]
    rerun = next(r for r in runs if r.info.run_name == "unet-bce-s0")
    assert rerun.info.run_id != deleted.info.run_id and rerun.data.tags["sweep_id"] == "s3"
    status = json.loads((tmp_path / "s3" / "0_unet-dice-s0" / "job_status.json").read_text())
    assert status["status"] == "SKIPPED" and status["run_id"] in {r.info.run_id for r in runs}


@pytest.mark.slow   # a full sweep of subprocess runs: make test-all
def test_sigterm_kills_the_run_and_the_rerun_continues_its_epochs(tmp_path, seeded_store, phantom_cache):
    args = ["model=unet", "loss=dice", "profile.epochs=2"]
    killed = _run([*args, "debug.sigterm_after_epoch=1"], tmp_path, phantom_cache, "s1")
    assert killed.returncode != 0
    (run,), (parent,) = _runs(tmp_path)
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["failure_reason"]
    assert parent.info.status == "KILLED"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0]
    assert (Path(run.data.tags["output_dir"]) / "checkpoints" / "last.pt").is_file()
    status = json.loads((Path(run.data.tags["output_dir"]) / "job_status.json").read_text())
    assert status["status"] == "KILLED"

    resumed = _run(args, tmp_path, phantom_cache, "s2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (again,), parents = _runs(tmp_path)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["resumed"] == "1" and again.data.tags["resumed_from_epoch"] == "1"
    assert "failure_reason" not in again.data.tags and again.data.tags["sweep_id"] == "s2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1]
    assert "test/dice" in again.data.metrics and again.data.metrics["best/epoch"] in (1, 2)
    assert not (Path(again.data.tags["output_dir"]) / "checkpoints" / "last.pt").exists()
    assert (Path(again.data.tags["output_dir"]) / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow
def test_resume_false_trains_a_finished_configuration_again(tmp_path, seeded_store, phantom_cache):
    for sweep in ("s1", "s2"):
        proc = _run(["model=unet", "loss=dice", "resume=false"], tmp_path, phantom_cache, sweep)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs, parents = _runs(tmp_path)
    assert len(runs) == 2 and len(parents) == 2 and {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow
def test_phantom_study_runs_9_then_0_then_the_deleted_1(tmp_path, seeded_store, phantom_cache):
    first = _run(["experiment=covid_arch_x_loss"], tmp_path, phantom_cache, "s1")
    assert first.returncode == 0 and "9 of 9 jobs FINISHED" in first.stdout, first.stderr[-3000:]
    second = _run(["experiment=covid_arch_x_loss"], tmp_path, phantom_cache, "s2")
    assert "0 of 9 jobs FINISHED, 9 SKIPPED" in second.stdout
    runs, _ = _runs(tmp_path)
    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").delete_run(runs[0].info.run_id)
    third = _run(["experiment=covid_arch_x_loss"], tmp_path, phantom_cache, "s3")
    assert "1 of 9 jobs FINISHED, 8 SKIPPED" in third.stdout
    assert len(_runs(tmp_path)[0]) == 9


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["launcher=joblib", "n_jobs=2"], ["launcher=submitit_local"]])
def test_parallel_launchers_lose_and_duplicate_nothing(tmp_path, seeded_store, phantom_cache, launcher):
    proc = _run([*launcher, "model=unet,resunet", "loss=dice,bce"], tmp_path, phantom_cache, "s1")
    assert proc.returncode == 0 and "4 of 4 jobs FINISHED" in proc.stdout, proc.stderr[-3000:]
    runs, parents = _runs(tmp_path)
    assert sorted(r.info.run_name for r in runs) == ["resunet-bce-s0", "resunet-dice-s0", "unet-bce-s0", "unet-dice-s0"]
    assert {r.info.status for r in runs} == {"FINISHED"} and len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    assert parents[0].data.metrics["jobs/finished"] == 4
