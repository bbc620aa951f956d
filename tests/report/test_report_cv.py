"""The report of a cross-validation study on a synthetic MLflow store with known truth: folds are replicates
of one configuration (never separate rows), the mean validation Dice over folds selects the reference, each
fold's test Dice, the fold mean per unit, and the fold ensemble (read from its cached cases.csv artifact)
with the verdict statistics; `seg.predict best:` resolves to every fold of the selected configuration."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seg import report
from seg.predict.ensemble import ARTIFACT_DIR, members_key
from seg.predict.model import best_runs
from seg.report.runs import group_configs, select_runs, to_run

IDS = ["case_1.png", "case_2.png", "case_3.png", "case_4.png"]
# (model, loss) -> best/val/dice per fold, test Dice per case per fold, the ensemble's test Dice per case
TRUTH = {
    ("unet", "dice"): ((0.6, 0.7, 0.8), ([0.5] * 4, [0.6] * 4, [0.7] * 4), [0.8, 0.7, 0.9, 0.6]),
    ("resunet", "dice"): ((0.5, 0.5, 0.5), ([0.9] * 4, [0.9] * 4, [0.9] * 4), [0.9, 0.9, 0.9, 0.95]),
}


def _cv_store(new_store, synth, cache_ensemble: bool = True):
    uri, client, root = new_store()
    exp = client.create_experiment("phantom_acdc_cv", artifact_location=(root / "art").as_uri())
    ids = {}
    for (model, loss), (vals, tests, ens) in TRUTH.items():
        for fold, (val, dice) in enumerate(zip(vals, tests)):
            params = synth.params_for(model, loss, 0, **{"cv.folds": 3, "cv.fold": fold, "cv.seed": 0})
            ids[(model, fold)] = synth.log_run(
                client, exp, root / f"{model}{fold}", model, loss, 0, cases=synth.cases_frame(IDS, dice), val=val,
                params=params, tags={"cv_folds": "3", "cv_fold": str(fold), "cv_seed": "0",
                                     "config_hash": f"{model}-{fold}"})
        members = [ids[(model, f)] for f in range(3)]
        if cache_ensemble:   # what seg.predict.ensemble.ensemble_cases leaves on the first fold's run
            stage = root / f"ens_{model}"
            stage.mkdir()
            synth.cases_frame(IDS, ens).to_csv(stage / "cases.csv", index=False)
            (stage / "members.json").write_text(json.dumps({"run_ids": members, "key": members_key(members)}))
            folder = f"{ARTIFACT_DIR}/{members_key(members)}"
            client.log_artifact(members[0], str(stage / "cases.csv"), folder)
            client.log_artifact(members[0], str(stage / "members.json"), folder)
    return uri, client, ids


def test_folds_are_one_configuration_selected_by_their_mean_validation_dice(new_store, synth, tmp_path):
    uri, client, ids = _cv_store(new_store, synth)
    report.build_report(uri, tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(zip(summary.model, summary.n_runs)) == [("unet", 3), ("resunet", 3)]   # folds never split a row
    unet = summary.set_index("model").loc["unet"]
    assert unet.val_dice == pytest.approx(0.7) and bool(unet.reference)     # mean over folds 0.7 > 0.5
    assert unet.dice_pos == pytest.approx(0.6)                               # per case (0.5 + 0.6 + 0.7) / 3
    assert not summary.set_index("model").loc["resunet"].reference           # tests higher (0.9), validates lower


def test_the_cv_table_shows_each_fold_the_fold_mean_and_the_ensemble(new_store, synth, tmp_path):
    uri, client, ids = _cv_store(new_store, synth)
    report.build_report(uri, tmp_path / "out")
    cv = pd.read_csv(tmp_path / "out" / "cv.csv").set_index("model")
    u = cv.loc["unet"]
    # fold mean of validation Dice = mean of each fold's best/val/dice read back from MLflow
    logged = [client.get_run(ids[("unet", f)]).data.metrics["best/val/dice"] for f in range(3)]
    assert u.val_dice_mean == pytest.approx(np.mean(logged)) == pytest.approx(0.7)
    assert [u[f"val_dice_fold{f}"] for f in range(3)] == pytest.approx([0.6, 0.7, 0.8])
    assert [u[f"test_dice_fold{f}"] for f in range(3)] == pytest.approx([0.5, 0.6, 0.7])
    assert u.dice_pos == pytest.approx(0.6) and u.folds == 3 and bool(u.reference)
    assert u.ensemble_dice_pos == pytest.approx(0.75) and u.ensemble_n_pos == 4
    assert u.delta_ensemble_vs_fold_mean == pytest.approx(0.15)              # per case 0.2, 0.1, 0.3, 0.0
    assert u.n_units == 4 and u.delta_ci_low <= 0.15 <= u.delta_ci_high
    assert cv.loc["resunet"].ensemble_dice_pos == pytest.approx(0.9125)
    comp = pd.read_csv(tmp_path / "out" / "cv_comparisons.csv").iloc[0]
    assert (comp.reference, comp.other) == ("unet + dice (ensemble)", "resunet + dice (ensemble)")
    assert comp.delta == pytest.approx(0.75 - 0.9125) and comp.n_units == 4
    md = (tmp_path / "out" / "report.md").read_text()
    assert "### Cross-validation: folds and the fold ensemble" in md
    assert "| unet ◆ | dice | 3 (0, 1, 2) | 0.600 / 0.700 / 0.800 | 0.700 | 0.500 / 0.600 / 0.700 | 0.600" in md
    assert "folds 0, 1, 2 × seed 0" in md and "read from its cache" in md


def test_without_the_ensemble_the_report_says_so_and_keeps_the_fold_rows(new_store, synth, tmp_path):
    uri, client, ids = _cv_store(new_store, synth, cache_ensemble=False)
    report.build_report(uri, tmp_path / "out", ensemble=False)
    cv = pd.read_csv(tmp_path / "out" / "cv.csv").set_index("model")
    assert cv.loc["unet"].val_dice_mean == pytest.approx(0.7) and np.isnan(cv.loc["unet"].ensemble_dice_pos)
    assert "unet + dice: ensemble not computed (--no-ensemble)" in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "cv_comparisons.csv").exists()


def test_a_study_without_cv_gets_no_cv_table(new_store, synth, tmp_path):
    uri, client, root = new_store()
    exp = client.create_experiment("phantom_xray", artifact_location=(root / "art").as_uri())
    for seed in (0, 1):
        synth.log_run(client, exp, root / f"r{seed}", "unet", "dice", seed, cases=synth.cases_frame(IDS, [0.5] * 4))
    report.build_report(uri, tmp_path / "out")
    assert not (tmp_path / "out" / "cv.csv").exists()
    assert "Cross-validation" not in (tmp_path / "out" / "report.md").read_text()
    configs = group_configs([to_run(r, "phantom_xray") for r in client.search_runs([exp])])
    assert len(configs) == 1 and not configs[0].is_cv and configs[0].replicates_text == "0, 1"


def test_predict_best_of_a_cv_study_is_every_fold_of_the_validation_selected_configuration(new_store, synth):
    uri, client, ids = _cv_store(new_store, synth, cache_ensemble=False)
    assert best_runs(uri, "phantom_acdc_cv", "dice") == [ids[("unet", f)] for f in range(3)]
    assert best_runs(uri, "phantom_acdc_cv", "dice@cv_fold=2") == [ids[("unet", 2)]]
    sel = select_runs(client, uri, ["phantom_acdc_cv"], all_sweeps=True)
    (unet, resunet) = group_configs(sel.tasks["phantom_acdc_cv"])
    assert unet.is_cv and unet.folds == ["0", "1", "2"] and unet.flags == []
