"""seg.report's files: the CSV contract, HTML / Markdown, the CLI's errors, the statistics helpers against
scipy / hand values, the README writer; and (slow) a real phantom sweep end to end."""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from scipy.stats import bootstrap, wilcoxon

from seg import PROJECT_ROOT, report
from seg.report import readme, stats
from seg.report import runs as rr

CHROMIUM = Path("/usr/bin/chromium")
IDS = [f"Test/COVID-19/case_{i:02d}.png" for i in range(10)]
GT_EMPTY = [i >= 7 for i in range(10)]


@pytest.fixture(scope="module")
def built(empty_store, tmp_path_factory, synth):
    """3 configurations x 2 seeds on a task with 3 empty cases (unet + bce: false positives on all of them),
    and a 3-structure cardiac task; the report built once."""
    root = tmp_path_factory.mktemp("out_store")
    shutil.copy(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("phantom_xray", artifact_location=(root / "art").as_uri())
    rng = np.random.default_rng(3)
    truth = {}
    for k, (model, loss, val) in enumerate((("unet", "bce", 0.5), ("unet", "dice", 0.7), ("resunet", "dice", 0.6))):
        for seed in (0, 1):
            dice = np.round(np.clip(0.5 + 0.1 * k + 0.05 * rng.standard_normal(10), 0, 1), 3)
            pred_empty = [False] * 10 if model == "unet" and loss == "bce" else list(GT_EMPTY)
            truth[(model, loss, seed)] = dice[:7]
            # provenance: resunet's runs come from a later commit, one of them from a dirty tree
            code = {"mlflow.source.git.commit": ("b" if model == "resunet" else "a") * 40,
                    "git_dirty": str(model == "resunet" and seed == 1).lower()}
            synth.log_run(client, exp, root / "st" / f"{model}{loss}{seed}", model, loss, seed, val=val + 0.01 * seed,
                          cases=synth.cases_frame(IDS, dice, GT_EMPTY, pred_empty), tags=code)
    cardiac = client.create_experiment("phantom_cardiac", artifact_location=(root / "art_c").as_uri())
    pids = [f"patient{p:03d}_{ph}" for p in range(1, 5) for ph in ("ED", "ES")]
    for model, val in (("unet", 0.8), ("resunet", 0.7)):
        frames = [synth.cases_frame(pids, np.linspace(0.6, 0.9, 8) - 0.05 * j, structure=s)
                  for j, s in enumerate(("rv", "myo", "lv"))]
        synth.log_run(client, cardiac, root / "st" / f"c{model}", model, "dice", 0, val=val, cases=pd.concat(frames),
                      tags={"dataset": "phantom_cardiac", "mlflow.source.git.commit": "c" * 40, "git_dirty": "false"})
    out = tmp_path_factory.mktemp("report")
    result = report.build_report(uri, out)
    return {**result, "out": out, "uri": uri, "client": client, "truth": truth,
            "summary": pd.read_csv(out / "summary.csv"), "comparisons": pd.read_csv(out / "comparisons.csv"),
            "md": (out / "report.md").read_text(), "html": (out / "index.html").read_text()}


def test_summary_csv_holds_the_contract_columns_with_hand_computed_values(built):
    s = built["summary"]
    assert set(s.columns) >= {"task", "model", "loss", "n_runs", "n_pos", "dice_pos", "dice_pos_ci_low",
                              "dice_pos_ci_high", "n_empty", "fpr_empty", "hd95_median", "n_hd95_penalty", "val_dice"}
    x = s[s.task == "phantom_xray"].set_index(["model", "loss"])
    for (model, loss), row in x.iterrows():
        per_unit = (built["truth"][(model, loss, 0)] + built["truth"][(model, loss, 1)]) / 2   # seeds first
        assert row.dice_pos == pytest.approx(per_unit.mean(), rel=1e-12)
        ci = bootstrap((per_unit,), np.mean, n_resamples=stats.N_RESAMPLES, method="BCa",
                       rng=np.random.default_rng(stats.BOOTSTRAP_SEED)).confidence_interval
        assert (row.dice_pos_ci_low, row.dice_pos_ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert row.n_pos == 7 and row.n_empty == 3 and row.n_runs == 2
        assert row.fpr_empty == (1.0 if (model, loss) == ("unet", "bce") else 0.0)
    assert x.loc[("unet", "dice"), "val_dice"] == pytest.approx(0.705)
    assert x["reference"].tolist() == [False, True, False]                 # the best validation Dice


def test_each_task_names_the_commits_it_covers_and_flags_a_mix(built):
    md = built["md"]
    assert ("⚠ Code: commits aaaaaaaaaa (4 runs), bbbbbbbbbb (2 runs); the runs come from 2 different versions "
            "of the code; 1 run from a tree with uncommitted changes (git_dirty).") in md
    assert "\nCode: commit cccccccccc (2 runs).\n" in md      # one clean commit: stated, not flagged
    assert "⚠ Code: commit cccccccccc" not in md


def test_code_provenance_flags_a_run_without_a_recorded_commit(synth):
    def run(tags):
        return rr.Run("r", "n", "t", "FINISHED", tags, {}, {}, None, None)
    text, flag = rr.code_provenance([run({"mlflow.source.git.commit": "d" * 40}), run({})])
    assert flag and text.startswith("Code: commits dddddddddd (1 run), unknown (1 run)")
    assert rr.code_provenance([run({"mlflow.source.git.commit": "d" * 40, "git_dirty": "false"})]) == \
        ("Code: commit dddddddddd (1 run).", False)


def test_comparisons_match_scipy_on_units_with_holm_by_hand(built):
    c = built["comparisons"][built["comparisons"].task == "phantom_xray"].set_index("other")
    assert set(c.reference) == {"unet + dice"} and len(c) == 2
    ref = (built["truth"][("unet", "dice", 0)] + built["truth"][("unet", "dice", 1)]) / 2
    expected = {}
    for other in ("unet + bce", "resunet + dice"):
        model, loss = other.split(" + ")
        diff = ref - (built["truth"][(model, loss, 0)] + built["truth"][(model, loss, 1)]) / 2
        expected[other] = wilcoxon(diff).pvalue
        assert c.loc[other, "n_units"] == 7 and c.loc[other, "delta"] == pytest.approx(diff.mean())
        assert c.loc[other, "p"] == pytest.approx(expected[other], rel=1e-9)
    order = sorted(expected, key=expected.get)
    running = 0.0
    for rank, other in enumerate(order):                               # Holm by hand
        running = max(running, min(1.0, (2 - rank) * expected[other]))
        assert c.loc[other, "p_holm"] == pytest.approx(running, rel=1e-9)
        assert bool(c.loc[other, "significant"]) == (running < 0.05)


def test_holm_paired_and_bootstrap_helpers_against_hand_values():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = stats.holm([0.02, float("nan"), 0.6])                        # NaN not counted in m
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.6)
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    better = pd.Series([0.9, 0.8, 0.85, 0.7, 0.95, 0.6], index=[f"c{i}" for i in range(6)])
    r = stats.paired(better, better - np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]))
    # all 6 differences positive: exact two-sided p = 2 / 2^6
    assert r["n_units"] == 6 and r["p"] == pytest.approx(2 / 64) and r["delta"] == pytest.approx(0.035)
    assert 0.01 <= r["delta_ci_low"] < 0.035 < r["delta_ci_high"] <= 0.06
    same = stats.paired(better, better)
    assert same["p"] == 1.0 and same["note"] and same["delta_ci_low"] == same["delta_ci_high"] == 0.0
    assert stats.paired(better, pd.Series([0.5], index=["zz"]))["n_units"] == 0
    assert all(math.isnan(x) for x in stats.bootstrap_ci([0.5]))        # one unit has no interval
    assert stats.mean_ci([0.25, 0.25, 0.25]) == (0.25, 0.25, 0.25, 3)


def test_report_states_hd95_definitions_and_has_no_test_best_bold(built):
    md, html = built["md"], built["html"]
    assert "HD95 (MONAI's definition, as `hd95`)" in md and "HD95 pooled (medpy's `hd95`" in md
    assert "in pixels of the original image for PNG data" in md
    assert "docs/metrics.md" in md and "DESIGN.md" not in md
    assert 'class="best"' not in html and "**" not in md.split("### Model × loss")[1].split("###")[0]
    assert "| unet ◆ | dice |" in md
    cardiac = md.split("## Task: phantom_cardiac")[1].split("## Task:")[0]
    assert "| ours (this report) | reference: unet + dice |" in cardiac and "Dice rv [95% CI]" in cardiac
    assert "n patients" in cardiac


def _local_refs(text: str, pattern: str) -> list[str]:
    return [r for r in re.findall(pattern, text) if not r.startswith(("#", "data:"))]


def test_html_and_markdown_reference_only_files_that_exist(built):
    out = built["out"]
    srcs = _local_refs(built["html"], r'(?:src|href)="([^"]+)"')
    assert len([s for s in srcs if s.endswith(".png")]) == 4 * 2            # 4 figures per task
    for ref in srcs:
        assert not re.match(r"^[a-z]+://", ref), f"external reference {ref}"
        assert (out / ref).is_file(), ref
    for ref in _local_refs(built["md"], r"!\[[^\]]*\]\(([^)]+)\)"):
        assert (out / ref).is_file(), ref
    assert "<link" not in built["html"] and "<script src" not in built["html"]
    assert "&lt;" not in built["html"].split("<body>")[0]                   # autoescape only escapes content


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_html_renders_in_headless_chromium_with_no_missing_images(built):
    proc = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=10000", "--dump-dom", (built["out"] / "index.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    images = re.search(r'data-images="(\d+)"', proc.stdout)
    missing = re.search(r'data-missing-images="(\d+)"', proc.stdout)
    assert images and missing, proc.stderr[-2000:]
    assert int(images.group(1)) == 8 and int(missing.group(1)) == 0


def test_artifacts_read_in_place_or_downloaded_through_mlflow_agree(built, tmp_path, monkeypatch):
    client, uri = built["client"], built["uri"]
    runs = [r for r in report.select_runs(client, uri, ["phantom_xray"]).tasks["phantom_xray"]][:3]
    local, _ = stats.load_cases(client, runs, tmp_path / "a")
    monkeypatch.setattr(rr, "local_artifacts", lambda run: None)
    remote, notes = stats.load_cases(client, runs, tmp_path / "b")
    assert not notes and len(local) == len(remote) == 3 * 10
    pd.testing.assert_frame_equal(local, remote)


def test_readme_block_is_written_from_the_report_csvs(built, tmp_path):
    target = tmp_path / "README.md"
    target.write_text(f"# x\n\nbefore\n{readme.START}\nold typed table\n{readme.END}\nafter\n")
    assert readme.main(["--report", str(built["out"]), "--readme", str(target), "--task", "phantom_xray"]) == 0
    text = target.read_text()
    assert "old typed table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    row = built["summary"].set_index(["task", "model", "loss"]).loc[("phantom_xray", "unet", "dice")]
    assert (f"| unet ◆ | dice | 2 | 0.705 | 7 | {row.dice_pos:.3f} [{row.dice_pos_ci_low:.3f}, "
            f"{row.dice_pos_ci_high:.3f}] | 3 | 0.000 [0.000, 0.000] |") in text
    assert "| unet + dice | unet + bce | 7 |" in text
    assert "Sweep 2026-11-01_10-00-00: 3 configuration(s) from 6 averaged run(s) of 6 selected." in text
    target.write_text("no markers")
    assert readme.main(["--report", str(built["out"]), "--readme", str(target)]) == 1
    assert readme.main(["--report", str(tmp_path / "none"), "--readme", str(target)]) == 1


def _cli(args: list[str], env_uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": env_uri}
    return subprocess.run([sys.executable, "-m", "seg.report", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_errors_are_clean(built, empty_store, tmp_path, capsys):
    missing = _cli(["--out", str(tmp_path / "a")], f"sqlite:///{tmp_path}/nothing/mlflow.db")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr and "no MLflow store at" in missing.stderr
    assert not (tmp_path / "nothing" / "mlflow.db").exists()
    uri = built["uri"]
    assert report.main(["--tracking-uri", uri, "--sweep-id", "no-such", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "no runs match" in err and "sweep_id=no-such" in err and "2026-11-01_10-00-00" in err
    assert report.main(["--tracking-uri", f"sqlite:///{empty_store}", "--out", str(tmp_path / "o")]) == 1
    assert "there are no runs in any experiment" in capsys.readouterr().err
    assert report.main(["--tracking-uri", uri, "--experiment", "nope", "--out", str(tmp_path / "o")]) == 1
    assert "--experiment 'nope'" in capsys.readouterr().err
    assert report.main(["--tracking-uri", uri, "--tag", "model=none", "--out", str(tmp_path / "o")]) == 1
    assert "tag model=none" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert report.main(["--tracking-uri", uri, "--out", str(tmp_path / "a_file")]) == 1
    assert "expected a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        report.main(["--tag", "model"])
    assert exc.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        report.main(["--sweep-id", "x", "--all-sweeps"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_real_phantom_sweep_report_end_to_end(tmp_path, phantom_cache):
    """A tiny real 3 x 3 sweep (smoke settings), then `python -m seg.report --include-smoke`: 9
    configurations, dice_pos from cases.csv with hd95_pooled in it, a reference chosen on validation."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SEGSWEEP_CACHE": str(phantom_cache)}
    sweep = subprocess.run([sys.executable, "run.py", "-m", "model=unet,resunet,transunet", "loss=bce,focal,dice",
                            "profile.image_size=32", "profile.epochs=1", "trainer.limit_train_batches=2",
                            "tracking.overlays=2", f"hydra.sweep.dir={tmp_path}/multirun"],
                           cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    smoke = _cli(["--out", str(tmp_path / "r0")], uri)
    assert smoke.returncode == 1 and "add --include-smoke" in smoke.stderr
    start = time.perf_counter()
    proc = _cli(["--include-smoke", "--out", str(tmp_path / "report")], uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - start < 120
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert len(summary) == 9 and (summary.n_runs == 1).all() and summary.reference.sum() == 1
    best = summary.loc[summary.val_dice.idxmax()]
    assert bool(best.reference)
    client = MlflowClient(tracking_uri=uri)
    run = next(r for r in client.search_runs([client.get_experiment_by_name("phantom_xray").experiment_id])
               if r.data.tags.get("model") == "unet" and r.data.tags.get("loss") == "dice")
    cases = pd.read_csv(client.download_artifacts(run.info.run_id, "cases.csv", str(tmp_path)))
    assert "hd95_pooled" in cases.columns
    pos = cases[~cases.gt_empty.astype(bool)]
    row = summary[(summary.model == "unet") & (summary.loss == "dice")].iloc[0]
    assert row.dice_pos == pytest.approx(pos.dice.mean(), rel=1e-9)
    assert row.n_pos == len(pos) and row.n_empty == int(cases.gt_empty.astype(bool).sum())


def test_html_escapes_every_text_from_mlflow():
    """Run names, flags and captions come from MLflow and configs: the HTML template escapes them all."""
    from seg.report.render import Section, Table, render_html

    sec = Section("task<1>")
    sec.p("a <script>alert(1)</script> & b")
    sec.table(Table(["h<"], [["<i>cell</i>"]], {(0, 0)}, "cap <u>"))
    sec.items(["<b>flag</b>"])
    html = render_html("T<", ["meta <em>"], [sec])
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; b" in html
    for raw in ("<i>cell", "<u>", "<b>flag", "<em>", "task<1>", "T<"):
        assert raw not in html, raw
    assert '<td class="best"><strong>&lt;i&gt;cell&lt;/i&gt;</strong></td>' in html
