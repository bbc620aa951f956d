"""A 3-fold cross-validation study end to end on the ACDC phantom (tiny settings): one run per fold with its own
config_hash, the folds recorded in split.json, the re-run skips every fold, the report shows the fold means and
the fold ensemble, and `seg.predict best:` ensembles the folds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seg import PROJECT_ROOT
from seg.tracking import search_runs

STUDY = ["-m", "experiment=phantom_acdc_cv", "model=unet", "trainer.epochs=1", "trainer.limit_train_batches=1",
         "tracking.overlays=0"]


def _cmd(args: list[str], tmp_path: Path, phantom_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "SEGSWEEP_CACHE": str(phantom_cache),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow   # three training runs, the ensemble, a re-run, the report and predict: about 2-3 minutes
def test_three_fold_phantom_study_runs_resumes_reports_and_predicts(tmp_path, phantom_cache):
    proc = _cmd(["run.py", *STUDY, f"hydra.sweep.dir={tmp_path}/multirun"], tmp_path, phantom_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = [r for r in search_runs(uri, "phantom_acdc_cv") if r.data.tags.get("segsweep.parent") != "true"]
    assert sorted(r.info.run_name for r in runs) == ["unet-dice-s0-f0", "unet-dice-s0-f1", "unet-dice-s0-f2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["config_hash"] for r in runs}) == 3                    # one configuration per fold
    assert sorted(r.data.tags["cv_fold"] for r in runs) == ["0", "1", "2"]
    assert {(r.data.params["cv.folds"], r.data.params["cv.seed"], r.data.tags["cv_folds"]) for r in runs} == \
        {("3", "0", "3")}
    splits = {r.data.tags["cv_fold"]: json.loads((Path(r.info.artifact_uri.removeprefix("file://")) / "split.json")
                                                 .read_text()) for r in runs}
    members = splits["0"]["cv"]["members"]
    assert all(s["cv"]["members"] == members and s["val"] == members[int(f)] for f, s in splits.items())
    training = sorted(f"patient{i:03d}" for i in range(1, 21))
    assert sorted(sum(members, [])) == training                                   # a partition of training/
    assert {tuple(s["test"]) for s in splits.values()} == {tuple(f"patient{i}" for i in range(101, 111))}

    again = _cmd(["run.py", *STUDY, f"hydra.sweep.dir={tmp_path}/multirun2"], tmp_path, phantom_cache)
    assert again.returncode == 0 and "0 of 3 jobs FINISHED, 3 SKIPPED" in again.stdout, again.stdout[-2000:]

    out = tmp_path / "report"
    rep = _cmd(["-m", "seg.report", "--experiment", "phantom_acdc_cv", "--include-smoke", "--all-sweeps",
                "--out", str(out)], tmp_path, phantom_cache)
    assert rep.returncode == 0, rep.stderr[-3000:]
    cv = pd.read_csv(out / "cv.csv")
    assert len(cv) == 1
    row = cv.iloc[0]
    vals = {r.data.tags["cv_fold"]: r.data.metrics["best/val/dice"] for r in runs}
    assert row.val_dice_mean == pytest.approx(np.mean(list(vals.values())))
    assert [row[f"val_dice_fold{f}"] for f in range(3)] == pytest.approx([vals[str(f)] for f in range(3)])
    assert 0 <= row.ensemble_dice_pos <= 1 and row.ensemble_n_pos == 10 and row.n_units == 10
    md = (out / "report.md").read_text()
    assert "### Cross-validation: folds and the fold ensemble" in md and "read from its cache" in md
    fold0 = next(r for r in runs if r.data.tags["cv_fold"] == "0")
    cached = list((Path(fold0.info.artifact_uri.removeprefix("file://")) / "cv_ensemble").glob("*/cases.csv"))
    assert len(cached) == 1 and len(pd.read_csv(cached[0])) == 20 * 3       # 10 patients x ED/ES x 3 structures

    image = phantom_cache / "phantom" / "acdc-v1" / "database" / "testing" / "patient101" / "patient101_frame01.nii.gz"
    pred = _cmd(["-m", "seg.predict", "best:phantom_acdc_cv:dice@sweep_id=multirun", str(image), "--out",
                 str(tmp_path / "pred")], tmp_path, phantom_cache)
    assert pred.returncode == 0, pred.stderr[-3000:]
    assert "model ensemble of 3 models" in pred.stderr
    assert (tmp_path / "pred" / "patient101_frame01_label.nii.gz").is_file()
