"""Per-unit values, bootstrap confidence intervals, paired comparisons (docs/metrics.md, "Statistics contract").

- Unit of analysis: a test case, except ACDC, where the unit is the patient (`patient101_ED` and
  `patient101_ES` are one unit: `unit_of`). Per run: per case, the mean over its structures; per unit,
  the mean over its cases; then the mean over the configuration's seeds (runs). Nothing is counted once
  per seed.
- Fixed denominators: Dice, IoU, HD95 (both definitions) on the ground-truth-positive rows only;
  the false-positive rate (any predicted foreground) on the ground-truth-empty rows. Where a task has
  no empty rows, the positive rows are all rows (n_empty = 0).
- Every mean carries a 95% bootstrap CI over units (scipy.stats.bootstrap, BCa, fixed seed); every
  comparison is paired on the units both configurations have: the mean difference with its bootstrap
  CI, the two-sided Wilcoxon signed-rank p (scipy.stats.wilcoxon) and the Holm-adjusted p over the
  task's comparisons (statsmodels.stats.multitest.multipletests).
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from seg.report.runs import Config, Run, fetch_artifact

ALPHA = 0.05
CONFIDENCE = 0.95
N_RESAMPLES = 4999
BOOTSTRAP_SEED = 0
UNIT_RE = re.compile(r"^(?P<unit>.+)_(?:ED|ES)$")      # ACDC: <patient>_<phase> (seg.data.acdc)
VALUE_COLUMNS = ("dice", "iou", "hd", "hd95", "hd95_pooled", "assd")


def unit_of(case_id: str) -> str:
    """The unit a case belongs to: the patient for ACDC's `patientNNN_ED` / `patientNNN_ES`, else the case."""
    m = UNIT_RE.match(str(case_id))
    return m.group("unit") if m else str(case_id)


def _bool(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def load_cases(client, runs: Sequence[Run], tmp: Path, key: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """cases.csv of each run, concatenated with run_id / model / loss / seed / config columns (config: the
    label from `key`, run_id -> label), booleans parsed, values numeric; and notes on missing ones.
    A cases.csv without gt_empty / pred_empty (older stores) gets them from the Dice: NaN Dice means both
    empty; otherwise gt_empty is unknown and taken as False."""
    frames, notes = [], []
    for r in runs:
        try:
            df = pd.read_csv(fetch_artifact(client, r, "cases.csv", tmp), dtype={"case_id": str, "structure": str})
        except Exception as exc:  # an artifact store without the file: report it, go on
            notes.append(f"run {r.name} ({r.run_id}): no readable cases.csv ({type(exc).__name__})")
            continue
        missing = {"case_id", "structure", "dice"} - set(df.columns)
        if missing:
            notes.append(f"run {r.name} ({r.run_id}): cases.csv lacks columns {sorted(missing)}")
            continue
        df["run_id"], df["model"], df["loss"], df["seed"] = r.run_id, r.model, r.loss, r.seed
        df["config"] = (key or {}).get(r.run_id, f"{r.model} + {r.loss}")
        frames.append(df)
    cols = ["case_id", "structure", "gt_empty", "pred_empty", "dice", "run_id", "model", "loss", "seed", "config"]
    if not frames:
        return pd.DataFrame(columns=cols), notes
    return tidy_cases(pd.concat(frames, ignore_index=True)), notes


def tidy_cases(cases: pd.DataFrame) -> pd.DataFrame:
    """cases.csv rows as read (strings) -> values numeric, gt_empty / pred_empty boolean (from the Dice
    where the columns are missing: NaN Dice = both empty), and the `unit` column (unit_of)."""
    cases = cases.copy()
    for col in VALUE_COLUMNS:
        if col in cases:
            cases[col] = pd.to_numeric(cases[col], errors="coerce")
    nan_dice = cases["dice"].isna()
    cases["gt_empty"] = _bool(cases["gt_empty"]) if "gt_empty" in cases else nan_dice
    cases["pred_empty"] = _bool(cases["pred_empty"]) if "pred_empty" in cases else nan_dice
    cases["unit"] = cases["case_id"].map(unit_of)
    return cases


def unit_values(cases: pd.DataFrame, metric: str = "dice", structure: str | None = None) -> pd.DataFrame:
    """Per configuration and unit, seeds averaged: the metric on ground-truth-positive rows.

    Returns a frame indexed by (config, unit) with one column `metric`: per run and case the mean over
    its positive structures (one structure when given), per unit the mean over its cases, then the mean
    over the configuration's runs. Rows with a NaN value are skipped at each mean.
    """
    if cases.empty or metric not in cases:
        return pd.DataFrame(columns=[metric], index=pd.MultiIndex.from_arrays([[], []], names=["config", "unit"]))
    pos = cases[~cases["gt_empty"]]
    if structure is not None:
        pos = pos[pos["structure"] == structure]
    per_case = pos.groupby(["config", "run_id", "unit", "case_id"])[metric].mean()
    per_unit = per_case.groupby(level=["config", "run_id", "unit"]).mean()
    return per_unit.groupby(level=["config", "unit"]).mean().dropna().to_frame(metric)


def fp_values(cases: pd.DataFrame) -> pd.Series:
    """Per (config, unit), seeds averaged: the share of the unit's ground-truth-empty rows (case x
    structure) with any predicted foreground. Units without empty rows are absent."""
    if cases.empty:
        return pd.Series(dtype=float)
    empty = cases[cases["gt_empty"]].assign(fp=lambda d: (~d["pred_empty"]).astype(float))
    per_unit = empty.groupby(["config", "run_id", "unit"])["fp"].mean()
    return per_unit.groupby(level=["config", "unit"]).mean()


def bootstrap_ci(values: Sequence[float], statistic=np.mean) -> tuple[float, float]:
    # statistic: called as statistic(resamples, axis=-1) (vectorized), e.g. np.mean
    """95% BCa bootstrap CI of the statistic over the values (units); (NaN, NaN) below two values;
    (v, v) when all values are equal (no spread to resample)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size < 2:
        return math.nan, math.nan
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((v,), statistic, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, method="BCa",
                        rng=np.random.default_rng(BOOTSTRAP_SEED), vectorized=True)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (np.isfinite(low) and np.isfinite(high)):   # BCa undefined (e.g. one outlier): percentile
            res = bootstrap((v,), statistic, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES,
                            method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED), vectorized=True)
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return low, high


def mean_ci(values: Sequence[float]) -> tuple[float, float, float, int]:
    """(mean, CI low, CI high, n) over the finite values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan, 0
    low, high = bootstrap_ci(v)
    return float(v.mean()), low, high, int(v.size)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1; NaN with one value), count) over the finite values."""
    v = np.array([float(x) for x in values if x is not None and np.isfinite(float(x))], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


def _penalty_count(cases: pd.DataFrame, config: str) -> tuple[int, int]:
    """(positive case x structure values of HD95 that are the empty-prediction penalty, all positive
    values), over every run of the configuration."""
    pos = cases[(cases["config"] == config) & ~cases["gt_empty"]]
    if "hd95" not in pos:
        return 0, 0
    valid = pos["hd95"].notna()
    return int((valid & pos["pred_empty"]).sum()), int(valid.sum())


def summarize_config(cases: pd.DataFrame, config: Config, monitor: str = "val/dice") -> dict:
    """The summary.csv row of a configuration (without task): n, means with CIs on fixed denominators,
    the false-positive rate on empty units, HD95 median and penalty count, the validation criterion."""
    label = config.label
    has_empty = bool(cases["gt_empty"].any()) if not cases.empty else False
    row = {"model": config.model, "loss": config.loss, "settings": config.variant, "n_runs": len(config.runs),
           "seeds": " ".join(config.seeds)}
    for metric in ("dice", "iou", "hd95", "hd95_pooled"):
        u = unit_values(cases, metric)
        vals = u.loc[label, metric].to_numpy() if label in u.index.get_level_values(0) else np.array([])
        mean, low, high, n = mean_ci(vals)
        row.update({f"{metric}_pos": mean, f"{metric}_pos_ci_low": low, f"{metric}_pos_ci_high": high})
        if metric == "dice":
            row["n_pos"] = n
        if metric.startswith("hd95"):
            row[f"{metric}_median"] = float(np.median(vals)) if len(vals) else math.nan
    fp = fp_values(cases)
    fvals = fp.loc[label].to_numpy() if has_empty and label in fp.index.get_level_values(0) else np.array([])
    mean, low, high, n = mean_ci(fvals)
    row.update({"n_empty": n, "fpr_empty": mean if n else math.nan, "fpr_empty_ci_low": low,
                "fpr_empty_ci_high": high})
    row["n_hd95_penalty"], row["n_hd95_values"] = _penalty_count(cases, label)
    row[f"val_{monitor.split('/', 1)[-1]}"] = config.val(monitor)
    if monitor != "val/dice":
        row["val_dice"] = config.val("val/dice")
    return row


def paired(ref: pd.Series, other: pd.Series) -> dict:
    """Paired comparison of two per-unit series (index: unit) on the units both have: n_units, delta
    (mean of ref - other), its 95% bootstrap CI, the two-sided Wilcoxon signed-rank p (zero
    differences dropped by the test; p = 1 when all are zero)."""
    from scipy.stats import wilcoxon

    joined = pd.concat([ref.rename("a"), other.rename("b")], axis=1, join="inner").dropna()
    diff = (joined["a"] - joined["b"]).to_numpy()
    out = {"n_units": int(diff.size), "delta": float(diff.mean()) if diff.size else math.nan,
           "delta_ci_low": math.nan, "delta_ci_high": math.nan, "median_delta": float(np.median(diff)) if diff.size
           else math.nan, "statistic": math.nan, "p": math.nan, "note": ""}
    if diff.size == 0:
        out["note"] = "no paired units"
        return out
    out["delta_ci_low"], out["delta_ci_high"] = bootstrap_ci(diff)
    if np.all(diff == 0):
        out.update(statistic=0.0, p=1.0, note="identical per-unit values")
    else:
        res = wilcoxon(diff)
        out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels' multipletests, method 'holm'); NaN stays NaN and is not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out


def compare_to_reference(cases: pd.DataFrame, configs: Sequence[Config], ref: Config | None,
                         metric: str = "dice") -> list[dict]:
    """The reference configuration (chosen by validation) against each other one, on the per-unit
    metric of positive units, Holm-corrected over the comparisons."""
    if ref is None or len(configs) < 2 or cases.empty:
        return []
    u = unit_values(cases, metric)[metric]
    labels = set(u.index.get_level_values(0))
    series = {c.label: (u.loc[c.label] if c.label in labels else pd.Series(dtype=float)) for c in configs}
    rows = []
    for c in configs:
        if c is ref:
            continue
        rows.append({"reference": ref.label, "other": c.label, "model": c.model, "loss": c.loss,
                     "metric": f"{metric}_pos", **paired(series[ref.label], series[c.label])})
    for row, adj in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = float(adj)
        row["significant"] = bool(np.isfinite(adj) and adj < ALPHA)
    return rows
