"""Command line of `python -m seg.report`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from seg import PROJECT_ROOT, tracking
from seg.report.build import build_report
from seg.report.runs import ReportError


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. --tag profile=cpu), got {text!r}")
    return key, value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m seg.report",
                                description="MLflow runs -> architecture x loss report (index.html, report.md, "
                                            "summary.csv, comparisons.csv, results.csv). Default: per experiment, "
                                            "the latest sweep with a non-smoke run.")
    p.add_argument("--experiment", action="append", default=[], metavar="NAME",
                   help="experiment (task) to report; repeatable; default: every experiment in the store")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sweep-id", metavar="ID", help="only runs with tags.sweep_id = ID (the multirun dir name)")
    group.add_argument("--all-sweeps", action="store_true",
                       help="every run, of every sweep, instead of the latest sweep (runs whose settings differ "
                            "stay separate rows)")
    p.add_argument("--tag", action="append", default=[], type=_tag, metavar="KEY=VALUE",
                   help="only runs with this tag value; repeatable (all must match)")
    p.add_argument("--include-smoke", action="store_true",
                   help="also report smoke runs (trainer.limit_train_batches or a debug.* setting set); "
                        "left out by default")
    p.add_argument("--no-ensemble", action="store_true",
                   help="cross-validation studies: leave out the fold ensemble (scoring it loads every fold's "
                        "checkpoint and the test data; the result is cached in MLflow after the first report)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow store; default $MLFLOW_TRACKING_URI or "
                                                         "sqlite:///<project>/mlruns/mlflow.db")
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "outputs" / "report", metavar="DIR",
                   help="output directory (default outputs/report/)")
    args = p.parse_args(argv)
    if args.sweep_id is not None and not args.sweep_id.strip():
        p.error("--sweep-id: expected a sweep id (the multirun directory name), got an empty string")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    uri = tracking.resolve_uri(args.tracking_uri)
    try:
        result = build_report(uri, args.out, args.experiment, args.sweep_id, dict(args.tag), args.all_sweeps,
                              args.include_smoke, ensemble=not args.no_ensemble)
    except ReportError as exc:
        print(f"seg.report: {exc}", file=sys.stderr)
        return 1
    sel = result["selection"]
    for task in result["tasks"]:
        runs = sel.tasks[task]
        ok = sum(r.included for r in runs)
        print(f"{task}: {sel.scope[task]}; {ok} run(s) averaged, {len(runs) - ok} listed as not averaged")
    print(f"report written to {args.out} ({', '.join(p.name for p in result['files'].values())}) "
          f"in {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
