"""Write the README's results table from a report's output (never typed by hand).

    python -m seg.report.readme [--report outputs/report] [--readme README.md] [--task phantom_xray]

Reads `summary.csv` and `comparisons.csv` of a report and replaces what lies between the markers
`<!-- results:start -->` and `<!-- results:end -->` in the README with, per task, the main numbers
(n, Dice on positive units with its 95% CI, FP rate on empty units, HD95 median and penalties, the
validation criterion) and the comparisons against the reference configuration. Exit status 1 when
the report or the markers are missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from seg import PROJECT_ROOT
from seg.report.render import Table, finite, fmt, fmt_ci, fmt_p, markdown_table, signed

START, END = "<!-- results:start -->", "<!-- results:end -->"


def results_markdown(summary: pd.DataFrame, comparisons: pd.DataFrame | None, tasks: Sequence[str] = (),
                     results: pd.DataFrame | None = None) -> str:
    """The README block: per task its scope (from results.csv: sweeps, runs), a configuration table and a
    comparison table, from the report CSVs."""
    parts = []
    for task in (tasks or list(dict.fromkeys(summary["task"]))):
        s = summary[summary["task"] == task]
        if s.empty:
            raise ValueError(f"task {task!r} is not in summary.csv; tasks there: {', '.join(summary.task.unique())}")
        if results is not None and not results.empty:
            r = results[results["task"] == task]
            done = r[r["included"].astype(str).str.lower() == "true"]
            parts.append(f"Sweep {', '.join(sorted(set(r['sweep_id'].astype(str))))}: {len(s)} configuration(s) "
                         f"from {len(done)} averaged run(s) of {len(r)} selected.\n")
        has_empty = (s["n_empty"] > 0).any()
        headers = ["model", "loss", "n runs", "best val Dice", "n units (GT+)" if has_empty else "n units",
                   "Dice (GT+) [95% CI]" if has_empty else "Dice [95% CI]"]
        if has_empty:
            headers += ["n empty", "FP rate on empty [95% CI]"]
        headers += ["HD95 median", "HD95 penalty"]
        rows = []
        for _, r in s.iterrows():
            label = r["model"] + (" ◆" if bool(r.get("reference")) else "")
            settings = r.get("settings")
            row = [label, r["loss"] + (f" [{settings}]" if isinstance(settings, str) and settings else ""),
                   str(int(r["n_runs"])), fmt(r["val_dice"]), str(int(r["n_pos"])),
                   fmt_ci(r["dice_pos"], r["dice_pos_ci_low"], r["dice_pos_ci_high"])]
            if has_empty:
                row += [str(int(r["n_empty"])), fmt_ci(r["fpr_empty"], r["fpr_empty_ci_low"], r["fpr_empty_ci_high"])]
            row += [fmt(r["hd95_median"], "hd"), f"{int(r['n_hd95_penalty'])} of {int(r['n_hd95_values'])}"]
            rows.append(row)
        parts.append(f"**{task}** (◆ reference: best mean validation Dice over seeds)\n")
        parts.append(markdown_table(Table(headers, rows)) + "\n")
        c = comparisons[comparisons["task"] == task] if comparisons is not None else pd.DataFrame()
        if not c.empty:
            crow = []
            for _, r in c.iterrows():
                ci = f" [{signed(r['delta_ci_low'])}, {signed(r['delta_ci_high'])}]" if finite(r["delta_ci_low"]) else ""
                crow.append([r["reference"], r["other"], str(int(r["n_units"])), signed(r["delta"]) + ci,
                             fmt_p(r["p"]), fmt_p(r["p_holm"]), "yes" if bool(r["significant"]) else "no"])
            parts.append(markdown_table(Table(["reference", "vs", "n units", "Δ Dice [95% CI]", "p", "p (Holm)",
                                               "significant"], crow)) + "\n")
    return "\n".join(parts).strip() + "\n"


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"{readme}: expected the markers {START} ... {END} around the results table")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{block}{END}{tail}", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seg.report.readme", description=__doc__.split("\n\n")[0])
    p.add_argument("--report", type=Path, default=PROJECT_ROOT / "outputs" / "report", metavar="DIR",
                   help="the report's output directory (default outputs/report/)")
    p.add_argument("--readme", type=Path, default=PROJECT_ROOT / "README.md", metavar="FILE")
    p.add_argument("--task", action="append", default=[], metavar="NAME", help="task(s) to show; default: all")
    args = p.parse_args(argv)
    summary_csv, comp_csv = args.report / "summary.csv", args.report / "comparisons.csv"
    if not summary_csv.is_file():
        print(f"seg.report.readme: {summary_csv} not found: run `make report` first", file=sys.stderr)
        return 1
    try:
        results_csv = args.report / "results.csv"
        block = results_markdown(pd.read_csv(summary_csv), pd.read_csv(comp_csv) if comp_csv.is_file() else None,
                                 args.task, pd.read_csv(results_csv) if results_csv.is_file() else None)
        update_readme(args.readme, block)
    except ValueError as exc:
        print(f"seg.report.readme: {exc}", file=sys.stderr)
        return 1
    print(f"{args.readme}: results table written from {summary_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
