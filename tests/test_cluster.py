"""launcher=slurm: the dry run, the one-line refusals (no SLURM here, a sqlite store), job states without
an accounting database; and, slow, the 3 x 3 phantom study on a real single-node SLURM cluster with a
PostgreSQL-backed MLflow server (scripts/cluster/cluster.sh), one job requeued mid-run."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seg import PROJECT_ROOT
from tests.conftest import compose_cfg

CLUSTER = PROJECT_ROOT / "scripts" / "cluster" / "cluster.sh"
STUDY = ["experiment=covid_arch_x_loss"]
# trainer.checkpoint_every_s=0: last.pt after every epoch, which the tests wait for to find a job mid-run
TINY = ["profile.image_size=32", "trainer.epochs=3", "trainer.limit_train_batches=2", "tracking.overlays=1",
        "trainer.checkpoint_every_s=0"]


def _run(args: list[str], tmp_path: Path, path: str, **env) -> subprocess.CompletedProcess:
    """run.py -m with PATH=path (where sbatch is, or not) and no SLURM_CONF / MLFLOW_TRACKING_URI inherited."""
    base = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "run.py", "-m", *args, f"hydra.sweep.dir={tmp_path}/sweep"],
                          cwd=PROJECT_ROOT, env={**base, "PATH": path, **env}, capture_output=True, text=True,
                          timeout=300)


def _fake_slurm(bin_dir: Path) -> Path:
    """sbatch / srun / squeue stand-ins that only record that they were called."""
    bin_dir.mkdir()
    calls = bin_dir / "calls.txt"
    for name in ("sbatch", "srun", "squeue", "sacct", "scontrol"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\n"
                          f"echo '{name}: this is not a cluster' >&2\nexit 1\n")
        script.chmod(0o755)
    return calls


def test_dry_run_prints_the_sbatch_script_and_the_jobs_and_submits_nothing(tmp_path):
    proc = _run([*STUDY, "launcher=slurm", "slurm.dry_run=true", "slurm.partition=gpu", "slurm.account=lab",
                 "slurm.qos=high", "slurm.gpus=2", "slurm.cpus=6", "slurm.mem_gb=40", "slurm.time_min=90",
                 "slurm.parallel=2"], tmp_path, path="/nonexistent")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for flag in ("--array=0-8%2", "--partition=gpu", "--account=lab", "--qos=high", "--gpus-per-node=2",
                 "--cpus-per-task=6", "--mem=40GB", "--time=90", "--requeue", "--signal=USR2@120",
                 f"--chdir={PROJECT_ROOT}"):
        assert f"#SBATCH {flag}\n" in out, flag
    assert f"{sys.executable} -u -m submitit.core._submit {tmp_path}/sweep/.submitit/%j" in out
    jobs = [line for line in out.splitlines() if line.startswith("#") and line[1:2].isdigit()]
    assert len(jobs) == 9 and jobs[0].startswith("#0: model=unet loss=bce seed=0")
    assert jobs[8].startswith("#8: model=transunet loss=dice seed=0")
    # the default sqlite store is named as what a real submission would refuse
    assert "NOTE: a real submission would stop here" in out and "MLFLOW_TRACKING_URI" in out
    assert not (tmp_path / "sweep" / ".submitit").exists()

    no_requeue = _run(["model=unet", "loss=dice", "launcher=slurm", "slurm.dry_run=true", "slurm.requeue=false",
                       "slurm.gpus=null"], tmp_path, path="/nonexistent")
    assert "#SBATCH --no-requeue\n" in no_requeue.stdout and "--requeue\n" not in no_requeue.stdout
    assert "--gpus-per-node" not in no_requeue.stdout and "--array" not in no_requeue.stdout


def test_off_a_cluster_launcher_slurm_fails_in_one_line(tmp_path):
    proc = _run([*STUDY, "launcher=slurm"], tmp_path, path="/nonexistent",
                MLFLOW_TRACKING_URI="http://127.0.0.1:1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "launcher=slurm: no SLURM here (sbatch and srun not on PATH): run the sweep on a cluster's login node, "
        "or preview the jobs with slurm.dry_run=true"]


def test_a_sqlite_store_is_refused_before_anything_is_submitted(tmp_path):
    calls = _fake_slurm(tmp_path / "bin")
    proc = _run(["model=unet", "loss=dice", "launcher=slurm"], tmp_path, path=str(tmp_path / "bin"))
    assert proc.returncode == 2 and not calls.exists()
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("launcher=slurm: the tracking store is sqlite:///")
    assert "export MLFLOW_TRACKING_URI=http://HOST:PORT" in line and "slurm.allow_sqlite=true" in line

    # the explicit opt-in (a single-node cluster) goes on to sbatch, whose refusal is one line too
    opted = _run(["model=unet", "loss=dice", "launcher=slurm", "slurm.allow_sqlite=true"], tmp_path,
                 path=str(tmp_path / "bin"))
    assert opted.returncode == 2 and calls.read_text().startswith("sbatch ")
    assert opted.stderr.strip().splitlines()[-1] == \
        "launcher=slurm: sbatch refused the job array: sbatch: this is not a cluster"


def test_job_states_come_from_squeue_when_sacct_has_no_database(tmp_path, monkeypatch):
    from hydra_plugins.segsweep_slurm.slurm_launcher import _watcher_class, squeue_states, tracking_problem

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n")
    (bin_dir / "squeue").write_text("#!/bin/sh\nprintf '7_0|COMPLETED|vm\\n7_1|REQUEUE_HOLD|\\n"
                                    "7_[2-4%%2]|PENDING|\\n7_5|CANCELLED|vm\\n7_6|CONFIGURING|vm\\n'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert squeue_states(["7"]).splitlines()[:3] == ["JobID|State|NodeList", "7_0|COMPLETED|vm", "7_1|RUNNING|"]

    watcher = _watcher_class()(delay_s=0)
    for job in ("7_0", "7_1", "7_3", "7_5", "7_6"):
        watcher.register_job(job)
    watcher.update()
    assert {j: watcher.get_state(j, mode="cache") for j in ("7_0", "7_1", "7_3", "7_5", "7_6")} == {
        "7_0": "COMPLETED", "7_1": "RUNNING", "7_3": "PENDING", "7_5": "CANCELLED", "7_6": "RUNNING"}
    assert watcher.is_done("7_5", mode="cache") and not watcher.is_done("7_1", mode="cache")

    assert tracking_problem("http://host:5000", allow_sqlite=False) is None
    assert tracking_problem("sqlite:////x/mlflow.db", allow_sqlite=True) is None
    assert "sqlite file" in tracking_problem("sqlite:////x/mlflow.db", allow_sqlite=False)


def test_local_cluster_preset_runs_one_core_jobs_two_at_a_time_on_the_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SEGSWEEP_CLUSTER_DIR", raising=False)
    cfg = compose_cfg(["launcher=slurm_local"])
    assert (cfg.slurm.cpus, cfg.slurm.parallel, cfg.slurm.mem_gb, cfg.slurm.gpus) == (1, 2, 2, None)
    assert cfg.threads == 1 and cfg.device == "cpu" and cfg.slurm.requeue is True
    assert cfg.tracking.uri == "http://127.0.0.1:55000"
    assert cfg.slurm.conf_file == "/var/tmp/segsweep-cluster/slurm.conf"
    assert compose_cfg(["launcher=slurm"]).slurm.allow_sqlite is False


# --- the real cluster ------------------------------------------------------------------------------


def _cluster_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (slurmd, munged and a private PostgreSQL are started by scripts/cluster/cluster.sh)"
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(c) is None]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        missing.append("postgresql")
    if missing:
        return (f"SLURM / PostgreSQL not installed ({', '.join(missing)}): "
                "apt-get install -y slurmctld slurmd slurm-client munge postgresql")
    return None


@pytest.fixture(scope="module")
def cluster():
    """The local cluster, up for the module and down after it -> the environment its clients need."""
    reason = _cluster_missing()
    if reason:
        pytest.skip(reason)
    subprocess.run([str(CLUSTER), "up"], check=True, timeout=900)
    try:
        env = dict(os.environ)
        lines = subprocess.run([str(CLUSTER), "env"], capture_output=True, text=True, check=True).stdout
        for line in lines.splitlines():
            if line:
                key, _, value = line.removeprefix("export ").partition("=")
                env[key] = value
        yield env
    finally:
        subprocess.run([str(CLUSTER), "down"], timeout=300)


def _slurm(args: list[str], env: dict) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60).stdout


@pytest.mark.slow
def test_phantom_study_through_slurm_with_a_job_requeued_mid_run(cluster, tmp_path, phantom_cache):
    from mlflow import MlflowClient

    env = {**cluster, "SEGSWEEP_CACHE": str(phantom_cache)}
    experiment = f"cluster-e2e-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = tmp_path / "sweep"
    log = (tmp_path / "sweep.log").open("w")
    # 8 epochs: with 3 of about 0.5 s each a job could finish (and remove its last.pt) between the poll that saw
    # the file and the requeue; it then ended KILLED with nothing to resume, and came back as a new run
    epochs = 8
    sweep = subprocess.Popen([sys.executable, "run.py", "-m", *STUDY, "launcher=slurm_local",
                              *[o for o in TINY if not o.startswith("trainer.epochs")], f"trainer.epochs={epochs}",
                              f"tracking.experiment={experiment}", f"hydra.sweep.dir={sweep_dir}"],
                             cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    try:
        # the first job with an epoch checkpointed and still training is requeued
        deadline = time.time() + 600
        target = None
        while target is None and time.time() < deadline and sweep.poll() is None:
            for last in sorted(sweep_dir.glob("*/checkpoints/last.pt")):
                target = last.parent.parent
                break
            time.sleep(0.5)
        assert target is not None, (tmp_path / "sweep.log").read_text()[-3000:]
        num = target.name.split("_", 1)[0]
        (task_dir,) = [d for d in sweep_dir.glob(f".submitit/*_{num}") if d.name.split("_")[0].isdigit()]
        job_id = task_dir.name
        assert _slurm(["squeue", "-h", "-j", job_id, "-o", "%T"], env).strip() == "RUNNING"
        exp = client.get_experiment_by_name(experiment)
        (before,) = client.search_runs([exp.experiment_id], f"tags.output_dir = '{target}'")
        subprocess.run(["scontrol", "requeue", job_id], env=env, check=True, timeout=60)
        assert sweep.wait(timeout=1500) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
        log.close()
    out = (tmp_path / "sweep.log").read_text()
    assert "sweep done: 9 of 9 jobs FINISHED" in out, out[-3000:]
    assert "Restarts=1" in _slurm(["scontrol", "show", "job", job_id], env)

    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("segsweep.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("segsweep.parent") != "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 9 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.info.run_name for r in children) == sorted(
        f"{m}-{loss}-s0" for m in ("unet", "resunet", "transunet") for loss in ("bce", "focal", "dice"))
    assert parents[0].data.metrics["jobs/finished"] == 9
    # the requeued job resumed its own run: same id, `resumed` tag, epochs continued from the checkpoint
    again = client.get_run(before.info.run_id)
    assert again.info.status == "FINISHED" and again.data.tags["resumed"] == "1"
    assert int(again.data.tags["resumed_from_epoch"]) >= 1 and "failure_reason" not in again.data.tags
    steps = [m.step for m in client.get_metric_history(again.info.run_id, "train/loss")]
    assert sorted(set(steps)) == list(range(epochs))
    assert [r.data.tags.get("resumed") for r in children].count(None) == 8
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert not (target / "checkpoints" / "last.pt").exists() and (target / "checkpoints" / "best.pt").is_file()

    # the report reads the server like any store
    # (the study's runs are tiny, i.e. smoke runs, which the report leaves out unless asked)
    report = subprocess.run([sys.executable, "-m", "seg.report", "--experiment", experiment, "--include-smoke",
                             "--out", str(tmp_path / "report")], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    with (tmp_path / "report" / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 and {(r["model"], r["loss"]) for r in rows} == {
        (m, loss) for m in ("unet", "resunet", "transunet") for loss in ("bce", "focal", "dice")}
    assert {r["n_runs"] for r in rows} == {"1"}


@pytest.mark.slow
def test_a_job_cancelled_for_good_ends_the_wait_and_fails_the_sweep(cluster, tmp_path, phantom_cache):
    """`scancel` (no requeue): the job ends its run KILLED; the launcher learns that the job ended without
    a result from squeue (there is no accounting database for sacct here) instead of waiting forever,
    the sweep summary lists it and the command exits 1."""
    env = {**cluster, "SEGSWEEP_CACHE": str(phantom_cache)}
    sweep_dir = tmp_path / "sweep"
    log = (tmp_path / "sweep.log").open("w")
    args = ["model=unet", "loss=dice,bce", "launcher=slurm_local", "trainer.epochs=20",
            *[o for o in TINY if not o.startswith("trainer.epochs")],
            f"tracking.experiment=cluster-cancel-{time.strftime('%Y%m%d-%H%M%S')}", f"hydra.sweep.dir={sweep_dir}"]
    sweep = subprocess.Popen([sys.executable, "run.py", "-m", *args], cwd=PROJECT_ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while not list(sweep_dir.glob("1_*/checkpoints/last.pt")) and time.time() < deadline \
                and sweep.poll() is None:
            time.sleep(0.5)
        (task_dir,) = [d for d in sweep_dir.glob(".submitit/*_1") if d.name.split("_")[0].isdigit()]
        subprocess.run(["scancel", task_dir.name], env=env, check=True, timeout=60)
        rc = sweep.wait(timeout=900)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        log.close()
    out = (tmp_path / "sweep.log").read_text()
    assert rc == 1, out[-3000:]
    assert f"SLURM job {task_dir.name} ended without a result (state CANCELLED)" in out, out[-3000:]
    assert "sweep done: 1 of 2 jobs FINISHED, 0 SKIPPED (already finished), 1 FAILED (1 KILLED)" in out
    status = json.loads((sweep_dir / "1_unet-bce-s0" / "job_status.json").read_text())
    assert status["status"] == "KILLED" and status["reason"] == "interrupted: SIGTERM"


def test_a_parent_run_left_by_a_killed_job_is_adopted_not_created_twice(tmp_path):
    """A job killed between creating the sweep's parent run and writing its id file (SLURM requeues it at
    any moment) left the parent in MLflow; the next job adopts it: one parent per sweep."""
    from mlflow import MlflowClient

    from seg.tracking import PARENT_TAG, get_or_create_experiment, search_runs, sweep_parent

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep_dir = tmp_path / "sweep"
    info = {"command": "run.py -m model=unet,resunet", "grid": {"model": "unet,resunet"}, "overrides": []}
    first = sweep_parent(uri, "phantom_xray", "sweep", sweep_dir, info)
    (sweep_dir / ".mlflow_parent_phantom_xray").unlink()  # as if the job died before writing it
    assert sweep_parent(uri, "phantom_xray", "sweep", sweep_dir, info) == first
    assert (sweep_dir / ".mlflow_parent_phantom_xray").read_text() == first

    # killed even before the parent's params were logged: adopted, the params added
    client = MlflowClient(uri)
    other = tmp_path / "other"
    orphan = client.create_run(get_or_create_experiment(client, "phantom_xray", uri), run_name="sweep-other",
                               tags={PARENT_TAG: "true", "sweep_id": "other", "sweep_dir": str(other)})
    assert sweep_parent(uri, "phantom_xray", "other", other, info) == orphan.info.run_id
    assert client.get_run(orphan.info.run_id).data.params["grid.model"] == "unet,resunet"
    parents = [r for r in search_runs(uri, "phantom_xray") if r.data.tags.get(PARENT_TAG) == "true"]
    assert sorted(r.info.run_id for r in parents) == sorted([first, orphan.info.run_id])
