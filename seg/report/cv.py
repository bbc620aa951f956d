"""The report's cross-validation part (README "Cross-validation"; docs/metrics.md, "Statistics contract").

For the configurations whose runs are folds (`Config.is_cv`): per fold the validation criterion
(best/<monitor>, seeds averaged) and the test Dice of that fold's model; over the folds the mean
validation criterion (what selects the reference configuration, seg.report.runs.reference_config),
the test metrics with each unit's value averaged over the folds first (as seeds are), and the fold
ENSEMBLE: the mean of the fold models' probabilities on the test set (seg.predict.ensemble), scored
per case like any run and summarised with the same statistics (units, fixed denominators, bootstrap
CIs); the ensemble against its own fold mean, paired on units (Δ, CI, Wilcoxon p); and the reference
configuration's ensemble against each other configuration's ensemble (Holm over those comparisons).

The ensemble's per-case results are computed once and cached on the configuration's first fold run as
the artifacts cv_ensemble/<key>/{cases.csv,members.json}; computing them needs the runs' checkpoints and
their data (seg.data.open_dataset from the stored config); where that fails, the report says why.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Sequence

import pandas as pd

from seg.report import stats
from seg.report.render import Section, Table, finite, fmt, fmt_ci, fmt_p, signed
from seg.report.runs import Config, seed_key

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


def fold_val(config: Config, fold: str, monitor: str) -> float:
    """Mean over the fold's runs (its seeds) of best/<monitor> (Config.val of those runs); NaN when none has it."""
    return replace(config, runs=[r for r in config.runs if r.fold == fold]).val(monitor)


def fold_test(config: Config, fold: str, cases: pd.DataFrame, metric: str = "dice") -> float:
    """The fold's models' test metric: mean over the positive units (seeds of the fold averaged per unit)."""
    ids = {r.run_id for r in config.runs if r.fold == fold}
    return float(_unit_series(cases[cases["run_id"].isin(ids)], config.label, metric).mean())


def ensemble_frame(config: Config, uri: str, cache: bool = True) -> tuple[pd.DataFrame | None, str]:
    """The fold ensemble's cases of a CV configuration (tidied, config = its label) and how it was had
    ("cached" / "computed"), or (None, why not)."""
    from seg.predict.ensemble import ensemble_cases

    ids = [r.run_id for r in config.runs]
    try:
        frame, how = ensemble_cases(uri, ids, cache=cache)
    except Exception as exc:   # no checkpoint, data not on this machine, ...: reported, not raised
        log.warning("ensemble of %s not computed: %s: %s", config.label, type(exc).__name__, exc)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    frame = frame.assign(run_id=f"{ENSEMBLE}:{config.label}", model=config.model, loss=config.loss,
                         seed=ENSEMBLE, config=config.label)
    return stats.tidy_cases(frame), how


def _unit_series(cases: pd.DataFrame, label: str, metric: str = "dice") -> pd.Series:
    """One configuration's per-unit values (stats.unit_values; seeds averaged), empty when it has none."""
    u = stats.unit_values(cases, metric)[metric]
    return u.loc[label] if label in u.index.get_level_values(0) else pd.Series(dtype=float)


def cv_rows(configs: Sequence[Config], cases: pd.DataFrame, ens_cases: pd.DataFrame, monitor: str) -> list[dict]:
    """One cv.csv row per CV configuration: folds, per-fold validation and test, fold mean, ensemble, Δ."""
    rows = []
    m = monitor.split("/", 1)[-1]
    for c in configs:
        folds = c.folds
        row = {"model": c.model, "loss": c.loss, "settings": c.variant, "folds": len(folds),
               "n_runs": len(c.runs), "seeds": " ".join(sorted(set(c.seeds), key=seed_key))}
        for f in folds:
            row[f"val_{m}_fold{f}"] = fold_val(c, f, monitor)
        row[f"val_{m}_mean"] = c.val(monitor)
        for f in folds:
            row[f"test_dice_fold{f}"] = fold_test(c, f, cases)
        s = c.stats
        row.update({"n_pos": s.get("n_pos"), "dice_pos": s.get("dice_pos"), "dice_pos_ci_low": s.get("dice_pos_ci_low"),
                    "dice_pos_ci_high": s.get("dice_pos_ci_high"), "n_empty": s.get("n_empty"),
                    "fpr_empty": s.get("fpr_empty")})
        have = not ens_cases.empty and (ens_cases["config"] == c.label).any()
        e = stats.summarize_config(ens_cases, c, monitor) if have else {}
        for k in ("dice_pos", "dice_pos_ci_low", "dice_pos_ci_high", "iou_pos", "hd95_median", "n_empty", "fpr_empty",
                  "fpr_empty_ci_low", "fpr_empty_ci_high"):
            row[f"ensemble_{k}"] = e.get(k, math.nan)
        row["ensemble_n_pos"] = e.get("n_pos", 0)
        d = stats.paired(_unit_series(ens_cases, c.label), _unit_series(cases, c.label)) if have else {}
        row.update({"delta_ensemble_vs_fold_mean": d.get("delta", math.nan),
                    "delta_ci_low": d.get("delta_ci_low", math.nan), "delta_ci_high": d.get("delta_ci_high", math.nan),
                    "p": d.get("p", math.nan), "n_units": d.get("n_units", 0)})
        rows.append(row)
    return rows


def cv_table(configs: Sequence[Config], rows: Sequence[dict], ref: Config | None, monitor: str, unit: str,
             has_empty: bool) -> Table:
    pos = " (GT+)" if has_empty else ""
    m = monitor.split("/", 1)[-1]
    headers = ["model", "loss", "folds", f"val {m} per fold", f"mean val {m} (selection)", f"test Dice{pos} per fold",
               f"test Dice{pos} fold mean [95% CI]", f"ensemble Dice{pos} [95% CI]", f"ensemble HD95{pos} median"]
    if has_empty:
        headers.append("ensemble FP rate on empty [95% CI]")
    headers += ["Δ ensemble − fold mean [95% CI]", "p", f"n {unit}s"]
    body = []
    for c, r in zip(configs, rows):
        folds = c.folds
        per_val = " / ".join(fmt(r[f"val_{m}_fold{f}"]) for f in folds)
        per_test = " / ".join(fmt(r[f"test_dice_fold{f}"]) for f in folds)
        delta = signed(r["delta_ensemble_vs_fold_mean"])
        if finite(r["delta_ci_low"]):
            delta += f" [{signed(r['delta_ci_low'])}, {signed(r['delta_ci_high'])}]"
        row = [c.model + (" ◆" if c is ref else ""), c.loss + (f" [{c.variant}]" if c.variant else ""),
               f"{len(folds)} ({', '.join(folds)})", per_val, fmt(r[f"val_{m}_mean"]), per_test,
               fmt_ci(r["dice_pos"], r["dice_pos_ci_low"], r["dice_pos_ci_high"]),
               fmt_ci(r["ensemble_dice_pos"], r["ensemble_dice_pos_ci_low"], r["ensemble_dice_pos_ci_high"]),
               fmt(r["ensemble_hd95_median"], "hd")]
        if has_empty:
            row.append(fmt_ci(r["ensemble_fpr_empty"], r["ensemble_fpr_empty_ci_low"], r["ensemble_fpr_empty_ci_high"]))
        row += [delta, fmt_p(r["p"]), str(r["n_units"] or r["n_pos"] or 0)]
        body.append(row)
    caption = (f"Cross-validation: each configuration's runs are its folds (fold i = validation, the other folds "
               f"train; the test set is the same for every fold). 'val {m} per fold': best/{monitor} of each fold's "
               f"model (seeds averaged); the mean over folds selects the reference configuration ◆ (validation "
               f"only). 'test Dice per fold': each fold's model on the test {unit}s; 'fold mean': each {unit}'s value "
               f"averaged over the folds first, then over {unit}s, [95% CI] BCa bootstrap over {unit}s. 'ensemble': "
               f"one prediction per {unit} from the mean of the fold models' probabilities, scored like a run. "
               f"Δ ensemble − fold mean: paired on {unit}s, BCa CI, two-sided Wilcoxon signed-rank p.")
    if has_empty:
        caption += (f" Dice and HD95 on the ground-truth-positive {unit}s; FP rate: share of ground-truth-empty "
                    f"{unit}s with any predicted foreground.")
    return Table(headers, body, set(), caption)


def add_cv_section(sec: Section, configs: Sequence[Config], cases: pd.DataFrame, ref: Config | None, monitor: str,
                   unit: str, has_empty: bool, uri: str, task: str, frames: dict, ensemble: bool = True) -> None:
    """The "Cross-validation" subsection of a task (nothing when no configuration is a CV one); its rows go to
    frames["cv"], the ensemble comparisons to frames["cv_comparisons"]."""
    from seg.report.build import comparison_table

    cv_configs = [c for c in configs if c.is_cv]
    if not cv_configs:
        return
    sec.h("Cross-validation: folds and the fold ensemble")
    parts, notes = [], []
    for c in cv_configs:
        if not ensemble:
            notes.append(f"{c.label}: ensemble not computed (--no-ensemble)")
            continue
        frame, how = ensemble_frame(c, uri)
        if frame is None:
            notes.append(f"{c.label}: ensemble not computed ({how})")
        else:
            parts.append(frame)
            notes.append(f"{c.label}: ensemble of {len(c.runs)} run(s) (folds {', '.join(c.folds)}), "
                         f"{'read from its cache' if how == 'cached' else 'computed'} "
                         f"(artifact cv_ensemble/ of run {c.runs[0].run_id})")
    ens_cases = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["config", "gt_empty"])
    rows = cv_rows(cv_configs, cases, ens_cases, monitor)
    sec.table(cv_table(cv_configs, rows, ref, monitor, unit, has_empty))
    sec.items(notes)
    frames.setdefault("cv", []).append(pd.DataFrame([{"task": task, **r, "reference": c is ref}
                                                     for c, r in zip(cv_configs, rows)]))
    with_ens = [c for c in cv_configs if not ens_cases.empty and (ens_cases["config"] == c.label).any()]
    if ref in with_ens and len(with_ens) > 1:
        comparisons = stats.compare_to_reference(ens_cases, with_ens, ref)
        for r in comparisons:
            r["reference"], r["other"] = f"{r['reference']} (ensemble)", f"{r['other']} (ensemble)"
        sec.p("Fold ensembles: the reference configuration's ensemble vs each other configuration's ensemble.")
        table = comparison_table(comparisons, unit, has_empty)
        table.caption = (f"Paired on {unit}s{' with a non-empty ground truth' if has_empty else ''}: each ensemble "
                         f"makes one prediction per {unit}; Δ = reference − other, [95% CI]: BCa bootstrap of the mean "
                         f"paired difference; two-sided Wilcoxon signed-rank test, Holm correction over these "
                         f"ensemble comparisons. The reference is chosen on validation (mean over folds).")
        sec.table(table)
        frames.setdefault("cv_comparisons", []).append(pd.DataFrame([{"task": task, **r} for r in comparisons]))
