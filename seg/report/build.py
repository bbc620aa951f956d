"""The report of the selected runs: per task, tables, statistics and figures; written as HTML, Markdown, CSV."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from seg.report import figures, stats
from seg.report.cv import add_cv_section
from seg.report.references import STRUCTURE_ALIASES, references_for
from seg.report.render import (Section, Table, finite, fmt, fmt_ci, fmt_p, fmt_stat, render_html, render_markdown,
                               signed, slug)
from seg.report.runs import (LOSS_ORDER, MODEL_ORDER, Config, ReportError, Run, Selection, code_provenance,
                             cross_config_differences, group_configs, monitor_of, open_store, rank, reference_config, seed_key, select_runs)

COST_KEYS = ("model/params", "time/train_s", "time/img_per_s", "run/duration_s", "best/epoch")
MLFLOW_KEYS = ("test/dice", "test/iou", "test/hd95", "test/hd95_pooled")
HD95_NOTE = ("HD95 (MONAI's definition, as `hd95`): the larger of the two directed 95th percentiles of the boundary "
             "distances; HD95 pooled (medpy's `hd95`, which TransUNet and Swin-Unet report, as `hd95_pooled`): the 95th "
             "percentile of both directed distance sets pooled. Both in mm where the data has a physical spacing "
             "(NIfTI, DICOM), in pixels of the original image for PNG data (COVID-QU-Ex). An empty prediction on a "
             "positive case scores the penalty (the image diagonal); docs/metrics.md.")


def structures_of(cases: pd.DataFrame, runs: Sequence[Run]) -> list[str]:
    """Foreground structures: from cases.csv, else from the `test/dice_<structure>` metrics."""
    found: list[str] = list(dict.fromkeys(cases["structure"].dropna())) if not cases.empty else []
    if not found:
        for r in runs:
            for key in r.metrics:
                if key.startswith("test/dice_") and not key.endswith(("_n", "_std")) and key[10:] not in found:
                    found.append(key[10:])
    aliases = [a for group in STRUCTURE_ALIASES.values() for a in group]
    return sorted(found, key=lambda s: (aliases.index(s.lower()) if s.lower() in aliases else len(aliases), s))


def unit_name(cases: pd.DataFrame) -> str:
    return "patient" if not cases.empty and (cases["unit"] != cases["case_id"]).any() else "case"


# ----------------------------------------------------------------------------------------------------
# tables

def main_table(configs: Sequence[Config], ref: Config | None, has_empty: bool, unit: str, monitor: str) -> Table:
    pos = " (GT+)" if has_empty else ""
    headers = ["model", "loss", "settings", "n runs", "seeds", f"best {monitor} (selection)",
               f"n {unit}s{pos}", f"Dice{pos} [95% CI]", f"IoU{pos} [95% CI]", f"HD95{pos} median",
               f"HD95{pos} mean", "HD95 penalty", f"HD95 pooled{pos} median"]
    if has_empty:
        headers += [f"n empty {unit}s", "FP rate on empty [95% CI]"]
    headers.append("flags")
    if not any(c.variant for c in configs):
        headers.remove("settings")
    rows = []
    for c in configs:
        s = c.stats
        row = [c.model + (" ◆" if c is ref else ""), c.loss]
        if "settings" in headers:
            row.append(c.variant or "")
        row += [str(len(c.runs)), c.replicates_text, fmt(s.get(f"val_{monitor.split('/', 1)[-1]}")),
                str(s["n_pos"]), fmt_ci(s["dice_pos"], s["dice_pos_ci_low"], s["dice_pos_ci_high"]),
                fmt_ci(s["iou_pos"], s["iou_pos_ci_low"], s["iou_pos_ci_high"]),
                fmt(s["hd95_median"], "hd"), fmt(s["hd95_pos"], "hd"),
                f"{s['n_hd95_penalty']} of {s['n_hd95_values']}", fmt(s["hd95_pooled_median"], "hd")]
        if has_empty:
            row += [str(s["n_empty"]), fmt_ci(s["fpr_empty"], s["fpr_empty_ci_low"], s["fpr_empty_ci_high"])]
        row.append("; ".join(c.flags))
        rows.append(row)
    fixed = (f"Dice, IoU and HD95 on the ground-truth-positive {unit}s only (a fixed n for every configuration); "
             f"FP rate: the share of ground-truth-empty {unit}s with any predicted foreground. ") if has_empty else ""
    caption = (f"Test metrics from each run's cases.csv. Unit of analysis: the {unit}"
               + (" (ED and ES of a patient averaged)" if unit == "patient" else "")
               + f"; each {unit}'s value is averaged over the seeds first, then over {unit}s; [95% CI]: BCa bootstrap "
               f"over {unit}s. {fixed}HD95 median / mean over {unit}s; 'HD95 penalty': how many case x structure "
               f"values (all seeds) are the empty-prediction penalty, of all. ◆ the reference configuration: best mean "
               f"best/{monitor} over its seeds (chosen on validation, never on test). {HD95_NOTE}")
    if any(c.is_cv for c in configs):
        caption += (" Cross-validation configurations (seeds column 'folds ... × seed ...'): the folds are averaged "
                    f"per {unit} like seeds, and the selection criterion is the mean over folds; the fold ensemble "
                    "is in the Cross-validation table.")
    if not any(finite(c.stats.get("hd95_pooled_median")) for c in configs):
        caption += " HD95 pooled: – where the runs' cases.csv has no hd95_pooled column (written before it existed)."
    return Table(headers, rows, set(), caption)


def structure_table(configs: Sequence[Config], cases: pd.DataFrame, structures: Sequence[str], unit: str) -> Table:
    headers = ["model", "loss", "n runs"] + [f"Dice {s} [95% CI]" for s in structures] + \
              [f"HD95 {s} median" for s in structures]
    per = {s: stats.unit_values(cases, "dice", s)["dice"] for s in structures}
    hd = {s: stats.unit_values(cases, "hd95", s)["hd95"] for s in structures}
    rows = []
    for c in configs:
        row = [c.model, c.loss + (f" [{c.variant}]" if c.variant else ""), str(len(c.runs))]
        for s in structures:
            vals = per[s].loc[c.label].to_numpy() if c.label in per[s].index.get_level_values(0) else []
            mean, low, high, _ = stats.mean_ci(vals)
            row.append(fmt_ci(mean, low, high))
        for s in structures:
            vals = hd[s].loc[c.label] if c.label in hd[s].index.get_level_values(0) else pd.Series(dtype=float)
            row.append(fmt(vals.median(), "hd") if len(vals) else "–")
        rows.append(row)
    return Table(headers, rows, set(), f"per structure, on the {unit}s where it is present in the ground truth: Dice "
                 f"mean [95% bootstrap CI over {unit}s], HD95 (MONAI's definition) median over {unit}s.")


def comparison_table(rows: Sequence[dict], unit: str, has_empty: bool) -> Table:
    pos = " (GT+)" if has_empty else ""
    headers = ["reference", "vs", f"n {unit}s", f"Δ Dice{pos} [95% CI]", "median Δ", "W", "p", "p (Holm)",
               f"significant (α={stats.ALPHA})"]
    body = []
    for r in rows:
        ci = f" [{signed(r['delta_ci_low'])}, {signed(r['delta_ci_high'])}]" if finite(r["delta_ci_low"]) else ""
        body.append([r["reference"], r["other"], str(r["n_units"]), signed(r["delta"]) + ci, signed(r["median_delta"]),
                     fmt(r["statistic"], "time/") if finite(r["statistic"]) else "–", fmt_p(r["p"]),
                     fmt_p(r["p_holm"]), ("yes" if r["significant"] else "no") + (f" ({r['note']})" if r["note"] else "")])
    return Table(headers, body, set(), f"Paired on {unit}s (each {unit}'s Dice averaged over seeds first, so nothing is "
                 f"counted once per seed){' with a non-empty ground truth' if has_empty else ''}; Δ = reference − other, "
                 f"[95% CI]: BCa bootstrap of the mean paired difference; two-sided Wilcoxon signed-rank test (zero "
                 f"differences dropped), Holm correction over this task's comparisons. The reference is chosen on "
                 f"validation. A significant Δ can still be too small to matter: read the CI.")


def cost_table(configs: Sequence[Config]) -> Table:
    headers = ["model", "loss", "parameters", "train time (s)", "train img/s", "run wall time (s)", "best epoch"]
    rows = []
    for c in configs:
        cells = []
        for k in COST_KEYS:
            stat = stats.mean_std([r.metrics.get(k) for r in c.runs])
            cells.append(fmt(stat[0], k) if k == "model/params" else fmt_stat(stat, k))
        rows.append([c.model, c.loss + (f" [{c.variant}]" if c.variant else "")] + cells)
    return Table(headers, rows, set(), "mean ± sample std (ddof = 1) over seeds; train time excludes validation and "
                 "testing; run wall time is MLflow's end - start of the run.")


def reference_table(task: str, dataset: str, ref: Config | None, cases: pd.DataFrame,
                    structures: Sequence[str], monitor: str) -> tuple[Table | None, str]:
    refs, real, missing = references_for(task, dataset)
    if not refs:
        return None, "No published reference for this task."
    keys = list(next(iter(refs)).dice)          # structure keys + "mean"
    headers = ["", "method", *keys, "source"]
    rows = [["published (real data)", r.method, *[f"{r.dice[k]:.2f}" for k in keys],
             r.source + (f". {r.note}" if r.note else "") + (f". HD95: {r.hd95}" if r.hd95 else "")] for r in refs]
    if ref is not None:
        cells = []
        for k in keys:
            if k == "mean":
                v = ref.stats.get("dice_pos")
            else:
                match = [s for s in structures if s.lower() in STRUCTURE_ALIASES.get(k, (k,))]
                v = None
                if match:
                    u = stats.unit_values(cases, "dice", match[0])["dice"]
                    v = u.loc[ref.label].mean() if ref.label in u.index.get_level_values(0) else None
            cells.append(f"{100 * v:.2f}" if finite(v) else "–")
        rows.append(["ours (this report)", f"reference: {ref.label}", *cells,
                     f"the configuration with the best mean best/{monitor} (validation), mean over {len(ref.runs)} "
                     f"seed(s), Dice × 100 on the ground-truth-positive units of this task's data"])
    caption = (f"Published numbers are the authors' results on {real}, as printed in the cited papers "
               f"(Dice in %). They are not comparable to ours when this task runs on phantom data, and "
               f"evaluation protocols differ (split, resolution, treatment of empty masks). {missing}").strip()
    return Table(headers, rows, set(), caption), ""


def excluded_table(runs: Sequence[Run]) -> Table:
    rows = [[r.name, r.run_id, r.model, r.loss, r.seed, r.status, r.why_excluded[:300]] for r in runs]
    return Table(["run", "run id", "model", "loss", "seed", "status", "why not averaged"], rows)


# ----------------------------------------------------------------------------------------------------
# frames (CSV)

def results_frame(selection: Selection) -> pd.DataFrame:
    rows = []
    for task, runs in selection.tasks.items():
        for r in runs:
            row = {"task": task, "run_id": r.run_id, "run_name": r.name, "status": r.status,
                   "included": r.included, "sweep_id": r.sweep_id, "model": r.model, "loss": r.loss,
                   "seed": r.seed, "dataset": r.tags.get("dataset", ""), "config_hash": r.tags.get("config_hash", ""),
                   "smoke": r.smoke, "failure_reason": r.tags.get("failure_reason", "")}
            row.update({k: v for k, v in sorted(r.metrics.items()) if k.startswith(("test/", "best/"))})
            row.update({k: r.metrics.get(k) for k in COST_KEYS})
            rows.append(row)
    return pd.DataFrame(rows)


def summary_rows(task: str, configs: Sequence[Config], ref: Config | None) -> pd.DataFrame:
    rows = []
    for c in configs:
        row = {"task": task, **c.stats, "reference": c is ref, "flags": "; ".join(c.flags)}
        for k in MLFLOW_KEYS:
            mean, std, n = stats.mean_std([r.metrics.get(k) for r in c.runs])
            row[f"{k}_mean"], row[f"{k}_std"], row[f"{k}_count"] = mean, std, n
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# one task

def scope_line(task: str, selection: Selection, configs: Sequence[Config]) -> str:
    seeds = sorted({s for c in configs for s in c.seeds}, key=seed_key)
    per = sorted({len(c.runs) for c in configs})
    per_config = f"{per[0]}" if len(per) == 1 else f"{per[0]} to {per[-1]}" if per else "0"
    folds = sorted({f for c in configs for f in c.folds}, key=seed_key)
    cv = f", cross-validation folds {', '.join(folds)}" if folds else ""
    text = (f"Scope: {selection.scope[task]}; {len(configs)} configuration(s), seeds {', '.join(seeds) or '–'}{cv} "
            f"({per_config} run(s) per configuration).")
    chosen = selection.chosen_sweep.get(task)
    others = [s for s in selection.sweeps.get(task, []) if s.sweep_id != chosen]
    if others:
        listed = ", ".join(f"{s.sweep_id} ({s.n_runs} run(s), {s.n_configs} configuration(s)"
                           + (", smoke" if s.smoke else "") + ")" for s in others[:8])
        text += (f" Other sweeps of this experiment: {listed}{' ...' if len(others) > 8 else ''}; pick one with "
                 f"--sweep-id ID, or --all-sweeps (runs of different settings stay separate rows); smoke runs with "
                 f"--include-smoke.")
    return text


def build_task(client, task: str, selection: Selection, out: Path, tmp: Path, frames: dict,
               ensemble: bool = True) -> Section:
    runs = selection.tasks[task]
    sec = Section(task)
    included = [r for r in runs if r.included]
    excluded = sorted((r for r in runs if not r.included),
                      key=lambda r: (rank(r.model, MODEL_ORDER), rank(r.loss, LOSS_ORDER), seed_key(r.seed)))
    configs = group_configs(runs)
    monitor = monitor_of(included)
    dataset = next((r.tags.get("dataset") for r in runs if r.tags.get("dataset")), task)
    name = slug(task)
    fig_dir = out / "figures"
    sec.p(scope_line(task, selection, configs))
    sec.p(f"{len(runs)} run(s): {len(included)} averaged, {len(excluded)} not (listed below).")
    code, mixed = code_provenance(included or runs)
    sec.p(("⚠ " if mixed else "") + code)
    smoke = selection.smoke_left_out.get(task, [])
    if smoke:
        sec.p(f"{len(smoke)} smoke run(s) left out (e.g. {smoke[0].name}: {smoke[0].smoke}); --include-smoke reports them.")
    if not configs:
        sec.p("No FINISHED run with test metrics: nothing to average.")
    else:
        key = {r.run_id: c.label for c in configs for r in c.runs}
        cases, notes = stats.load_cases(client, included, tmp, key)
        has_empty = bool(cases["gt_empty"].any()) if not cases.empty else False
        unit = unit_name(cases)
        structures = structures_of(cases, included)
        for c in configs:
            c.stats = stats.summarize_config(cases, c, monitor)
        ref = reference_config(configs, monitor)
        sec.h("Model × loss")
        sec.table(main_table(configs, ref, has_empty, unit, monitor))
        flagged = [f"⚠ {c.label}: {'; '.join(c.flags)}" for c in configs if c.flags]
        have = {(c.model, c.loss) for c in configs}
        for model, loss in sorted({r.config for r in excluded} - have,
                                  key=lambda c: (rank(c[0], MODEL_ORDER), rank(c[1], LOSS_ORDER))):
            n = sum(r.config == (model, loss) for r in excluded)
            flagged.append(f"⚠ {model} + {loss}: no run to average ({n} not averaged, see below)")
        differ = cross_config_differences(configs)
        if differ:
            flagged.append("⚠ settings other than model and loss differ between configurations: " + "; ".join(differ))
        if ref is None:
            flagged.append(f"⚠ no configuration has best/{monitor}: no reference configuration, no comparisons")
        sec.items(flagged)
        sec.items(notes)
        if len(structures) > 1:
            sec.h("Per structure")
            sec.table(structure_table(configs, cases, structures, unit))
        sec.image(figures.plot_heatmaps(configs, fig_dir / f"{name}_heatmaps.png", task,
                                        "Dice (GT+)" if has_empty else "Dice"), "heatmaps of Dice and HD95", out)

        histories = {r.run_id: [(m.step, m.value) for m in client.get_metric_history(r.run_id, "val/dice")]
                     for c in configs for r in c.runs}
        sec.h("Validation Dice per epoch")
        curves = figures.plot_learning_curves(configs, histories, fig_dir / f"{name}_learning_curves.png", task)
        sec.image(curves, "validation Dice learning curves", out)
        if curves is None:
            sec.p("No val/dice history logged.")

        sec.h(f"Test Dice per {unit}")
        boxes = figures.plot_unit_boxes(configs, cases, fig_dir / f"{name}_case_dice.png", task, unit)
        sec.image(boxes, f"box plot of per-{unit} Dice", out)
        if boxes is None:
            sec.p("No per-case results (cases.csv) found.")

        sec.h("Qualitative: the same test cases across configurations")
        grid, what = figures.plot_qualitative(client, configs, cases, tmp, fig_dir / f"{name}_qualitative.png", task)
        sec.image(grid, "qualitative grid of overlays", out)
        sec.p(("Overlays logged by each run, " if grid else "Not drawn: ") + what + ".")
        if grid is not None:
            seed = sorted(set.intersection(*(set(c.seeds) for c in configs)), key=seed_key)[0]
            sec.items(figures.false_positive_lines(configs, cases, seed))

        sec.h("Statistics: the reference configuration (chosen on validation) vs each other one")
        rows = stats.compare_to_reference(cases, configs, ref)
        if rows:
            sec.table(comparison_table(rows, unit, has_empty))
            frames["comparisons"].append(pd.DataFrame([{"task": task, **r} for r in rows]))
        else:
            sec.p("Not computed: it needs a reference configuration and at least one other with per-case results.")

        add_cv_section(sec, configs, cases, ref, monitor, unit, has_empty, selection.uri, task, frames, ensemble)

        sec.h("Published reference")
        table, why = reference_table(task, dataset, ref, cases, structures, monitor)
        if table is not None:
            sec.table(table)
        else:
            sec.p(why)

        sec.h("Cost")
        sec.table(cost_table(configs))
        frames["summary"].append(summary_rows(task, configs, ref))
    sec.h("Runs not averaged")
    if excluded:
        sec.table(excluded_table(excluded))
    else:
        sec.p("None: every selected run FINISHED with test metrics.")
    return sec


def build_report(uri: str, out: Path, experiments: Sequence[str] = (), sweep_id: str | None = None,
                 tags: dict | None = None, all_sweeps: bool = False, include_smoke: bool = False,
                 ensemble: bool = True) -> dict:
    """Write the report for the selected runs into `out`; returns {"files", "tasks", "seconds", "selection"}.

    ensemble: for cross-validation configurations, score the fold ensemble on the test set (seg.report.cv;
    cached in MLflow after the first time); False leaves it out."""
    start = time.perf_counter()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bar per artifact
    client = open_store(uri)
    selection = select_runs(client, uri, experiments, sweep_id, tags, all_sweeps, include_smoke)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out}: expected a directory, found a file")
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    if fig_dir.is_dir():
        shutil.rmtree(fig_dir)   # figures of an earlier report must not linger
    fig_dir.mkdir()
    frames = {"summary": [], "comparisons": [], "cv": [], "cv_comparisons": []}
    with tempfile.TemporaryDirectory(prefix="seg-report-") as tmp:
        sections = [build_task(client, task, selection, out, Path(tmp), frames, ensemble) for task in selection.tasks]
    title = "segsweep report: architecture × loss"
    meta = [f"generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {uri}",
            f"selection: {selection.filters}",
            "Metrics follow docs/metrics.md (metric contract: empty masks, HD95 definitions; statistics contract: "
            "units, seeds averaged per unit, bootstrap CIs, paired Wilcoxon with Holm, selection on validation only).",
            HD95_NOTE,
            "summary.csv: one row per configuration (n, means with 95% CIs, FP rate, validation criterion); "
            "comparisons.csv: the paired tests; results.csv: one row per run"
            + ("; cv.csv: per cross-validation configuration, folds, fold mean and fold ensemble; cv_comparisons.csv: "
               "the ensembles' paired tests." if frames["cv"] else ".")]
    meta += selection.notes
    files = {"html": out / "index.html", "md": out / "report.md", "csv": out / "results.csv"}
    files["html"].write_text(render_html(title, meta, sections), encoding="utf-8")
    files["md"].write_text(render_markdown(title, meta, sections), encoding="utf-8")
    results_frame(selection).to_csv(files["csv"], index=False)
    for old in ("wilcoxon.csv",):          # written by earlier versions; its verdicts are not this report's
        (out / old).unlink(missing_ok=True)
    for name, parts in frames.items():
        path = out / f"{name}.csv"
        if parts:
            pd.concat(parts, ignore_index=True).to_csv(path, index=False)
            files[name] = path
        elif path.exists():
            path.unlink()
    return {"files": files, "tasks": list(selection.tasks), "selection": selection,
            "seconds": time.perf_counter() - start}
