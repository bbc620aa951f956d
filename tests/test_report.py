"""seg.report: MLflow runs -> tables, statistics, figures, HTML. A tiny MLflow store is written here
through the MLflow client with known metric values and per-case CSVs, so no training is needed."""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy.stats import wilcoxon

from seg import PROJECT_ROOT
from seg import report

SWEEP = "2026-11-01_10-00-00"
OLD_SWEEP = "2026-10-01_10-00-00"
CHROMIUM = Path("/usr/bin/chromium")
# (model, loss) -> base Dice; unet + bce has only two of the three seeds
BASE = {("unet", "bce"): 0.50, ("unet", "dice"): 0.62, ("resunet", "bce"): 0.55, ("resunet", "dice"): 0.70}
SEEDS = {cfg: ([0, 1] if cfg == ("unet", "bce") else [0, 1, 2]) for cfg in BASE}
N_CASES = 12


def case_values(model: str, loss: str, seed: int, structures=("infection",)) -> pd.DataFrame:
    """Deterministic per-case results of one synthetic run; case 11 has empty ground truth and prediction."""
    rng = np.random.default_rng(zlib.crc32(f"{model}-{loss}-{seed}".encode()))
    rows = []
    for i in range(N_CASES):
        for k, s in enumerate(structures):
            empty = i == N_CASES - 1
            d = math.nan if empty else float(np.clip(BASE[(model, loss)] + 0.01 * seed + 0.02 * k
                                                     + rng.normal(0, 0.05), 0, 1))
            rows.append({"case_id": f"Test/COVID-19/case_{i:02d}.png", "structure": s, "gt_empty": empty,
                         "pred_empty": empty, "dice": d, "iou": d / (2 - d) if not empty else math.nan,
                         "hd": math.nan if empty else 40 * (1 - d) + 2, "hd95": math.nan if empty else 30 * (1 - d) + 1,
                         "assd": math.nan if empty else 5 * (1 - d)})
    return pd.DataFrame(rows)


def log_run(client, exp_id, art_dir: Path, model, loss, seed, sweep, status="FINISHED", start=None,
            structures=("infection",), extra_tags=None, dataset="phantom_xray") -> str:
    tags = {"model": model, "loss": loss, "seed": str(seed), "sweep_id": sweep, "dataset": dataset,
            "config_hash": f"{model}-{loss}-{seed}", **(extra_tags or {})}
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=f"{model}-{loss}-s{seed}")
    rid = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param("model.name", model), Param("trainer.epochs", "3")]
    metrics = [Metric("val/dice", BASE[(model, loss)] * (step + 1) / 3 + 0.001 * seed, now, step) for step in range(3)]
    if status == "FINISHED":
        cases = case_values(model, loss, seed, structures)
        per = {s: cases[cases.structure == s] for s in structures}
        final = {}
        for m in ("dice", "iou", "hd95"):
            means = [float(np.nanmean(per[s][m])) for s in structures]
            final[f"test/{m}"] = float(np.mean(means))
            for s, v in zip(structures, means):
                final[f"test/{m}_{s}"] = v
                final[f"test/{m}_{s}_n"] = float(per[s][m].notna().sum())
        final.update({"model/params": {"unet": 1.0e6, "resunet": 3.0e5}[model],
                      "time/train_s": 10.0 + seed, "time/img_per_s": 50.0 - seed, "best/epoch": 3.0})
        metrics += [Metric(k, v, now, 0) for k, v in final.items()]
        cases.to_csv(art_dir / "cases.csv", index=False)          # art_dir is this run's own staging dir
        png = art_dir / "overlays" / "Test_COVID-19_case_00.png"
        png.parent.mkdir(exist_ok=True)
        matplotlib.image.imsave(png, np.full((16, 16), 0.2 + 0.1 * seed), cmap="gray")
        client.log_artifacts(rid, str(art_dir))                   # cases.csv and overlays/
    client.log_batch(rid, metrics=metrics, params=params)
    if status == "FAILED":
        client.set_tag(rid, "failure_reason", "FloatingPointError: loss is NaN at epoch 2")
    if status != "RUNNING":
        client.set_terminated(rid, status=status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with one sweep of 4 configurations (one with a seed short), a FAILED and a RUNNING run,
    a sweep parent run, an older sweep, and a 3-structure cardiac task."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()                                   # creates the store's tables (slow: migrations)
    shutil.copy(root / "mlflow.db", root / "empty.db")            # an empty store, for the no-runs test
    staging = root / "staging"
    staging.mkdir()
    ids = {}
    exp = client.create_experiment("phantom_xray", artifact_location=(root / "artifacts").as_uri())
    t0 = int(time.time() * 1000) - 3_600_000
    log_run(client, exp, _stage(staging, "old"), "unet", "bce", 0, OLD_SWEEP, start=t0 - 86_400_000)
    for (model, loss), seeds in SEEDS.items():
        for seed in seeds:
            ids[(model, loss, seed)] = log_run(client, exp, _stage(staging, f"{model}{loss}{seed}"), model, loss,
                                               seed, SWEEP, start=t0 + 1000 * seed)
    ids["failed"] = log_run(client, exp, _stage(staging, "failed"), "resunet", "dice", 3, SWEEP, status="FAILED",
                            start=t0 + 5000)
    ids["running"] = log_run(client, exp, _stage(staging, "running"), "unet", "dice", 3, SWEEP, status="RUNNING",
                             start=t0 + 6000)
    parent = client.create_run(exp, tags={"segsweep.parent": "true", "sweep_id": SWEEP}, run_name=f"sweep-{SWEEP}")
    client.log_metric(parent.info.run_id, "test/dice", 0.99)
    client.set_terminated(parent.info.run_id, "FINISHED")
    ids["parent"] = parent.info.run_id

    cardiac = client.create_experiment("phantom_cardiac", artifact_location=(root / "artifacts_c").as_uri())
    for cfg in (("unet", "dice"), ("resunet", "dice")):
        for seed in (0, 1):
            ids[("cardiac",) + cfg + (seed,)] = log_run(
                client, cardiac, _stage(staging, f"c{cfg}{seed}"), *cfg, seed, SWEEP, start=t0,
                structures=("rv", "myo", "lv"), dataset="phantom_cardiac")
    # a resumed sweep: SWEEP ran resunet + dice and skipped unet + dice, FINISHED earlier in OLD_SWEEP
    resumed = client.create_experiment("resumed_xray", artifact_location=(root / "artifacts_r").as_uri())
    skipped = log_run(client, resumed, _stage(staging, "r_old"), "unet", "dice", 0, OLD_SWEEP, start=t0 - 86_400_000)
    fresh = log_run(client, resumed, _stage(staging, "r_new"), "resunet", "dice", 0, SWEEP, start=t0)
    parent = client.create_run(resumed, tags={"segsweep.parent": "true", "sweep_id": SWEEP}, run_name="sweep")
    children = _stage(staging, "r_parent") / "children.csv"
    pd.DataFrame([{"job": "0_unet-dice-s0", "status": "SKIPPED", "run_id": skipped},
                  {"job": "1_resunet-dice-s0", "status": "FINISHED", "run_id": fresh}]).to_csv(children, index=False)
    client.log_artifact(parent.info.run_id, str(children))
    client.set_terminated(parent.info.run_id, "FINISHED")
    ids["resumed"] = (skipped, fresh)
    return {"uri": uri, "client": client, "ids": ids, "root": root, "empty_uri": f"sqlite:///{root}/empty.db"}


def _stage(staging: Path, name: str) -> Path:
    d = staging / re.sub(r"\W", "_", name)
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="module")
def built(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = report.build_report(store["uri"], out)
    return {**result, "out": out, "summary": pd.read_csv(out / "summary.csv"),
            "results": pd.read_csv(out / "results.csv"), "md": (out / "report.md").read_text(),
            "html": (out / "index.html").read_text()}


def _mlflow_values(store, experiment, model, loss, key):
    """The metric of every FINISHED run of a configuration in the report's sweep, read back from MLflow."""
    client = store["client"]
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.sweep_id = '{SWEEP}' and tags.model = '{model}' "
                                                   f"and tags.loss = '{loss}' and attributes.status = 'FINISHED'")
    return [r.data.metrics[key] for r in runs if key in r.data.metrics]


def test_table_holds_every_configuration_with_mlflow_values(built, store):
    s = built["summary"][built["summary"].task == "phantom_xray"]
    assert set(zip(s.model, s.loss)) == set(BASE)
    for _, row in s.iterrows():
        for key in ("test/dice", "test/iou", "test/hd95"):
            values = _mlflow_values(store, "phantom_xray", row.model, row.loss, key)
            assert row.n_runs == len(values) == len(SEEDS[(row.model, row.loss)])
            assert row[f"{key}_mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert row[f"{key}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        # the Markdown table shows the same numbers, formatted
        dice = f"{np.mean(_mlflow_values(store, 'phantom_xray', row.model, row.loss, 'test/dice')):.3f}"
        assert re.search(rf"\| {row.model} \| {row.loss} \| {row.n_runs} \| [^|]+ \| \**{dice} ± ", built["md"])


def test_mean_and_std_over_seeds():
    assert report.mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, 0.2, 3))
    mean, std, n = report.mean_std([0.4, float("nan"), None])
    assert (mean, n) == (0.4, 1) and math.isnan(std)       # one seed: no std, not 0
    assert report.fmt_stat((0.7, 0.2, 3), "test/dice") == "0.700 ± 0.200"
    assert report.fmt_stat((0.7, math.nan, 1), "test/dice") == "0.700"


def test_best_per_column_is_marked(built):
    s = built["summary"][built["summary"].task == "phantom_xray"]
    best_dice = s.loc[s["test/dice_mean"].idxmax()]
    best_hd = s.loc[s["test/hd95_mean"].idxmin()]
    assert (best_dice.model, best_dice.loss) == ("resunet", "dice")
    assert f"**{best_dice['test/dice_mean']:.3f} ± " in built["md"]
    assert f"**{best_hd['test/hd95_mean']:.2f} ± " in built["md"]
    assert built["html"].count('class="best"') >= 3


def test_failed_running_and_parent_runs_are_listed_not_averaged(built, store):
    ids, res = store["ids"], built["results"].set_index("run_id")
    assert not res.loc[ids["failed"], "included"] and res.loc[ids["failed"], "status"] == "FAILED"
    assert not res.loc[ids["running"], "included"] and res.loc[ids["running"], "status"] == "RUNNING"
    assert ids["parent"] not in res.index                     # a sweep's parent run is not a configuration
    s = built["summary"].set_index(["task", "model", "loss"])
    assert s.loc[("phantom_xray", "resunet", "dice"), "n_runs"] == 3   # the FAILED seed 3 is not counted
    assert s.loc[("phantom_xray", "unet", "dice"), "n_runs"] == 3      # nor the RUNNING one
    assert s["test/dice_mean"].max() < 0.99                    # the parent's metric is in no mean
    section = built["md"].split("## Task: phantom_xray")[1].split("### Runs not averaged")[1]
    assert "resunet-dice-s3" in section and "loss is NaN" in section and "unet-dice-s3" in section
    assert "RUNNING" in section


def test_configuration_with_fewer_seeds_is_flagged(built):
    s = built["summary"].set_index(["task", "model", "loss"])
    assert s.loc[("phantom_xray", "unet", "bce"), "flags"] == "fewer seeds: 2 of 3 (missing seed 2)"
    assert pd.isna(s.loc[("phantom_xray", "resunet", "dice"), "flags"])
    assert "⚠ unet + bce: fewer seeds: 2 of 3 (missing seed 2)" in built["md"]


def test_per_structure_table_for_multiclass(built, store):
    s = built["summary"][built["summary"].task == "phantom_cardiac"]
    assert len(s) == 2
    for _, row in s.iterrows():
        for st in ("rv", "myo", "lv"):
            values = _mlflow_values(store, "phantom_cardiac", row.model, row.loss, f"test/dice_{st}")
            assert row[f"test/dice_{st}_mean"] == pytest.approx(np.mean(values))
    assert "| model | loss | n runs | Dice rv | Dice myo | Dice lv | HD95 rv | HD95 myo | HD95 lv |" in built["md"]
    assert "TransUNet" in built["md"] and "88.86" in built["md"] and "arXiv:2102.04306" in built["md"]


def test_holm_against_hand_values():
    assert report.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert report.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    out = report.holm([0.02, float("nan"), 0.6])              # NaN not counted in m
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.6)
    assert report.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 capped at 1; monotone


def test_wilcoxon_against_hand_values():
    idx = pd.MultiIndex.from_tuples([("0", f"c{i}") for i in range(6)])
    better = pd.Series([0.9, 0.8, 0.85, 0.7, 0.95, 0.6], index=idx)
    worse = better - np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    r = report.paired_wilcoxon(better, worse)
    # all 6 differences positive: exact two-sided p = 2 / 2^6; W = the smaller rank sum = 0
    assert r["n_pairs"] == 6 and r["p"] == pytest.approx(2 / 64) and r["statistic"] == 0
    assert r["mean_diff"] == pytest.approx(0.035)
    same = report.paired_wilcoxon(better, better)
    assert same["p"] == 1.0 and same["note"]
    other = pd.Series([0.5], index=pd.MultiIndex.from_tuples([("1", "zz")]))
    assert report.paired_wilcoxon(better, other)["n_pairs"] == 0


def test_report_statistics_match_scipy_on_the_cases(built):
    w = pd.read_csv(built["out"] / "wilcoxon.csv")
    w = w[w.task == "phantom_xray"]
    assert set(w.best) == {"resunet + dice"} and len(w) == 3

    def per_case(model, loss):
        vals = {}
        for seed in SEEDS[(model, loss)]:
            df = case_values(model, loss, seed)
            for cid, d in zip(df.case_id, df.dice):
                if not math.isnan(d):
                    vals[(seed, cid)] = d
        return vals

    best = per_case("resunet", "dice")
    expected_p = {}
    for model, loss in BASE:
        if (model, loss) == ("resunet", "dice"):
            continue
        other = per_case(model, loss)
        keys = sorted(set(best) & set(other))
        row = w[(w.model == model) & (w.loss == loss)].iloc[0]
        assert row.n_pairs == len(keys) == 11 * len(SEEDS[(model, loss)])
        expected_p[(model, loss)] = wilcoxon([best[k] for k in keys], [other[k] for k in keys]).pvalue
        assert row.p == pytest.approx(expected_p[(model, loss)], rel=1e-9)
    # Holm by hand over the 3 comparisons
    order = sorted(expected_p, key=expected_p.get)
    running = 0.0
    for rank, cfg in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * expected_p[cfg]))
        row = w[(w.model == cfg[0]) & (w.loss == cfg[1])].iloc[0]
        assert row.p_holm == pytest.approx(running, rel=1e-9)
        assert bool(row.significant) == (running < 0.05)


def test_latest_sweep_by_default_all_sweeps_and_tag_filters(store):
    client, uri = store["client"], store["uri"]
    default = report.select_runs(client, uri, ["phantom_xray"])
    assert {r.sweep_id for r in default.tasks["phantom_xray"]} == {SWEEP}
    every = report.select_runs(client, uri, ["phantom_xray"], all_sweeps=True)
    assert {r.sweep_id for r in every.tasks["phantom_xray"]} == {SWEEP, OLD_SWEEP}
    old = report.select_runs(client, uri, ["phantom_xray"], sweep_id=OLD_SWEEP)
    assert [r.name for r in old.tasks["phantom_xray"]] == ["unet-bce-s0"]
    unet = report.select_runs(client, uri, (), tags={"model": "unet"})
    assert {r.model for runs in unet.tasks.values() for r in runs} == {"unet"}
    assert set(unet.tasks) == {"phantom_xray", "phantom_cardiac", "resumed_xray"}
    configs = report.aggregate(every.tasks["phantom_xray"], ["infection"])
    twice = next(c for c in configs if (c.model, c.loss) == ("unet", "bce"))
    assert any("seed 0 run more than once" in f for f in twice.flags)


def test_a_resumed_sweep_includes_the_runs_it_skipped(store):
    """Runs skipped by a resumed sweep (listed in its parent's children.csv) belong to that sweep's report."""
    skipped, fresh = store["ids"]["resumed"]
    sel = report.select_runs(store["client"], store["uri"], ["resumed_xray"])
    assert {r.run_id for r in sel.tasks["resumed_xray"]} == {skipped, fresh}
    assert any("skipped them as already FINISHED" in n for n in sel.notes)
    old = report.select_runs(store["client"], store["uri"], ["resumed_xray"], sweep_id=OLD_SWEEP)
    assert {r.run_id for r in old.tasks["resumed_xray"]} == {skipped}


def _local_refs(text: str, pattern: str) -> list[str]:
    return [r for r in re.findall(pattern, text) if not r.startswith(("#", "data:"))]


def test_html_and_markdown_reference_only_files_that_exist(built):
    out = built["out"]
    srcs = _local_refs(built["html"], r'(?:src|href)="([^"]+)"')
    tasks = built["summary"].task.nunique()
    assert tasks == 3 and len([s for s in srcs if s.endswith(".png")]) == 4 * tasks   # 4 figures per task
    for ref in srcs:
        assert not re.match(r"^[a-z]+://", ref), f"external reference {ref}"   # self-contained: no CDN
        assert (out / ref).is_file(), ref
    for ref in _local_refs(built["md"], r"!\[[^\]]*\]\(([^)]+)\)"):
        assert (out / ref).is_file(), ref
    assert "<link" not in built["html"] and "<script src" not in built["html"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_html_renders_in_headless_chromium_with_no_missing_images(built):
    proc = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=10000", "--dump-dom", (built["out"] / "index.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    images = re.search(r'data-images="(\d+)"', dom)
    missing = re.search(r'data-missing-images="(\d+)"', dom)
    assert images and missing, proc.stderr[-2000:]
    assert int(images.group(1)) == 4 * 3 and int(missing.group(1)) == 0


def _cli(args: list[str], env_uri: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": env_uri}
    return subprocess.Popen([sys.executable, "-m", "seg.report", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_cli_without_a_store_or_with_a_filter_matching_nothing_fails_cleanly(store, tmp_path):
    missing = _cli(["--out", str(tmp_path / "a")], f"sqlite:///{tmp_path}/nothing/mlflow.db")
    nomatch = _cli(["--sweep-id", "no-such-sweep", "--out", str(tmp_path / "b")], store["uri"])  # both at once
    missing, nomatch = _done(missing), _done(nomatch)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no MLflow store at" in missing.stderr
    assert not (tmp_path / "nothing" / "mlflow.db").exists()        # the report never creates a store
    assert nomatch.returncode == 1 and "Traceback" not in nomatch.stderr
    assert "no runs match" in nomatch.stderr and "sweep_id=no-such-sweep" in nomatch.stderr
    assert SWEEP in nomatch.stderr                                    # says which sweeps there are
    assert not (tmp_path / "b" / "index.html").exists()


def test_empty_store_unknown_experiment_and_bad_tag(store, tmp_path, capsys):
    empty = store["empty_uri"]                                        # tables, no experiment but Default, no run
    assert report.main(["--tracking-uri", empty, "--out", str(tmp_path / "o")]) == 1
    assert "there are no runs in any experiment" in capsys.readouterr().err
    assert report.main(["--tracking-uri", store["uri"], "--experiment", "nope", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "--experiment 'nope'" in err and "phantom_xray" in err
    assert report.main(["--tracking-uri", store["uri"], "--tag", "model=none", "--out", str(tmp_path / "o")]) == 1
    assert "tag model=none" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert report.main(["--tracking-uri", store["uri"], "--out", str(a_file)]) == 1
    assert "expected a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        report.main(["--tag", "model"])
    assert exc.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        report.main(["--sweep-id", "x", "--all-sweeps"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_real_phantom_sweep_report_matches_mlflow_and_is_fast(tmp_path, phantom_cache):
    """A tiny real 3 x 3 sweep, then `python -m seg.report`: 9 configurations, values equal to MLflow's."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SEGSWEEP_CACHE": str(phantom_cache)}
    sweep = subprocess.run([sys.executable, "run.py", "-m", "model=unet,resunet,transunet", "loss=bce,focal,dice",
                            "profile.image_size=32", "profile.epochs=1", "trainer.limit_train_batches=2",
                            "tracking.overlays=2", f"hydra.sweep.dir={tmp_path}/multirun"],
                           cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    start = time.perf_counter()
    proc = _done(_cli(["--out", str(tmp_path / "report")], uri))
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert len(summary) == 9 and (summary.n_runs == 1).all()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("phantom_xray")
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'"):
        if run.data.tags.get("segsweep.parent") == "true":
            continue
        row = summary[(summary.model == run.data.tags["model"]) & (summary.loss == run.data.tags["loss"])].iloc[0]
        for key in ("test/dice", "test/iou", "test/hd95"):
            assert row[f"{key}_mean"] == pytest.approx(run.data.metrics[key], rel=1e-12)
    html = (tmp_path / "report" / "index.html").read_text()
    for ref in _local_refs(html, r'src="([^"]+)"'):
        assert (tmp_path / "report" / ref).is_file()


def test_artifacts_read_in_place_or_downloaded_through_mlflow_agree(store, tmp_path, monkeypatch):
    """A local artifact store is read in place; any other store goes through MlflowClient.download_artifacts."""
    client, uri = store["client"], store["uri"]
    runs = [r for r in report.select_runs(client, uri, ["phantom_xray"]).tasks["phantom_xray"] if r.included][:3]
    local, _ = report.load_cases(client, runs, tmp_path / "a")
    overlays = report.list_artifact_files(client, runs[0], "overlays")
    monkeypatch.setattr(report, "_local_artifacts", lambda run: None)
    remote, notes = report.load_cases(client, runs, tmp_path / "b")
    assert not notes and len(local) == len(remote) == 3 * N_CASES
    pd.testing.assert_frame_equal(local, remote)
    assert report.list_artifact_files(client, runs[0], "overlays") == overlays == ["overlays/Test_COVID-19_case_00.png"]


def test_a_resumed_sweep_that_skipped_every_job_is_the_latest_sweep(store, tmp_path):
    """make sweep twice: the second sweep trains nothing, has no runs of its own, only a parent listing
    the runs it skipped; the default report covers that sweep, with every configuration."""
    shutil.copy(store["root"] / "empty.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("phantom_xray", artifact_location=(tmp_path / "artifacts").as_uri())
    t0 = int(time.time() * 1000) - 3_600_000
    runs = [log_run(client, exp, _stage(tmp_path, f"{m}{l}"), m, l, 0, OLD_SWEEP, start=t0)
            for m, l in (("unet", "dice"), ("resunet", "dice"))]
    parent = client.create_run(exp, start_time=t0 + 60_000, run_name=f"sweep-{SWEEP}",
                               tags={"segsweep.parent": "true", "sweep_id": SWEEP})
    children = _stage(tmp_path, "parent") / "children.csv"
    pd.DataFrame([{"job": f"{i}_x", "status": "SKIPPED", "run_id": r} for i, r in enumerate(runs)]).to_csv(
        children, index=False)
    client.log_artifact(parent.info.run_id, str(children))
    client.set_terminated(parent.info.run_id, "FINISHED")
    sel = report.select_runs(client, uri)
    assert {r.run_id for r in sel.tasks["phantom_xray"]} == set(runs)
    assert SWEEP in sel.scope["phantom_xray"]
