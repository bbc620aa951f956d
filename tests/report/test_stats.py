"""seg.report.stats on hand-made case tables: every value below is computed by hand from the rows.

No MLflow here (tests/report/test_report_verdicts.py builds the same contracts through a store); these
are the fast tests `make mutate MODULES=report_stats` runs against each mutant."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap, wilcoxon

from seg.report import stats
from seg.report.runs import Config, Run


def _run(run_id: str, model="unet", loss="dice", seed="0", val=None) -> Run:
    metrics = {"test/dice": 0.5, **({"best/val/dice": val} if val is not None else {})}
    return Run(run_id=run_id, name=run_id, task="t", status="FINISHED",
               tags={"model": model, "loss": loss, "seed": seed}, metrics=metrics, params={},
               start_ms=0, end_ms=1)


def _rows(rows) -> pd.DataFrame:
    """(config, run_id, case_id, structure, gt_empty, pred_empty, dice[, hd95]) tuples -> a tidy cases frame."""
    cols = ["config", "run_id", "case_id", "structure", "gt_empty", "pred_empty", "dice", "hd95"]
    df = pd.DataFrame([r + (math.nan,) * (len(cols) - len(r)) for r in rows], columns=cols)
    return stats.tidy_cases(df.astype({"gt_empty": str, "pred_empty": str}))


def test_unit_of_joins_acdc_phases_and_leaves_other_cases_alone():
    assert stats.unit_of("patient101_ED") == "patient101" == stats.unit_of("patient101_ES")
    assert stats.unit_of("patient_7_ES") == "patient_7"              # only the last _ED / _ES is the phase
    assert stats.unit_of("case_ED_1") == "case_ED_1"                  # not at the end: not a phase
    assert stats.unit_of("covid_12") == "covid_12" and stats.unit_of("x_ED") == "x"
    assert stats.unit_of(101) == "101"


def test_tidy_cases_parses_the_csv_strings_and_fills_missing_flags_from_the_dice():
    raw = pd.DataFrame({"case_id": ["a_ED", "b", "c"], "structure": ["lv", "lv", "lv"],
                        "gt_empty": ["True", " false ", "1"], "pred_empty": ["1.0", "0", "FALSE"],
                        "dice": ["0.5", "x", ""], "hd95": ["3", "4.5", "nan"], "other": ["7", "8", "9"]})
    got = stats.tidy_cases(raw)
    assert got["gt_empty"].tolist() == [True, False, True] and got["pred_empty"].tolist() == [True, False, False]
    assert got["dice"].iloc[0] == 0.5 and got["dice"].iloc[1:].isna().all()       # "x" and "" -> NaN
    assert got["hd95"].iloc[:2].tolist() == [3.0, 4.5]
    assert got["other"].tolist() == ["7", "8", "9"]                                 # not a value column: untouched
    assert got["unit"].tolist() == ["a", "b", "c"]
    assert raw["dice"].tolist() == ["0.5", "x", ""]                                 # the input is not changed
    old = stats.tidy_cases(pd.DataFrame({"case_id": ["a", "b"], "structure": ["s", "s"], "dice": [math.nan, 0.0]}))
    assert old["gt_empty"].tolist() == [True, False] == old["pred_empty"].tolist()   # NaN Dice: both empty


def test_unit_values_average_structures_then_cases_of_a_unit_then_seeds_on_positive_rows():
    rows = [  # config A, seed run r1: patient p (ED, ES), case q; run r2: the same cases
        ("A", "r1", "p_ED", "lv", False, False, 0.9), ("A", "r1", "p_ED", "rv", False, False, 0.5),  # case 0.7
        ("A", "r1", "p_ES", "lv", False, False, 0.3),                                                # case 0.3
        ("A", "r1", "p_ES", "rv", True, False, 0.0),                       # gt empty: not in the Dice mean
        ("A", "r1", "q_ED", "lv", False, False, 0.6),
        ("A", "r2", "p_ED", "lv", False, False, 0.7), ("A", "r2", "p_ES", "lv", False, False, 0.7),
        ("A", "r2", "q_ED", "lv", False, True, 0.0),
        ("B", "r3", "p_ED", "lv", False, False, 0.2), ("B", "r3", "q_ED", "lv", False, False, math.nan),
    ]
    u = stats.unit_values(_rows(rows))
    assert list(u.columns) == ["dice"] and u.index.names == ["config", "unit"]
    # A, p: r1 = mean(0.7, 0.3) = 0.5, r2 = 0.7 -> 0.6; A, q: mean(0.6, 0.0) = 0.3 (the seeds' mean)
    assert u.loc[("A", "p"), "dice"] == pytest.approx(0.6)
    assert u.loc[("A", "q"), "dice"] == pytest.approx(0.3)
    assert u.loc[("B", "p"), "dice"] == pytest.approx(0.2)
    assert ("B", "q") not in u.index                                       # NaN only: dropped
    one = stats.unit_values(_rows(rows), structure="rv")                    # one structure: A, p from r1 only
    assert one.loc[("A", "p"), "dice"] == pytest.approx(0.5) and len(one) == 1
    for empty in (stats.unit_values(_rows(rows), metric="iou"), stats.unit_values(_rows(rows).iloc[:0])):
        assert empty.empty and empty.index.names == ["config", "unit"]
    assert list(stats.unit_values(_rows(rows), metric="iou").columns) == ["iou"]


def test_fp_values_is_the_share_of_empty_rows_with_a_prediction_per_unit_then_seeds():
    rows = [
        ("A", "r1", "p_ED", "lv", True, False, 0.0), ("A", "r1", "p_ES", "lv", True, True, math.nan),
        ("A", "r1", "p_ES", "rv", True, True, math.nan), ("A", "r1", "p_ES", "myo", True, False, 0.0),
        ("A", "r2", "p_ED", "lv", True, True, math.nan),
        ("A", "r1", "q", "lv", False, False, 0.8),                   # gt positive: not counted
        ("B", "r3", "q", "lv", True, False, 0.0),
    ]
    fp = stats.fp_values(_rows(rows))
    # A, p: r1 = 2 predicted of 4 empty rows = 0.5, r2 = 0 of 1 -> 0.25; B, q: 1 of 1
    assert fp.loc[("A", "p")] == pytest.approx(0.25) and fp.loc[("B", "q")] == 1.0
    assert ("A", "q") not in fp.index and len(fp) == 2
    assert stats.fp_values(_rows(rows).iloc[:0]).empty


def test_bootstrap_ci_is_scipys_bca_with_the_fixed_seed_and_handles_the_degenerate_cases():
    v = list(np.random.default_rng(7).random(15))        # continuous values: the CI depends on every setting
    ref = bootstrap((np.array(v),), np.mean, confidence_level=0.95, n_resamples=4999, method="BCa",
                    rng=np.random.default_rng(0), vectorized=True).confidence_interval
    assert stats.bootstrap_ci(v) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert stats.bootstrap_ci(v + [math.nan, math.inf]) == pytest.approx((ref.low, ref.high), rel=1e-12)
    low, high = stats.bootstrap_ci(v)
    assert low < np.mean(v) < high
    assert all(math.isnan(x) for x in stats.bootstrap_ci([0.5]))
    assert all(math.isnan(x) for x in stats.bootstrap_ci([0.5, math.nan]))
    assert stats.bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert stats.bootstrap_ci([0.1, 0.1, 0.1]) == (0.1, 0.1)     # the value itself, not a resampled mean of it


def test_bootstrap_ci_falls_back_to_the_percentile_interval_where_bca_is_undefined(monkeypatch):
    import scipy.stats

    real, methods = scipy.stats.bootstrap, []

    def undefined_bca(data, statistic, **kw):           # what scipy gives when BCa's acceleration is undefined
        methods.append(kw["method"])
        res = real(data, statistic, **kw)
        if kw["method"] == "BCa":                         # one end undefined is enough to fall back
            res.confidence_interval = type(res.confidence_interval)(res.confidence_interval.low, math.nan)
        return res

    monkeypatch.setattr(scipy.stats, "bootstrap", undefined_bca)
    v = list(np.random.default_rng(3).random(12))
    pct = real((np.array(v),), np.mean, confidence_level=0.95, n_resamples=4999, method="percentile",
               rng=np.random.default_rng(0), vectorized=True).confidence_interval
    assert stats.bootstrap_ci(v) == pytest.approx((pct.low, pct.high), rel=1e-12) and methods == ["BCa", "percentile"]


def test_mean_ci_and_mean_std_over_finite_values():
    mean, low, high, n = stats.mean_ci([0.2, 0.4, math.nan, 0.9])
    assert (mean, n) == (pytest.approx(0.5), 3) and (low, high) == pytest.approx(stats.bootstrap_ci([0.2, 0.4, 0.9]))
    assert math.isnan(stats.mean_ci([])[0]) and stats.mean_ci([math.nan])[3] == 0
    assert all(math.isnan(x) for x in stats.mean_ci([])[:3])
    m, s, n = stats.mean_std([1.0, 2.0, 4.0, None, math.nan])
    assert (m, n) == (pytest.approx(7 / 3), 3) and s == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert stats.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)        # two values have a std
    m, s, n = stats.mean_std([2.5])
    assert (m, n) == (2.5, 1) and math.isnan(s)
    assert stats.mean_std([])[2] == 0 and math.isnan(stats.mean_std([])[0]) and math.isnan(stats.mean_std([])[1])


def test_summarize_config_fills_the_contract_columns_from_the_rows():
    a = Config("unet", "dice", [_run("r1", val=0.8), _run("r2", seed="1", val=0.6)])
    rows = [  # config label "unet + dice": units p, q positive in both runs; unit e empty
        (a.label, "r1", "p", "lv", False, False, 0.9, 2.0), (a.label, "r1", "q", "lv", False, False, 0.5, 6.0),
        (a.label, "r2", "p", "lv", False, False, 0.7, 4.0),
        (a.label, "r2", "q", "lv", False, True, 0.0, 20.0),                 # empty prediction: HD95 penalty
        (a.label, "r1", "e", "lv", True, False, 0.0), (a.label, "r2", "e", "lv", True, True, math.nan),
        ("other + bce", "r9", "p", "lv", False, False, 0.1, 1.0), ("other + bce", "r9", "e", "lv", True, False, 0.0),
    ]
    row = stats.summarize_config(_rows(rows), a)
    assert set(row) == {"model", "loss", "settings", "n_runs", "seeds", "n_pos", "n_empty", "fpr_empty",
                        "fpr_empty_ci_low", "fpr_empty_ci_high", "n_hd95_penalty", "n_hd95_values", "val_dice",
                        *(f"{m}_pos{s}" for m in ("dice", "iou", "hd95", "hd95_pooled") for s in ("", "_ci_low", "_ci_high")),
                        "hd95_median", "hd95_pooled_median"}
    assert (row["model"], row["loss"], row["settings"], row["n_runs"], row["seeds"]) == ("unet", "dice", "", 2, "0 1")
    # Dice per unit: p = mean(0.9, 0.7) = 0.8, q = mean(0.5, 0.0) = 0.25
    assert row["dice_pos"] == pytest.approx(0.525) and row["n_pos"] == 2
    assert (row["dice_pos_ci_low"], row["dice_pos_ci_high"]) == pytest.approx(stats.bootstrap_ci([0.8, 0.25]))
    # HD95 per unit: p = 3, q = 13 -> mean 8, median 8; 1 penalty value of 4 positive values
    assert row["hd95_pos"] == pytest.approx(8.0) and row["hd95_median"] == pytest.approx(8.0)
    assert (row["n_hd95_penalty"], row["n_hd95_values"]) == (1, 4)
    assert math.isnan(row["iou_pos"]) and math.isnan(row["hd95_pooled_median"])      # no such columns here
    # FP rate on the one empty unit: r1 predicted (1), r2 did not (0) -> 0.5
    assert row["n_empty"] == 1 and row["fpr_empty"] == pytest.approx(0.5)
    assert math.isnan(row["fpr_empty_ci_low"]) and math.isnan(row["fpr_empty_ci_high"])     # one unit: no CI
    assert row["val_dice"] == pytest.approx(0.7)
    by_loss = stats.summarize_config(_rows(rows), a, monitor="val/loss")
    assert math.isnan(by_loss["val_loss"]) and by_loss["val_dice"] == pytest.approx(0.7)
    # a configuration without empty rows in a task that has them (another configuration's): no FP rate, no error
    b = Config("resunet", "dice", [_run("r5", model="resunet")])
    mixed = _rows(rows + [(b.label, "r5", "p", "lv", False, False, 0.6, 3.0)])
    row_b = stats.summarize_config(mixed, b)
    assert row_b["n_empty"] == 0 and math.isnan(row_b["fpr_empty"]) and row_b["dice_pos"] == pytest.approx(0.6)
    # a case table without an HD95 column (distances off): no penalties counted
    no_hd = stats.summarize_config(_rows(rows).drop(columns=["hd95"]), a)
    assert (no_hd["n_hd95_penalty"], no_hd["n_hd95_values"]) == (0, 0) and math.isnan(no_hd["hd95_pos"])
    # a task without empty rows: no FP rate
    pos_only = stats.summarize_config(_rows([r for r in rows if not r[4]]), a)
    assert pos_only["n_empty"] == 0 and math.isnan(pos_only["fpr_empty"])
    assert pos_only["dice_pos"] == pytest.approx(0.525)


def test_paired_and_compare_to_reference_on_the_units_both_configurations_have():
    ref = pd.Series({"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.95, "e": 0.6, "x": 0.5})
    other = pd.Series({"a": 0.5, "b": 0.75, "c": 0.72, "d": 0.55, "e": 0.3, "y": 0.1})
    got = stats.paired(ref, other)
    assert set(got) == {"n_units", "delta", "delta_ci_low", "delta_ci_high", "median_delta", "statistic", "p", "note"}
    diff = (ref - other)[list("abcde")].to_numpy()                    # 0.4, 0.05, -0.02, 0.4, 0.3; x, y unpaired
    assert got["n_units"] == 5 and got["delta"] == pytest.approx(diff.mean())
    assert got["median_delta"] == pytest.approx(0.3)
    assert (got["delta_ci_low"], got["delta_ci_high"]) == pytest.approx(stats.bootstrap_ci(diff))
    w = wilcoxon(diff)
    assert (got["statistic"], got["p"]) == pytest.approx((w.statistic, w.pvalue)) and got["note"] == ""
    none = stats.paired(ref, pd.Series({"z": 1.0}))
    assert set(none) == set(got) and math.isnan(none["delta_ci_low"]) and math.isnan(none["statistic"])
    assert none["n_units"] == 0 and none["note"] == "no paired units" and math.isnan(none["delta"])
    assert math.isnan(none["p"]) and math.isnan(none["median_delta"])

    cfg = {name: Config(name, "dice", [_run(name)]) for name in ("ref", "good", "bad")}
    values = {"ref": [0.9, 0.8, 0.85, 0.7, 0.95, 0.75, 0.6, 0.65], "good": [0.9, 0.8, 0.85, 0.7, 0.95, 0.75, 0.6, 0.65],
              "bad": [0.2, 0.3, 0.1, 0.4, 0.35, 0.15, 0.5, 0.45]}
    rows = [(cfg[n].label, n, f"u{i}", "lv", False, False, v) for n, vs in values.items() for i, v in enumerate(vs)]
    out = stats.compare_to_reference(_rows(rows), list(cfg.values()), cfg["ref"])
    assert [r["other"] for r in out] == ["good + dice", "bad + dice"] and {r["reference"] for r in out} == {"ref + dice"}
    same, worse = out
    assert same["p"] == 1.0 and same["note"] == "identical per-unit values" and not same["significant"]
    assert same["statistic"] == 0.0 and same["delta"] == 0.0
    assert worse["delta"] == pytest.approx(np.mean(np.subtract(values["ref"], values["bad"])))
    assert worse["metric"] == "dice_pos" and (worse["model"], worse["loss"]) == ("bad", "dice")
    assert worse["p"] == pytest.approx(2 / 2 ** 8)          # exact signed-rank: all 8 differences positive
    assert worse["p_holm"] == pytest.approx(2 * worse["p"]) and worse["significant"] is True   # Holm over 2 tests
    assert same["p_holm"] == 1.0
    assert stats.compare_to_reference(_rows(rows), list(cfg.values()), None) == []
    assert stats.compare_to_reference(_rows(rows), [cfg["ref"]], cfg["ref"]) == []
    assert stats.compare_to_reference(_rows(rows).iloc[:0], list(cfg.values()), cfg["ref"]) == []
    two = stats.compare_to_reference(_rows(rows), [cfg["ref"], cfg["bad"]], cfg["ref"])     # two: one comparison
    assert len(two) == 1 and two[0]["p_holm"] == pytest.approx(2 / 2 ** 8) and two[0]["significant"] is True
    # a configuration with no rows is compared on no units; another metric is read from its own column
    absent = Config("ghost", "dice", [_run("g")])
    out = stats.compare_to_reference(_rows(rows), [cfg["ref"], absent], cfg["ref"])
    assert out[0]["n_units"] == 0 and out[0]["note"] == "no paired units" and math.isnan(out[0]["p_holm"])
    with_iou = _rows(rows).assign(iou=lambda d: d["dice"] / 2)
    out = stats.compare_to_reference(with_iou, list(cfg.values()), cfg["ref"], metric="iou")
    assert out[1]["metric"] == "iou_pos"
    assert out[1]["delta"] == pytest.approx(np.mean(np.subtract(values["ref"], values["bad"])) / 2)


def test_holm_leaves_nan_as_nan_and_counts_only_real_p_values():
    out = stats.holm([0.02, math.nan, 0.6, 0.01])
    assert math.isnan(out[1]) and out[[0, 2, 3]] == pytest.approx([0.04, 0.6, 0.03])     # m = 3
    assert out.dtype == float and stats.holm([math.nan]).dtype == float and math.isnan(stats.holm([math.nan])[0])
    assert stats.holm([]).shape == (0,)
