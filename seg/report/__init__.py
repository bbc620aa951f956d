"""MLflow runs -> the architecture x loss report: tables, statistics, figures.

    python -m seg.report [--experiment NAME ...] [--sweep-id ID | --all-sweeps] [--tag KEY=VALUE ...]
                         [--include-smoke] [--tracking-uri URI] [--out DIR]

Reads the runs of each experiment (one experiment per task) through MLflow, by default the latest
sweep of each that holds a run that is not a smoke run, and writes to `--out` (default `outputs/report/`):

- `index.html` (self-contained: inline CSS, images beside it under `figures/`, no CDN) and `report.md`;
- `summary.csv`: one row per task x configuration (model x loss x settings): n runs, n units, Dice / IoU /
  HD95 on ground-truth-positive units with 95% bootstrap CIs, the false-positive rate on empty units,
  HD95 median and penalty count, the validation criterion (`val_dice`), MLflow's test means;
- `comparisons.csv`: per task, the reference configuration (best mean best/val/<monitor>) against
  each other one: n units, paired Δ with 95% CI, Wilcoxon p, Holm-adjusted p, significant;
- `results.csv`: one row per run.

The contracts (metrics, statistics) are in docs/metrics.md. Modules: runs (selection, grouping,
selection by validation), stats (units, CIs, tests), figures, render (+ templates/), references,
build (the report), cli. Exit status: 0 written, 1 nothing to report, 2 bad arguments.
"""
from seg.report.build import build_report
from seg.report.cli import main, parse_args
from seg.report.runs import (Config, ReportError, Run, Selection, best_by_validation, group_configs,
                             reference_config, select_runs)

__all__ = ["Config", "ReportError", "Run", "Selection", "best_by_validation", "build_report", "group_configs",
           "main", "parse_args", "reference_config", "select_runs"]
