"""The verdicts' acceptance (issue 13) on synthetic MLflow stores with known truth:
(a) per-case offsets that every seed repeats are counted once per case, not once per seed x case;
(b) the reference configuration is chosen on validation, never on test;
(c) fixed denominators: Dice on ground-truth-positive cases, FP rate on the empty ones, exactly."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from seg import report
from seg.report.stats import unit_of

N = 20
# per-case offsets (reference - other): a small shift that per case is not significant (p = 0.14)
OFFSETS = np.array([0.031, -0.012, 0.024, 0.008, -0.026, 0.019, 0.042, -0.005, 0.015, -0.033,
                    0.027, 0.011, -0.018, 0.036, 0.004, -0.022, 0.029, 0.013, -0.009, 0.021])


def test_offsets_repeated_by_every_seed_are_tested_once_per_case(new_store, synth, tmp_path):
    p_case = wilcoxon(OFFSETS).pvalue
    p_seed_x_case = wilcoxon(np.tile(OFFSETS, 3)).pvalue
    assert p_case == pytest.approx(0.1429, abs=1e-4) and p_seed_x_case < 0.05   # the construction
    uri, client, root = new_store()
    exp = client.create_experiment("phantom_xray", artifact_location=(root / "art").as_uri())
    ids = [f"Test/COVID-19/case_{i:02d}.png" for i in range(N)]
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        base = np.clip(0.6 + 0.1 * rng.standard_normal(N), 0.1, 0.9)    # seeds differ, the offsets do not
        synth.log_run(client, exp, root / f"a{seed}", "resunet", "dice", seed,
                      cases=synth.cases_frame(ids, base), val=0.80 + 0.001 * seed)
        synth.log_run(client, exp, root / f"b{seed}", "unet", "dice", seed,
                      cases=synth.cases_frame(ids, base - OFFSETS), val=0.70)
    report.build_report(uri, tmp_path / "out")
    comp = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    assert len(comp) == 1
    row = comp.iloc[0]
    assert (row.reference, row.other) == ("resunet + dice", "unet + dice")
    assert row.n_units == N                                          # cases, not 3 x 20 seed x case pairs
    assert row.delta == pytest.approx(OFFSETS.mean(), abs=1e-12)
    assert row.p == pytest.approx(p_case, rel=1e-6)
    assert row.p_holm == pytest.approx(p_case, rel=1e-6)            # one comparison: Holm changes nothing
    assert not row.significant
    assert row.delta_ci_low < 0 < row.delta_ci_high                 # the CI covers 0, as p says
    assert set(comp.columns) >= {"task", "reference", "other", "n_units", "delta", "delta_ci_low", "delta_ci_high",
                                 "p", "p_holm", "significant"}


def test_the_test_best_configuration_that_is_validation_worst_is_not_the_reference(new_store, synth, tmp_path):
    uri, client, root = new_store()
    exp = client.create_experiment("phantom_xray", artifact_location=(root / "art").as_uri())
    ids = [f"case_{i:02d}.png" for i in range(8)]
    # (model, loss) -> (best/val/dice per seed, test Dice per case)
    truth = {("unet", "dice"): ((0.90, 0.88), 0.50), ("resunet", "dice"): ((0.70, 0.72), 0.60),
             ("transunet", "dice"): ((0.40, 0.42), 0.90)}                    # test-best = validation-worst
    ids_of = {}
    for (model, loss), (vals, test) in truth.items():
        for seed, val in enumerate(vals):
            ids_of[(model, seed)] = synth.log_run(
                client, exp, root / f"{model}{seed}", model, loss, seed, val=val,
                cases=synth.cases_frame(ids, np.full(8, test) + 0.01 * np.arange(8)))
    report.build_report(uri, tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("model")
    assert summary.loc["transunet", "dice_pos"] > summary.loc["unet", "dice_pos"]   # test-best ...
    assert bool(summary.loc["unet", "reference"]) and not summary.loc[["resunet", "transunet"], "reference"].any()
    assert summary.loc["unet", "val_dice"] == pytest.approx(0.89)
    assert summary.loc["transunet", "val_dice"] == pytest.approx(0.41)
    comp = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    assert set(comp.reference) == {"unet + dice"} and len(comp) == 2
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| ours (this report) | reference: unet + dice |" in md     # the "ours" row beside published numbers
    # seg.predict best: uses the same selection: the validation-best configuration, its best seed
    run, config = report.best_by_validation(uri, "phantom_xray")
    assert config.label == "unet + dice" and run.run_id == ids_of[("unet", 0)]
    with pytest.raises(report.ReportError, match="validation metrics only"):
        report.best_by_validation(uri, "phantom_xray", monitor="test/dice")


def test_dice_on_positive_cases_and_fp_rate_on_empty_cases_are_the_constructed_values(new_store, synth, tmp_path):
    uri, client, root = new_store()
    exp = client.create_experiment("phantom_xray", artifact_location=(root / "art").as_uri())
    ids = [f"Test/case_{i:02d}.png" for i in range(16)]
    gt_empty = [i >= 8 for i in range(16)]                       # 8 positive, 8 empty cases
    pos_fp = [0.5, 0.75, 0.625, 0.875, 0.25, 0.5, 1.0, 0.5]     # dyadic: their means are exact in binary
    pos_clean = [0.25, 0.5, 0.375, 0.625, 0.125, 0.25, 0.75, 0.125]
    for seed in (0, 1):
        # a false positive on every empty case (Dice 0 there), and none (NaN there)
        fp = synth.cases_frame(ids, pos_fp + [0.0] * 8, gt_empty, [False] * 16)
        clean = synth.cases_frame(ids, pos_clean + [0.0] * 8, gt_empty, gt_empty)
        synth.log_run(client, exp, root / f"fp{seed}", "unet", "dice", seed, cases=fp, val=0.6)
        synth.log_run(client, exp, root / f"cl{seed}", "unet", "bce", seed, cases=clean, val=0.5)
    report.build_report(uri, tmp_path / "out")
    s = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("loss")
    assert s.loc["dice", "dice_pos"] == np.mean(pos_fp) == 0.625           # exactly
    assert s.loc["bce", "dice_pos"] == np.mean(pos_clean) == 0.375
    assert s.loc["dice", "fpr_empty"] == 1.0 and s.loc["bce", "fpr_empty"] == 0.0
    assert (s["n_pos"] == 8).all() and (s["n_empty"] == 8).all() and (s["n_runs"] == 2).all()
    # MLflow's test/dice of the FP configuration averages the 8 zeros in: a different denominator
    assert s.loc["dice", "test/dice_mean"] == pytest.approx(np.mean(pos_fp + [0.0] * 8))
    assert s.loc["bce", "n_hd95_penalty"] == 0 and s.loc["bce", "n_hd95_values"] == 16
    md = (tmp_path / "out" / "report.md").read_text()
    assert "FP rate on empty [95% CI]" in md and "Dice (GT+) [95% CI]" in md and "n cases (GT+)" in md
    assert "| 0.625 [" in md and "| 1.000 [1.000, 1.000] |" in md    # FP rate 1 on every unit: no spread
    assert "unet + dice: false positives on 8 of 8 empty cases" in md
    comp = pd.read_csv(tmp_path / "out" / "comparisons.csv").iloc[0]
    assert comp.n_units == 8 and comp.delta == pytest.approx(0.25)


def test_acdc_patients_are_the_unit_with_ed_and_es_averaged(new_store, synth, tmp_path):
    assert unit_of("patient101_ED") == "patient101"
    assert unit_of("patient101_ES") == "patient101" and unit_of("Test/a_ED.png") == "Test/a_ED.png"
    uri, client, root = new_store()
    exp = client.create_experiment("phantom_cardiac", artifact_location=(root / "art").as_uri())
    ids = [f"patient{p:03d}_{ph}" for p in range(101, 106) for ph in ("ED", "ES")]
    a = np.array([0.8, 0.6] * 5)
    for seed in (0, 1):
        frames = [synth.cases_frame(ids, a - 0.1 * k, structure=s) for k, s in enumerate(("rv", "myo", "lv"))]
        synth.log_run(client, exp, root / f"a{seed}", "unet", "dice", seed, cases=pd.concat(frames), val=0.9)
        frames = [synth.cases_frame(ids, a - 0.1 * k - 0.05, structure=s) for k, s in enumerate(("rv", "myo", "lv"))]
        synth.log_run(client, exp, root / f"b{seed}", "unet", "bce", seed, cases=pd.concat(frames), val=0.8)
    report.build_report(uri, tmp_path / "out")
    s = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("loss")
    assert (s["n_pos"] == 5).all() and (s["n_empty"] == 0).all()          # 5 patients, not 10 volumes
    assert s.loc["dice", "dice_pos"] == pytest.approx(0.6)                  # (0.8 + 0.6) / 2 - 0.1
    assert np.isnan(s.loc["dice", "fpr_empty"])
    comp = pd.read_csv(tmp_path / "out" / "comparisons.csv").iloc[0]
    assert comp.n_units == 5 and comp.delta == pytest.approx(0.05)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "n patients" in md and "ED and ES of a patient averaged" in md
    assert "| Dice rv [95% CI] | Dice myo [95% CI] | Dice lv [95% CI] |" in md
