"""Mutation testing (mutmut) of the modules the reported numbers rest on: `make mutate`.

Each module is mutated on its own, in a scratch copy of the project under outputs/mutate/<module>/
(mutmut writes its `mutants/` tree next to the sources it mutates, so the working tree is never
touched), and each mutant runs only against that module's SMALL test selection (MODULES below; mutmut
narrows it further to the tests that call the mutated function). Slow-marked tests are excluded.

    python tools/mutate.py                 # every module, one after the other
    python tools/mutate.py metrics losses  # some of them
    python tools/mutate.py --report        # only print the table of the last runs
    python tools/mutate.py --recheck metrics   # re-run only the last run's survivors against today's tests

Per module it prints and writes outputs/mutate/report.md: killed / survived / equivalent / other
(suspicious, segfault, not checked); a timeout counts as killed, a mutant no selected test reaches as survived. A survivor whose name is listed in
docs/mutation.md (a line starting with "- `<mutant name>`") is counted as equivalent: the change
cannot alter a number a user sees (the reason is written there). Survivors' diffs go to
outputs/mutate/<module>/survivors.txt.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "mutate"
EQUIVALENT_DOC = ROOT / "docs" / "mutation.md"

# module -> (files mutated, tests run against their mutants, the functions mutated: mutmut mutant-name
# globs, "seg.metrics.x_dice*" = function dice, "seg.losses.xǁDiceLossǁ*" = DiceLoss's methods)
MODULES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "metrics": (["seg/metrics.py"], ["tests/test_metrics.py"],
                [f"seg.metrics.x_{f}*" for f in ("dice", "iou", "empty_penalty", "_percentile", "_hd", "_assd",
                                                 "case_metrics", "_label_map", "structure_rows", "summarize")]),
    "losses": (["seg/losses.py"], ["tests/test_losses.py"], ["seg.losses.*"]),
    "sweep": (["seg/sweep.py"], [f"tests/test_sweeps.py::{t}" for t in (
        "test_config_hash_ignores_sweep_mechanics_not_settings", "test_config_hash_changes_with_the_scheduler",
        "test_config_hash_survives_a_moved_project_or_cache_but_not_another_dataset",
        "test_config_hash_replaces_each_path_by_its_placeholder",
        "test_previous_runs_prefers_a_finished_run_then_the_newest_unfinished",
        "test_read_jobs_lists_every_jobs_status_in_job_number_order_and_names_an_unreadable_one")]
              + [f"tests/test_cv_config.py::{t}" for t in (
                  "test_a_run_without_cv_has_the_hash_params_and_name_it_had_before_the_cv_node",
                  "test_val_every_1_keeps_the_hash_a_run_had_before_the_key_and_2_changes_it",
                  "test_each_fold_is_its_own_configuration_and_cv_settings_count")],
              ["seg.sweep.x_config_hash*", "seg.sweep.x_previous_runs*", "seg.sweep.x_read_jobs*"]),
    "checkpoint": (["seg/engine/checkpoint.py"],
                   ["tests/engine/test_checkpoint.py", "tests/engine/test_loop.py"],
                   [f"seg.engine.checkpoint.x_{f}*" for f in ("best_payload", "last_payload", "nonfinite", "load",
                                                              "_upgrade", "resume_state")]),
    # the Checkpointer (writes in a background thread: on_checkpoint, _write, flush, clean) and the snapshot
    # of the payloads it hands to that thread
    "checkpointer": (["seg/engine/hooks.py", "seg/engine/checkpoint.py"],
                     ["tests/engine/test_checkpoint.py", "tests/engine/test_loop.py"],
                     ["seg.engine.hooks.xǁCheckpointerǁ*", "seg.engine.checkpoint.x_snapshot*"]),
    # the selection rules fit applies (best epoch, stale count, early stopping, which epochs validate); the rest
    # of fit (about 450 mutants at ~15 s each, every one a short training run) is left to tests/engine/test_loop.py
    "loop": (["seg/engine/loop.py"], ["tests/engine/test_loop.py"],
             ["seg.engine.loop.xǁLoopStateǁrecord*", "seg.engine.loop.xǁLoopStateǁstopped_early*",
              "seg.engine.loop.x_validation_due*"]),
    "transforms": (["seg/data/transforms.py"], ["tests/data/test_transforms.py"] + [f"tests/data/test_readers.py::{t}" for t in (
        "test_masks_are_resized_nearest_and_follow_the_image", "test_resize_keeps_a_one_pixel_label_grid_exact",
        "test_mask_upscale_50_to_96_is_pixel_centre_nearest_without_new_classes",
        "test_every_mask_step_interpolates_nearest", "test_covid_augmentation_is_seeded",
        "test_covid_without_augmentation_trains_on_the_eval_transform", "test_build_transforms_rejects_bad_size",
        "test_dataloader_workers_draw_different_reproducible_augmentations")],
                   ["seg.data.transforms.x_build_transforms*", "seg.data.transforms.x_unit_slices*",
                    "seg.data.transforms.x_transforms_pair*", "seg.data.transforms.xǁFixedNormalizeǁapply*"]),
    "splits": (["seg/data/layout.py"], ["tests/data/test_layout.py"], ["seg.data.layout.x_stratified_split*"]),
    # load_cases (reading cases.csv artifacts from MLflow) is left to tests/report's store-backed tests,
    # whose report builds take seconds per mutant; everything computed from the case table is mutated
    "report_stats": (["seg/report/stats.py"], ["tests/report/test_stats.py"],
                     [f"seg.report.stats.x_{f}*" for f in ("unit_of", "_bool", "tidy_cases", "unit_values", "fp_values",
                                                          "bootstrap_ci", "mean_ci", "mean_std", "_penalty_count",
                                                          "summarize_config", "paired", "holm", "compare_to_reference")]),
}
# statements not mutated: error texts and log lines (their wording changes no number; the errors'
# conditions are still mutated)
DO_NOT_MUTATE = [r"^\s*raise \w+\(", r"^\s*log\.(debug|info|warning|error|exception)\("]
# copied into each scratch project (what the tests need at run time besides seg/ and tests/)
COPY = ["seg", "tests", "conf", "experiments", "benchmarks", "pytest.ini", "run.py", "requirements.txt"]
# exit codes mutmut records per mutant
# (a timeout counts as killed, as in mutmut's own score; "no tests" = no selected test reaches the mutant)
TIMEOUT = {24, -24, 152, 255, 36}           # counted as killed, and shown apart
KILLED = {1, 3} | TIMEOUT
SURVIVED = {0, 5, 33}


def _ignore(_dir, names):
    return [n for n in names if n in ("__pycache__", "mutants", ".pytest_cache") or n.endswith(".pyc")]


def _copy_project(work: Path) -> None:
    for item in COPY:
        src = ROOT / item
        if src.is_dir():
            if (work / item).exists():
                shutil.rmtree(work / item)
            shutil.copytree(src, work / item, ignore=_ignore)
        elif src.is_file():
            shutil.copy2(src, work / item)


def prepare(name: str, fresh: bool = True) -> Path:
    """A scratch copy of the project with a pyproject.toml that configures mutmut for `name` (fresh: the
    last run's results removed; else the copy is refreshed and mutmut's results kept, for --recheck)."""
    files, tests, _ = MODULES[name]
    missing = [p for p in files + tests if not (ROOT / p.split("::")[0]).exists()]
    if missing:
        raise SystemExit(f"mutate {name}: {', '.join(missing)} not found in {ROOT} (MODULES in {__file__})")
    work = OUT / name
    toml = _toml(name)
    if not fresh and (work / "pyproject.toml").is_file() and (work / "pyproject.toml").read_text() != toml:
        # mutmut drops every result when its configuration (e.g. the test selection) changes
        raise SystemExit(f"mutate {name}: its configuration changed since the last run; run it in full "
                         f"(`tools/mutate.py {name}`), not --recheck")
    if fresh and work.exists():
        shutil.rmtree(work)
    # mutmut runs, for each mutant, the tests its stats say reach the mutated function: a recheck drops the
    # stats so they are taken again with today's tests (a new test of a function it had no test for counts)
    (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    _copy_project(work)
    (work / "pyproject.toml").write_text(toml)
    return work


def _toml(name: str) -> str:
    files, tests, _ = MODULES[name]
    toml = ["[tool.mutmut]", 'source_paths = ["seg/"]',
            f"only_mutate = {json.dumps(files)}",
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
            'pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-q"]',
            'also_copy = ["conf", "experiments", "benchmarks", "pytest.ini", "run.py"]',
            'process_isolation = "forkserver"',     # torch is not fork-safe after pytest ran in the parent
            f"do_not_mutate_patterns = {json.dumps(DO_NOT_MUTATE)}",
            ]
    return "\n".join(toml) + "\n"


def equivalent_names() -> set[str]:
    if not EQUIVALENT_DOC.is_file():
        return set()
    return set(re.findall(r"^- `([^`]+)`", EQUIVALENT_DOC.read_text(), flags=re.M))


def results(name: str) -> dict | None:
    """Counts of one module's last run from mutmut's .meta files (None: not run)."""
    work = OUT / name
    metas = list((work / "mutants").rglob("*.meta")) if (work / "mutants").is_dir() else []
    if not metas:
        return None
    equivalent = equivalent_names()
    counts = {"killed": 0, "timeout": 0, "survived": 0, "equivalent": 0, "other": 0, "total": 0}
    survivors = []
    for meta in metas:
        data = json.loads(meta.read_text())
        for mutant, code in data.get("exit_code_by_key", {}).items():
            if not any(fnmatch.fnmatch(mutant, g) for g in MODULES[name][2]):
                continue
            counts["total"] += 1
            if code in KILLED:
                counts["killed"] += 1
                counts["timeout"] += code in TIMEOUT
            elif code in SURVIVED:
                if mutant in equivalent:
                    counts["equivalent"] += 1
                else:
                    counts["survived"] += 1
                    survivors.append(mutant)
            else:
                counts["other"] += 1
    counts["survivors"] = sorted(survivors)
    return counts


def write_survivors(name: str, survivors: list[str]) -> None:
    work = OUT / name
    with (work / "survivors.txt").open("w") as fh:
        for mutant in survivors:
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=work,
                                  capture_output=True, text=True).stdout
            fh.write(f"## {mutant}\n{diff}\n")


def report(names: list[str]) -> str:
    lines = ["| module | files | mutants | killed (by timeout) | survived | equivalent | other | score |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        c = results(name)
        files = ", ".join(MODULES[name][0])
        if c is None:
            lines.append(f"| {name} | {files} | not run | | | | | |")
            continue
        judged = c["killed"] + c["survived"] + c["equivalent"]
        score = (c["killed"] + c["equivalent"]) / judged if judged else float("nan")
        lines.append(f"| {name} | {files} | {c['total']} | {c['killed']} ({c['timeout']}) | {c['survived']} | {c['equivalent']} "
                     f"| {c['other']} | {score:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument("--report", action="store_true", help="only print the table of the last runs")
    parser.add_argument("--recheck", action="store_true",
                        help="re-run only the survivors of each module's last run (tests and sources copied anew)")
    parser.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args(argv)
    names = args.modules or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    if not args.report:
        for name in names:
            targets = MODULES[name][2]
            if args.recheck:
                last = results(name)
                if last is None:
                    print(f"mutate {name}: no earlier run to recheck (run `tools/mutate.py {name}` first)", flush=True)
                    continue
                if not last["survivors"]:
                    print(f"mutate {name}: no survivors to recheck", flush=True)
                    continue
                targets = last["survivors"]
            work = prepare(name, fresh=not args.recheck)
            print(f"mutate {name}: {', '.join(MODULES[name][0])} against {', '.join(MODULES[name][1])}"
                  + (f" ({len(targets)} survivors rechecked)" if args.recheck else ""), flush=True)
            proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children),
                                   *targets], cwd=work)
            c = results(name)
            if c is None:
                print(f"mutate {name}: mutmut produced no results (exit {proc.returncode})", flush=True)
                continue
            write_survivors(name, c["survivors"])
    OUT.mkdir(parents=True, exist_ok=True)
    table = report(names)
    (OUT / "report.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
