"""Faults (issue 19, points 4, 5 and 9): one writer per configuration, unique sweep dirs, the joblib
launcher under SIGTERM and a dead worker, old last.pt files after a resume, predict --out errors."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from seg import PROJECT_ROOT
from seg.sweep import ConfigLock, live_owner
from seg.tracking import HEARTBEAT_TAG, HOST_TAG, PARENT_TAG, PID_TAG, search_runs
from tests.helpers.compose import compose_cfg

TINY = ["profile.image_size=32", "profile.epochs=1", "trainer.limit_train_batches=2", "tracking.overlays=0"]


# --- the lock and the heartbeat rule ------------------------------------------------------------------

def test_config_lock_admits_one_holder_and_names_it_to_the_others(tmp_path):
    first, second = ConfigLock(tmp_path / "locks", "abc123"), ConfigLock(tmp_path / "locks", "abc123")
    assert first.acquire() is None
    first.note(run_id="RUN1")
    holder = second.acquire()                        # flock: a second open file description is refused
    assert holder == {"pid": os.getpid(), "host": socket.gethostname(), "since": holder["since"], "run_id": "RUN1"}
    assert ConfigLock(tmp_path / "locks", "other").acquire() is None     # another configuration is free
    first.release()
    assert second.acquire() is None                  # released (as when its process dies): the next one takes it
    second.release()


def _run(tags: dict) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(run_id="R1"), data=SimpleNamespace(tags=tags))


def test_a_running_run_is_owned_while_its_heartbeat_is_fresh_and_its_process_lives():
    now = 10_000.0
    other = {HOST_TAG: "elsewhere", PID_TAG: "123", HEARTBEAT_TAG: str(now - 100)}
    assert live_owner(_run(other), stale_after_s=300, now=now) == {"run_id": "R1", "host": "elsewhere", "pid": 123,
                                                                    "age_s": 100.0}
    assert live_owner(_run({**other, HEARTBEAT_TAG: str(now - 300)}), stale_after_s=300, now=now) is None  # stale
    assert live_owner(_run({}), stale_after_s=300, now=now) is None          # never beat: resumed as before
    here = {HOST_TAG: socket.gethostname(), HEARTBEAT_TAG: str(now - 1)}
    assert live_owner(_run({**here, PID_TAG: str(os.getpid())}), 300, now=now)["pid"] == os.getpid()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert live_owner(_run({**here, PID_TAG: str(dead.pid)}), 300, now=now) is None  # fresh beat, process gone


def test_heartbeat_settings_are_validated():
    from seg.schema import ConfigError, validate

    with pytest.raises(ConfigError, match=r"tracking.stale_after_s=0"):
        validate(compose_cfg(["tracking.stale_after_s=0"]))


def test_two_sweeps_composed_in_the_same_second_get_different_dirs():
    from hydra.core.utils import setup_globals

    setup_globals()          # registers Hydra's `now` resolver as a Hydra app does
    dirs = {str(compose_cfg([], return_hydra_config=True).hydra.sweep.dir) for _ in range(3)}
    assert len(dirs) == 3, dirs
    cfg = compose_cfg([], return_hydra_config=True)
    assert str(cfg.hydra.sweep.dir) == str(cfg.hydra.sweep.dir)  # one sweep: one value, however often it is read


@pytest.mark.slow
def test_a_run_with_a_fresh_heartbeat_elsewhere_is_skipped_and_a_stale_one_resumed(tmp_path, seeded_store, phantom_cache, caplog):
    """Across machines (a shared tracking store): no lock file is shared, the run's heartbeat decides."""
    from omegaconf import OmegaConf

    from seg.sweep import config_hash
    from seg.train import run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg([*TINY, "device=cpu", "threads=1", f"tracking.uri={uri}", f"paths.output={tmp_path}/out"])
    chash = config_hash(OmegaConf.to_container(cfg, resolve=True), [cfg.paths.cache, cfg.paths.root])
    client = MlflowClient(uri)
    exp = client.create_experiment("phantom_xray")
    other = client.create_run(exp, run_name="unet-dice-s0", tags={
        "config_hash": chash, HOST_TAG: "node-7", PID_TAG: "4242", HEARTBEAT_TAG: f"{time.time():.1f}"}).info.run_id
    with caplog.at_level("INFO", logger="seg.train"):
        value = run(cfg)
    assert value != value            # NaN: nothing trained
    assert f"skipped unet-dice-s0: being trained by run {other} on host node-7 (pid 4242)" in caplog.text
    assert client.get_run(other).info.status == "RUNNING" and not client.get_metric_history(other, "train/loss")
    client.set_tag(other, HEARTBEAT_TAG, f"{time.time() - 301:.1f}")      # its owner stopped beating: dead
    run(cfg)
    (again,) = search_runs(uri, "phantom_xray")
    assert again.info.run_id == other and again.info.status == "FINISHED"
    assert again.data.tags[HOST_TAG] == socket.gethostname() and again.data.tags[PID_TAG] == str(os.getpid())
    assert [m.step for m in client.get_metric_history(other, "train/loss")] == [0]


# --- end to end: concurrent sweeps ------------------------------------------------------------------

def _env(tmp_path: Path, phantom_cache: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "SEGSWEEP_CACHE": str(phantom_cache), "PYTHONUNBUFFERED": "1"}


def _sweep(args: list[str], tmp_path: Path, phantom_cache: Path, log: str) -> subprocess.Popen:
    out = open(tmp_path / log, "w")
    return subprocess.Popen([sys.executable, "run.py", "-m", *TINY, f"paths.output={tmp_path}/outputs", *args],
                            cwd=PROJECT_ROOT, env=_env(tmp_path, phantom_cache), stdout=out, stderr=subprocess.STDOUT,
                            text=True)


def _all_runs(tmp_path: Path) -> tuple[list, list]:
    runs = search_runs(f"sqlite:///{tmp_path}/mlflow.db", "phantom_xray")
    return ([r for r in runs if r.data.tags.get(PARENT_TAG) != "true"],
            [r for r in runs if r.data.tags.get(PARENT_TAG) == "true"])


@pytest.mark.slow
def test_two_identical_sweeps_started_together_train_each_configuration_once(tmp_path, seeded_store, phantom_cache):
    args = ["model=unet", "loss=dice,bce", "profile.epochs=2"]
    procs = [_sweep(args, tmp_path, phantom_cache, f"sweep{i}.log") for i in range(2)]
    codes = [p.wait(timeout=900) for p in procs]
    logs = [(tmp_path / f"sweep{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    runs, parents = _all_runs(tmp_path)
    hashes = [r.data.tags["config_hash"] for r in runs]
    assert len(runs) == 2 and len(set(hashes)) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for r in runs:          # no step logged twice
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")] == [0, 1]
    # two sweeps, two dirs (even within one second), two parents; each sweep's jobs share its dir
    sweep_dirs = sorted((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweep_dirs) == 2 and len(parents) == 2
    assert {p.data.tags["sweep_dir"] for p in parents} == {str(d) for d in sweep_dirs}
    jobs = [json.loads(f.read_text()) for d in sweep_dirs for f in sorted(d.glob("*/job_status.json"))]
    assert [len(list(d.glob("*/job_status.json"))) for d in sweep_dirs] == [2, 2]
    trained = [j for j in jobs if j["status"] == "FINISHED"]
    assert sorted(j["config_hash"] for j in trained) == sorted(hashes)   # each configuration trained once
    skipped = [j for j in jobs if j["status"] == "SKIPPED"]
    assert len(skipped) == 2 and all(j["reason"].startswith(("already FINISHED as run", "being trained by"))
                                     for j in skipped)


# --- end to end: the joblib launcher under faults -----------------------------------------------------

def _wait_jobs(sweep_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 600) -> list[dict]:
    """The job_status.json of n jobs once each names its MLflow run (the job is training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = []
        for f in sweep_dir.glob("*/job_status.json"):
            try:
                jobs.append({**json.loads(f.read_text()), "dir": f.parent})
            except (OSError, json.JSONDecodeError):
                pass
        ready = [j for j in jobs if j.get("status") == "RUNNING" and j.get("run_id")]
        if len(ready) >= n:
            return ready
        assert proc.poll() is None, "the sweep ended before its jobs started"
        time.sleep(0.5)
    raise AssertionError(f"{n} jobs did not start within {timeout} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.mark.slow
def test_sigterm_to_a_joblib_sweep_stops_its_workers_and_marks_everything_killed(tmp_path, seeded_store, phantom_cache):
    sweep_dir = tmp_path / "s1"
    proc = _sweep(["launcher=joblib", "n_jobs=2", "loss=dice,bce", "profile.epochs=200", "trainer.early_stopping=0",
                   f"hydra.sweep.dir={sweep_dir}"], tmp_path, phantom_cache, "sweep.log")
    try:
        jobs = _wait_jobs(sweep_dir, 2, proc)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "sweep.log").read_text()
    assert code == 128 + signal.SIGTERM, log[-3000:]
    pids = [j["pid"] for j in jobs]
    assert len(set(pids)) == 2 and proc.pid not in pids
    assert not [pid for pid in pids if _alive(pid)], "worker processes left behind"
    runs, (parent,) = _all_runs(tmp_path)
    assert sorted(r.info.run_id for r in runs) == sorted(j["run_id"] for j in jobs)
    assert {r.info.status for r in runs} == {"KILLED"} and parent.info.status == "KILLED"
    assert all("SIGTERM" in r.data.tags["failure_reason"] for r in runs)
    statuses = [json.loads((j["dir"] / "job_status.json").read_text())["status"] for j in jobs]
    assert statuses == ["KILLED", "KILLED"]
    assert "sweep interrupted by SIGTERM" in log


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_own_job(tmp_path, seeded_store, phantom_cache):
    sweep_dir = tmp_path / "s1"
    proc = _sweep(["launcher=joblib", "n_jobs=2", "loss=dice,bce,focal", "profile.epochs=3",
                   f"hydra.sweep.dir={sweep_dir}"], tmp_path, phantom_cache, "sweep.log")
    try:
        victim = _wait_jobs(sweep_dir, 1, proc)[0]
        os.kill(victim["pid"], signal.SIGKILL)         # as the out-of-memory killer does
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "sweep.log").read_text()
    assert code == 1, log[-3000:]
    assert "sweep done: 2 of 3 jobs FINISHED, 0 SKIPPED (already finished), 1 FAILED" in log, log[-3000:]
    runs, (parent,) = _all_runs(tmp_path)
    status = {r.info.run_id: r.info.status for r in runs}
    assert status.pop(victim["run_id"]) == "FAILED" and list(status.values()) == ["FINISHED", "FINISHED"]
    killed = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(victim["run_id"])
    assert "SIGKILL" in killed.data.tags["failure_reason"]
    job = json.loads((victim["dir"] / "job_status.json").read_text())
    assert job["status"] == "FAILED" and "SIGKILL" in job["reason"]
    assert parent.info.status == "FAILED" and not _alive(victim["pid"])


# --- point 9 -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_resumed_run_removes_the_old_last_checkpoints_once_it_has_its_own(tmp_path, seeded_store, phantom_cache):
    from seg.train import run

    base = [*TINY, "profile.epochs=3", "trainer.early_stopping=0", "device=cpu", "threads=1",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"paths.output={tmp_path}/out"]
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg([*base, "debug.sigterm_after_epoch=1"]))
    (first,) = search_runs(f"sqlite:///{tmp_path}/mlflow.db", "phantom_xray")
    old = Path(first.data.tags["output_dir"]) / "checkpoints"
    assert (old / "last.pt").is_file()
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg([*base, "debug.sigterm_after_epoch=2"]))     # resumed in a new output dir, killed again
    (second,) = search_runs(f"sqlite:///{tmp_path}/mlflow.db", "phantom_xray")
    new = Path(second.data.tags["output_dir"]) / "checkpoints"
    assert new != old and (new / "last.pt").is_file() and (new / "best.pt").is_file()
    assert not (old / "last.pt").exists() and not (old / "last.prev.pt").exists()
    assert (old / "best.pt").is_file()                  # the best weights are not a resume state: kept


def _predict(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seg.predict", "none.pt", "x.png", "--out", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def test_predict_out_on_a_file_or_an_unwritable_folder_is_one_line_exit_2(tmp_path):
    existing = tmp_path / "result.txt"
    existing.write_text("keep me")
    proc = _predict(existing)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --out {existing} is an existing file, not a folder; give a folder (it is created if missing)"]
    assert existing.read_text() == "keep me"
    proc = _predict(existing / "sub")              # a folder that cannot be created
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"--out {existing / 'sub'}: cannot create the folder (Not a directory)" in proc.stderr
    if sys.platform.startswith("linux"):           # /proc refuses new files even to root
        proc = _predict(Path("/proc"))
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            "error: --out /proc is not writable (No such file or directory); give a writable folder"]
