"""Kill / requeue trials on the local SLURM cluster: does a job that SLURM takes away mid-run ever lose its run?

Starts one sweep of --configs configurations (U-Net + Dice, seeds 0..N-1, tiny phantom settings) through
`launcher=slurm_local`, and while it runs takes a running job away --trials times, at random moments:
alternately `scontrol requeue` (SIGTERM, the job goes back to the queue) and `scancel --signal=USR2`
(SLURM's pre-emption / time-limit warning: submitit requeues the job itself). Then it counts, in the
PostgreSQL-backed MLflow server, the configurations that lost their run: no FINISHED run, more than one
run, or a run left RUNNING. Exit status 0 when none was lost.

    make cluster-up
    .venv/bin/python scripts/cluster/requeue_trials.py --trials 20 --configs 10
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "cluster" / "cluster.sh"
TINY = ["profile.image_size=32", "trainer.limit_train_batches=2", "tracking.overlays=1"]


def cluster_env() -> dict:
    env = dict(os.environ)
    for line in subprocess.run([str(CLUSTER), "env"], capture_output=True, text=True, check=True).stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


def running_jobs(array_id: str, env: dict) -> dict[str, int]:
    """Running tasks of the array -> seconds they have been running."""
    out = subprocess.run(["squeue", "-h", "-j", array_id, "-t", "RUNNING", "-o", "%i|%M"], env=env,
                         capture_output=True, text=True).stdout
    jobs = {}
    for line in out.split():
        job, _, elapsed = line.partition("|")
        parts = [int(p) for p in elapsed.replace("-", ":").split(":")]
        seconds = 0
        for p in parts:
            seconds = seconds * 60 + p
        jobs[job] = seconds
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="jobs taken away (default 20)")
    parser.add_argument("--configs", type=int, default=10, help="configurations in the sweep (default 10)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random moments")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "requeue_trials")
    args = parser.parse_args()

    from mlflow import MlflowClient

    rng = random.Random(args.seed)
    env = cluster_env()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    experiment = f"requeue-trials-{stamp}"
    sweep_dir = args.out / stamp
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log_path = sweep_dir.with_suffix(".log")
    cmd = [sys.executable, "run.py", "-m", "launcher=slurm_local", "model=unet", "loss=dice",
           f"seed=range(0,{args.configs})", f"trainer.epochs={args.epochs}", *TINY,
           f"tracking.experiment={experiment}", f"hydra.sweep.dir={sweep_dir}"]
    print("sweep:", " ".join(cmd), flush=True)
    start = time.time()
    with log_path.open("w") as log:
        sweep = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        array_id = None
        while array_id is None and sweep.poll() is None:
            found = sorted(sweep_dir.glob(".submitit/*_0"))
            array_id = found[0].name.split("_")[0] if found else None
            time.sleep(1)
        trials: list[dict] = []
        while len(trials) < args.trials and sweep.poll() is None:
            time.sleep(rng.uniform(2, 8))
            jobs = running_jobs(array_id, env)
            action = "scontrol requeue" if len(trials) % 2 == 0 else "scancel --signal=USR2"
            # SLURM sends the USR2 warning to jobs that are well under way (submitit's handler is installed by then)
            eligible = {j: s for j, s in jobs.items() if action.startswith("scontrol") or s >= 20}
            if not eligible:
                continue
            job = rng.choice(sorted(eligible))
            command = ["scontrol", "requeue", job] if action.startswith("scontrol") else \
                ["scancel", "--signal=USR2", job]
            try:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=5)
                rc, err = done.returncode, done.stderr.strip()
            except subprocess.TimeoutExpired as exc:
                # scancel retries while the job is being requeued (the signal went out on the first try):
                # stopped here so that it does not signal the job again when it restarts
                rc, err = "retrying, stopped after 5 s", (exc.stderr or b"").decode(errors="replace").strip()
            trials.append({"trial": len(trials) + 1, "job": job, "action": action, "running_s": eligible[job],
                           "at_s": round(time.time() - start, 1), "rc": rc, "stderr": err})
            print(f"trial {len(trials):2d}: {action} {job} after {eligible[job]} s running (rc {rc}) {err}",
                  flush=True)
        rc = sweep.wait(timeout=3600)
    elapsed = time.time() - start

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    children = [r for r in runs if r.data.tags.get("segsweep.parent") != "true"]
    parents = [r for r in runs if r.data.tags.get("segsweep.parent") == "true"]
    by_name: dict[str, list] = {}
    for r in children:
        by_name.setdefault(r.info.run_name, []).append(r)
    names = [f"unet-dice-s{s}" for s in range(args.configs)]
    lost = [n for n in names if len(by_name.get(n, [])) != 1 or by_name[n][0].info.status != "FINISHED"]
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    resumed = {n: by_name[n][0].data.tags.get("resumed", "0") for n in names if len(by_name.get(n, [])) == 1}
    restarts = {}
    for t in trials:
        restarts[t["job"]] = restarts.get(t["job"], 0) + 1
    summary = {"trials": len(trials), "scontrol_requeue": sum(t["action"].startswith("scontrol") for t in trials),
               "usr2": sum(t["action"].startswith("scancel") for t in trials),
               "failed_commands": sum(t["rc"] not in (0, "retrying, stopped after 5 s") for t in trials),
               "configs": args.configs, "runs": len(children), "lost": lost, "running_left": running,
               "parents": [(p.info.run_name, p.info.status) for p in parents],
               "resumed_tags": resumed, "sweep_rc": rc, "elapsed_s": round(elapsed), "experiment": experiment,
               "sweep_dir": str(sweep_dir), "log": str(log_path), "trial_log": trials}
    (sweep_dir / "trials.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(trials)} trials ({summary['scontrol_requeue']} scontrol requeue, {summary['usr2']} USR2) on "
          f"{args.configs} configurations in {elapsed:.0f} s: {len(children)} runs, {len(lost)} lost {lost}, "
          f"{len(running)} RUNNING left, parent {summary['parents']}, sweep exit {rc}; resumed tags {resumed}")
    print(f"details: {sweep_dir / 'trials.json'}")
    return 0 if not lost and not running and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
