"""MLflow runs -> the architecture x loss report: tables, plots, statistics.

    python -m seg.report [--experiment NAME ...] [--sweep-id ID | --all-sweeps] [--tag KEY=VALUE ...]
                         [--tracking-uri URI] [--out DIR]

Reads the runs of each experiment (one experiment per task) through MLflow, by default the latest
sweep of each, and writes to `--out` (default `outputs/report/`):

- `index.html` (self-contained: inline CSS, images beside it under `figures/`, no CDN) and `report.md`;
- `results.csv`: one row per run (task, model, loss, seed, status, every test metric, parameters, time);
- `summary.csv`: one row per task and configuration (n runs, mean and std over seeds);
- `wilcoxon.csv`: the best configuration of each task against each other one.

Per task: a model x loss table (Dice, IoU, HD95 as mean ± sample std over seeds, best per column
in bold, n runs), per-structure tables for multiclass tasks, heatmaps, validation-Dice learning
curves, a per-case Dice box plot, a qualitative grid of the same test cases across configurations,
a paired Wilcoxon signed-rank test (best configuration vs each other one over test cases, Holm
correction), the published reference numbers where they exist, and the cost of each configuration.
Runs that are not FINISHED (FAILED, RUNNING, KILLED) are listed and never averaged in; a
configuration with fewer seeds than the others is flagged.

Exit status: 0 when the report was written, 1 when there is nothing to report (no store, no
runs, a filter that matches nothing), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import html
import math
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from seg import PROJECT_ROOT, tracking

PARENT_TAG = getattr(tracking, "PARENT_TAG", "segsweep.parent")  # "true" on a sweep's parent run
NO_SWEEP = "none"                      # sweep_id of a single (non-multirun) run
HEADLINE = (("dice", "Dice", True), ("iou", "IoU", True), ("hd95", "HD95", False))  # (key, label, higher is better)
MODEL_ORDER = ("unet", "resunet", "transunet")
LOSS_ORDER = ("bce", "focal", "dice", "bce_dice", "dice_focal", "wce")
ALPHA = 0.05
GRID_CASES = 4                         # test cases in the qualitative grid
COST_KEYS = ("model/params", "time/train_s", "time/img_per_s", "run/duration_s", "best/epoch")
IGNORED_PARAMS = ("seed", "tracking.run_name")
IGNORED_PARAM_PREFIXES = ("paths.", "hydra.")


class ReportError(Exception):
    """Something the user has to fix (no store, no runs, a filter matching nothing): printed, no traceback."""


# ----------------------------------------------------------------------------------------------------
# published reference numbers (their numbers on the real data; never computed here)

@dataclass(frozen=True)
class Reference:
    method: str
    dice: dict          # structure -> Dice in %, plus "mean"
    source: str
    note: str = ""


ACDC_REFERENCES = (
    Reference("TransUNet (R50-ViT-B/16)", {"rv": 88.86, "myo": 84.54, "lv": 95.73, "mean": 89.71},
              "Chen et al., TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation, "
              "arXiv:2102.04306 (2021), ACDC table"),
    Reference("Swin-Unet", {"rv": 88.55, "myo": 85.62, "lv": 95.83, "mean": 90.00},
              "Cao et al., Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation, "
              "arXiv:2105.05537 (ECCV Workshops 2022), ACDC table"),
)
ACDC_NOT_INCLUDED = ("nnU-Net (Isensee et al., Nature Methods 18:203-211, 2021) is not listed: its ACDC "
                     "results are reported per phase and structure in the paper's supplement, and we list only "
                     "numbers we could check.")
COVID_REFERENCES = (
    Reference("best network of Tahir et al. (infection)", {"infection": 88.21, "mean": 88.21},
              "Tahir et al., COVID-19 infection localization and severity grading from chest X-ray images, "
              "Computers in Biology and Medicine 139:105002 (2021), arXiv:2103.07985, abstract",
              note="IoU 83.05 %. Their split, resolution and handling of images without infection differ from ours."),
)
STRUCTURE_ALIASES = {"rv": ("rv", "right_ventricle"), "myo": ("myo", "myocardium"),
                     "lv": ("lv", "left_ventricle"), "infection": ("infection", "covid", "lesion")}


def references_for(task: str, dataset: str) -> tuple[tuple[Reference, ...], str, str]:
    """(references, name of the real data set, what is not included) for a task, by dataset name."""
    key = f"{task} {dataset}".lower()
    if "cardiac" in key or "acdc" in key:
        return ACDC_REFERENCES, "ACDC (real cine MRI; 20 test volumes of the TransUNet split)", ACDC_NOT_INCLUDED
    if "xray" in key or "covid" in key:
        return COVID_REFERENCES, "COVID-QU-Ex infection segmentation data (real chest X-rays)", ""
    return (), "", ""


# ----------------------------------------------------------------------------------------------------
# runs

@dataclass
class Run:
    run_id: str
    name: str
    task: str
    status: str
    tags: dict
    metrics: dict
    params: dict
    start_ms: int | None
    end_ms: int | None
    artifact_uri: str = ""

    @property
    def model(self) -> str:
        return self.tags.get("model") or self.params.get("model.name", "?")

    @property
    def loss(self) -> str:
        return self.tags.get("loss") or self.params.get("loss.name", "?")

    @property
    def seed(self) -> str:
        return self.tags.get("seed") or self.params.get("seed", "?")

    @property
    def config(self) -> tuple[str, str]:
        return self.model, self.loss

    @property
    def sweep_id(self) -> str:
        return self.tags.get("sweep_id", NO_SWEEP)

    @property
    def included(self) -> bool:
        return self.status == "FINISHED" and _finite(self.metrics.get("test/dice"))

    @property
    def why_excluded(self) -> str:
        reason = self.tags.get("failure_reason", "")
        if self.status == "RUNNING":
            return "still running, or its process died without ending the run"
        if self.status != "FINISHED":
            return reason or f"ended {self.status} without a failure_reason tag"
        return "FINISHED without a test/dice metric"


def _to_run(run, task: str) -> Run:
    metrics = dict(run.data.metrics)
    if run.info.start_time and run.info.end_time:
        metrics["run/duration_s"] = (run.info.end_time - run.info.start_time) / 1000.0
    return Run(run.info.run_id, run.info.run_name or run.data.tags.get("mlflow.runName", run.info.run_id),
               task, run.info.status, dict(run.data.tags), metrics, dict(run.data.params),
               run.info.start_time, run.info.end_time, run.info.artifact_uri or "")


def _local_artifacts(run: Run) -> Path | None:
    """The run's artifact directory when the artifact store is the local file system (read in place)."""
    parsed = urllib.parse.urlparse(run.artifact_uri)
    if parsed.scheme == "file" or (parsed.scheme == "" and run.artifact_uri):
        path = Path(urllib.request.url2pathname(parsed.path))
        return path if path.is_dir() else None
    return None


def fetch_artifact(client, run: Run, rel: str, tmp: Path) -> str:
    """Local path of one artifact file: in place on a local store, else downloaded through MLflow into tmp."""
    local = _local_artifacts(run)
    if local is not None and (local / rel).is_file():
        return str(local / rel)
    dst = tmp / run.run_id
    dst.mkdir(parents=True, exist_ok=True)
    return client.download_artifacts(run.run_id, rel, str(dst))


def list_artifact_files(client, run: Run, folder: str) -> list[str]:
    """Relative paths of the files in one artifact folder."""
    local = _local_artifacts(run)
    if local is not None:
        return sorted(f"{folder}/{p.name}" for p in (local / folder).glob("*") if p.is_file())
    return [f.path for f in client.list_artifacts(run.run_id, folder) if not f.is_dir]


def open_store(uri: str):
    """An MlflowClient on `uri`; a sqlite store must exist already (the report never creates one)."""
    path = tracking.sqlite_path(uri)
    if path is not None:
        if not path.is_file():
            raise ReportError(f"no MLflow store at {path}: run a sweep first (`make sweep`), or point "
                              f"--tracking-uri / MLFLOW_TRACKING_URI at the store that holds the runs")
    return tracking.MlflowClient(tracking_uri=uri)


@dataclass
class Selection:
    uri: str
    tasks: dict[str, list[Run]]        # experiment -> selected runs (included or not)
    scope: dict[str, str]              # experiment -> which runs ("sweep X", "all sweeps", ...)
    notes: list[str]
    filters: str


def describe_filters(experiments: Sequence[str], sweep_id: str | None, tags: dict, all_sweeps: bool) -> str:
    parts = [f"experiment={','.join(experiments) if experiments else '(all)'}"]
    parts.append(f"sweep_id={sweep_id}" if sweep_id else "all sweeps" if all_sweeps else "latest sweep per task")
    parts += [f"tag {k}={v}" for k, v in tags.items()]
    return ", ".join(parts)


def select_runs(client, uri: str, experiments: Sequence[str] = (), sweep_id: str | None = None,
                tags: dict | None = None, all_sweeps: bool = False) -> Selection:
    """The runs the report covers, per experiment. Parent runs of sweeps are never configurations."""
    tags = dict(tags or {})
    available = [e.name for e in client.search_experiments()]
    names = list(dict.fromkeys(experiments)) or sorted(available)
    for name in names:
        if name not in available:
            raise ReportError(f"--experiment {name!r}: no such experiment in {uri}; experiments there: "
                              f"{', '.join(sorted(available)) or 'none'}")
    filters = describe_filters(experiments, sweep_id, tags, all_sweeps)
    selected, scope, misses, notes, total = {}, {}, [], [], 0
    for name in names:
        every = [_to_run(r, name) for r in tracking.search_runs(uri, name)]
        total += len(every)
        parents = [r for r in every if r.tags.get(PARENT_TAG, "").lower() == "true"]
        runs = [r for r in every if r.tags.get(PARENT_TAG, "").lower() != "true"]
        runs = [r for r in runs if all(r.tags.get(k) == v for k, v in tags.items())]
        sweeps = _sweeps(runs + parents)   # a re-run that skipped every job has only its parent run
        if sweep_id:
            chosen, label = [r for r in runs if r.sweep_id == sweep_id], f"sweep {sweep_id}"
        elif all_sweeps:
            chosen, label = runs, f"all runs ({len(sweeps)} sweep(s))"
        elif sweeps:
            latest = sweeps[0]
            chosen, label = [r for r in runs if r.sweep_id == latest], f"sweep {latest} (the latest)"
        else:
            chosen, label = runs, "single runs (no sweep found)"
        if sweep_id or (not all_sweeps and sweeps):
            target = sweep_id or sweeps[0]
            extra = _skipped_children(client, parents, target, runs, chosen)
            if extra:
                chosen = chosen + extra
                notes.append(f"{name}: {len(extra)} run(s) of earlier sweeps included because sweep {target} "
                             f"skipped them as already FINISHED (resume)")
        if chosen:
            selected[name], scope[name] = chosen, label
        else:
            seen = ", ".join(sweeps[:5]) + (" ..." if len(sweeps) > 5 else "")
            misses.append(f"{name}: {len(every) - len(parents)} run(s), sweeps: {seen or 'none'}")
    if not selected:
        if total == 0:
            where = f"experiment {', '.join(names)}" if experiments else "any experiment"
            raise ReportError(f"no runs match: there are no runs in {where} of {uri}; run a sweep first "
                              f"(`make sweep`) or point --tracking-uri / MLFLOW_TRACKING_URI at another store")
        raise ReportError(f"no runs match ({filters}) in {uri}. " + "; ".join(misses))
    notes += [f"no runs match in {m}" for m in misses if experiments]
    return Selection(uri, selected, scope, notes, filters)


def _sweeps(runs: Sequence[Run]) -> list[str]:
    """Sweep ids of the runs, newest first (by the latest start time of their runs)."""
    latest: dict[str, int] = {}
    for r in runs:
        if r.sweep_id != NO_SWEEP:
            latest[r.sweep_id] = max(latest.get(r.sweep_id, 0), r.start_ms or 0)
    return sorted(latest, key=lambda s: (latest[s], s), reverse=True)


def _skipped_children(client, parents: Sequence[Run], sweep: str, runs: Sequence[Run],
                      chosen: Sequence[Run]) -> list[Run]:
    """Runs a resumed sweep skipped as already FINISHED: listed in its parent's children.csv."""
    have = {r.run_id for r in chosen}
    by_id = {r.run_id: r for r in runs}
    extra = []
    for parent in (p for p in parents if p.sweep_id == sweep):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                children = pd.read_csv(fetch_artifact(client, parent, "children.csv", Path(tmp)), dtype=str)
            except Exception:  # a parent still running has no children.csv yet
                continue
        for run_id in children.get("run_id", pd.Series(dtype=str)).dropna():
            if run_id in by_id and run_id not in have:
                extra.append(by_id[run_id])
                have.add(run_id)
    return extra


# ----------------------------------------------------------------------------------------------------
# aggregation

def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1; NaN with one value), count) over the finite values."""
    v = np.array([float(x) for x in values if _finite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


def _rank(value: str, preferred: Sequence[str]) -> tuple:
    return (preferred.index(value), "") if value in preferred else (len(preferred), value)


def _order(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    known = [v for v in preferred if v in values]
    return known + sorted(v for v in set(values) if v not in preferred)


def structures_of(runs: Sequence[Run]) -> list[str]:
    """Foreground structures, from the `test/dice_<structure>` metrics."""
    found: list[str] = []
    for r in runs:
        for key in r.metrics:
            if key.startswith("test/dice_") and not key.endswith(("_n", "_std")):
                name = key[len("test/dice_"):]
                if name not in found:
                    found.append(name)
    aliases = [a for group in STRUCTURE_ALIASES.values() for a in group]
    return sorted(found, key=lambda s: (aliases.index(s.lower()) if s.lower() in aliases else len(aliases), s))


@dataclass
class Config:
    model: str
    loss: str
    runs: list[Run]
    stats: dict = field(default_factory=dict)     # metric key -> (mean, std, n)
    flags: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} + {self.loss}"

    @property
    def seeds(self) -> list[str]:
        return sorted((r.seed for r in self.runs), key=_seed_key)


def _seed_key(seed: str):
    return (0, int(seed), "") if str(seed).lstrip("-").isdigit() else (1, 0, str(seed))


def aggregate(runs: Sequence[Run], structures: Sequence[str]) -> list[Config]:
    """Included runs -> one Config per (model, loss) with mean ± std over seeds of every reported key."""
    included = [r for r in runs if r.included]
    models = _order([r.model for r in included], MODEL_ORDER)
    losses = _order([r.loss for r in included], LOSS_ORDER)
    keys = [f"test/{m}" for m, _, _ in HEADLINE]
    keys += [f"test/{m}_{s}" for m in ("dice", "iou", "hd95") for s in structures]
    keys += list(COST_KEYS) + ["test/fpr_empty"]
    configs = []
    for model in models:
        for loss in losses:
            mine = sorted((r for r in included if r.config == (model, loss)), key=lambda r: _seed_key(r.seed))
            if not mine:
                continue
            c = Config(model, loss, mine)
            c.stats = {k: mean_std([r.metrics.get(k) for r in mine]) for k in keys}
            configs.append(c)
    _flag(configs)
    return configs


def _flag(configs: Sequence[Config]) -> None:
    """Fewer seeds than the others, a seed twice, settings other than model/loss/seed that differ."""
    if not configs:
        return
    most = max(len(c.runs) for c in configs)
    all_seeds = sorted({s for c in configs for s in c.seeds}, key=_seed_key)
    for c in configs:
        if len(c.runs) < most:
            missing = [s for s in all_seeds if s not in c.seeds]
            c.flags.append(f"fewer seeds: {len(c.runs)} of {most}"
                           + (f" (missing seed {', '.join(missing)})" if missing else ""))
        repeated = sorted({s for s in c.seeds if c.seeds.count(s) > 1}, key=_seed_key)
        if repeated:
            c.flags.append(f"seed {', '.join(repeated)} run more than once (all runs averaged)")
        varying = []
        keys = set().union(*(r.params for r in c.runs))
        for k in sorted(keys):
            if k in IGNORED_PARAMS or k.startswith(IGNORED_PARAM_PREFIXES):
                continue
            values = {r.params.get(k) for r in c.runs}
            if len(values) > 1:
                varying.append(f"{k} ({' / '.join(sorted(str(v) for v in values))})")
        if varying:
            c.flags.append("settings differ between its runs: " + "; ".join(varying[:4])
                           + (" ..." if len(varying) > 4 else ""))


def best_indices(values: Sequence[float], higher: bool) -> set[int]:
    """Indices of the best finite value (ties all marked)."""
    finite = [(i, v) for i, v in enumerate(values) if _finite(v)]
    if not finite:
        return set()
    target = max(v for _, v in finite) if higher else min(v for _, v in finite)
    return {i for i, v in finite if math.isclose(v, target, rel_tol=1e-12, abs_tol=1e-15)}


# ----------------------------------------------------------------------------------------------------
# per-case data and statistics

def load_cases(client, runs: Sequence[Run], tmp: Path) -> tuple[pd.DataFrame, list[str]]:
    """cases.csv of each run, concatenated with run_id / model / loss / seed columns; and notes on missing ones."""
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
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["case_id", "structure", "dice", "run_id", "model", "loss", "seed"]), notes
    cases = pd.concat(frames, ignore_index=True)
    for col in ("dice", "iou", "hd", "hd95", "assd"):
        if col in cases:
            cases[col] = pd.to_numeric(cases[col], errors="coerce")
    return cases, notes


def case_dice(cases: pd.DataFrame, config: Config) -> pd.Series:
    """Per-case Dice of a configuration: the mean over structures (NaN ones excluded) of each test case,
    indexed by (seed, case_id) so that configurations pair on the same split and case."""
    mine = cases[cases["run_id"].isin([r.run_id for r in config.runs])]
    if mine.empty:
        return pd.Series(dtype=float)
    per_case = mine.groupby(["seed", "case_id"])["dice"].mean()  # pandas mean skips NaN
    return per_case.dropna()


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted in m)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    valid = [i for i in range(p.size) if not math.isnan(p[i])]
    m, running = len(valid), 0.0
    for rank, i in enumerate(sorted(valid, key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_wilcoxon(best: pd.Series, other: pd.Series) -> dict:
    """Two-sided Wilcoxon signed-rank test of best vs other on the cases both have (zero differences dropped)."""
    from scipy.stats import wilcoxon

    joined = pd.concat([best.rename("a"), other.rename("b")], axis=1, join="inner").dropna()
    diff = joined["a"] - joined["b"]
    out = {"n_pairs": int(len(joined)), "mean_diff": float(diff.mean()) if len(diff) else math.nan,
           "median_diff": float(diff.median()) if len(diff) else math.nan, "statistic": math.nan,
           "p": math.nan, "note": ""}
    if len(joined) == 0:
        out["note"] = "no paired test cases"
    elif (diff == 0).all():
        out.update(statistic=0.0, p=1.0, note="identical per-case Dice")
    else:
        res = wilcoxon(joined["a"].to_numpy(), joined["b"].to_numpy())
        out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def compare_to_best(cases: pd.DataFrame, configs: Sequence[Config]) -> tuple[Config | None, list[dict]]:
    """The best configuration (highest mean test Dice) against each other one, Holm-corrected."""
    ranked = [c for c in configs if _finite(c.stats["test/dice"][0])]
    if len(ranked) < 2 or cases.empty:
        return (ranked[0] if ranked else None), []
    best = max(ranked, key=lambda c: c.stats["test/dice"][0])
    best_cases = case_dice(cases, best)
    rows = []
    for c in configs:
        if c is best:
            continue
        rows.append({"best": best.label, "other": c.label, "model": c.model, "loss": c.loss,
                     **paired_wilcoxon(best_cases, case_dice(cases, c))})
    for row, adj in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = float(adj)
        row["significant"] = bool(_finite(adj) and adj < ALPHA)
    return best, rows


# ----------------------------------------------------------------------------------------------------
# figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loss_colors(configs: Sequence[Config]) -> dict:
    plt = _plt()
    losses = _order([c.loss for c in configs], LOSS_ORDER)
    cmap = plt.get_cmap("tab10")
    return {loss: cmap(i % 10) for i, loss in enumerate(losses)}


def plot_heatmaps(configs: Sequence[Config], path: Path, title: str) -> Path:
    plt = _plt()
    models = _order([c.model for c in configs], MODEL_ORDER)
    losses = _order([c.loss for c in configs], LOSS_ORDER)
    panels = (("test/dice", "test Dice (mean over seeds)", "viridis"),
              ("test/hd95", "test HD95 (mean over seeds; lower is better)", "viridis_r"))
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.9 * len(losses) * 2, 1.4 + 0.9 * len(models)), squeeze=False)
    lookup = {(c.model, c.loss): c for c in configs}
    most = max(len(c.runs) for c in configs)
    for ax, (key, label, cmap) in zip(axes[0], panels):
        grid = np.full((len(models), len(losses)), np.nan)
        for i, m in enumerate(models):
            for j, l in enumerate(losses):
                if (m, l) in lookup:
                    grid[i, j] = lookup[(m, l)].stats[key][0]
        masked = np.ma.masked_invalid(grid)
        cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
        im = ax.imshow(masked, cmap=cm, aspect="auto")
        ax.set_xticks(range(len(losses)), losses)
        ax.set_yticks(range(len(models)), models)
        ax.set_xlabel("loss")
        ax.set_ylabel("model")
        ax.set_title(label, fontsize=10)
        finite = grid[np.isfinite(grid)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(len(models)):
            for j in range(len(losses)):
                c = lookup.get((models[i], losses[j]))
                if c is None or not _finite(grid[i, j]):
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=9)
                    continue
                mean, std, _ = c.stats[key]
                text = _fmt(mean, key) + (f"\n± {_fmt(std, key, like=mean)}" if _finite(std) else "")
                if len(c.runs) < most:
                    text += f"\n(n={len(c.runs)} of {most})"
                dark = (grid[i, j] < mid) if cmap == "viridis" else (grid[i, j] > mid)
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(configs: Sequence[Config], histories: dict[str, list[tuple[int, float]]],
                         path: Path, title: str) -> Path | None:
    if not any(histories.get(r.run_id) for c in configs for r in c.runs):
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    models = _order([c.model for c in configs], MODEL_ORDER)
    colors = _loss_colors(configs)
    fig, axes = plt.subplots(1, len(models), figsize=(4.3 * len(models), 3.4), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        for c in (c for c in configs if c.model == model):
            series = []
            for r in c.runs:
                hist = histories.get(r.run_id) or []
                if not hist:
                    continue
                s = pd.Series({step + 1: value for step, value in hist}).sort_index()
                ax.plot(s.index, s.values, color=colors[c.loss], alpha=0.3, linewidth=0.8)
                series.append(s)
            if series:
                mean = pd.concat(series, axis=1).mean(axis=1)
                ax.plot(mean.index, mean.values, color=colors[c.loss], linewidth=2,
                        label=f"{c.loss} (n={len(series)})", marker="o" if len(mean) < 4 else None)
        ax.set_title(model)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="loss", title_fontsize=8)
    axes[0][0].set_ylabel("validation Dice")
    fig.suptitle(title + " (thin: each seed; thick: mean over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_case_boxes(configs: Sequence[Config], cases: pd.DataFrame, path: Path, title: str) -> Path | None:
    data = [(c, case_dice(cases, c)) for c in configs]
    data = [(c, s) for c, s in data if len(s)]
    if not data:
        return None
    plt = _plt()
    colors = _loss_colors(configs)
    fig, ax = plt.subplots(figsize=(1.0 + 0.85 * len(data), 4.0))
    box = ax.boxplot([s.values for _, s in data], tick_labels=[f"{c.model}\n{c.loss}" for c, _ in data],
                     showmeans=True, showfliers=False, patch_artist=True, widths=0.6)
    for patch, (c, _) in zip(box["boxes"], data):
        patch.set_facecolor(colors[c.loss])
        patch.set_alpha(0.55)
    rng = np.random.default_rng(0)
    for i, (_, s) in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(s)), s.values, s=6, color="black", alpha=0.35, zorder=3)
    ax.set_ylabel("per-case test Dice")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title + " (cases of all seeds; triangle: mean)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overlay_name(case_id: str) -> str:
    """The overlay file stem seg.train writes for a case id."""
    return "_".join(Path(case_id).with_suffix("").parts).replace(" ", "_")


def plot_qualitative(client, configs: Sequence[Config], cases: pd.DataFrame, tmp: Path, path: Path,
                     title: str) -> tuple[Path | None, str]:
    """Rows: the same test cases (overlay artifacts of one seed), columns: configurations."""
    seeds = [set(c.seeds) for c in configs]
    common = sorted(set.intersection(*seeds), key=_seed_key) if seeds else []
    if not common:
        return None, "no seed common to all configurations, so no common test cases to show"
    seed = common[0]
    listing: dict[str, dict[str, str]] = {}
    for c in configs:
        run = next(r for r in c.runs if r.seed == seed)
        try:
            files = list_artifact_files(client, run, "overlays")
        except Exception:  # an artifact store that cannot list: no grid, said in the report
            files = []
        listing[run.run_id] = {Path(f).stem: f for f in files if f.endswith(".png")}
    names = sorted(set.intersection(*(set(v) for v in listing.values()))) if listing else []
    if not names:
        return None, "the runs have no overlay images of common test cases (tracking.overlays=0?)"
    names = names[:GRID_CASES]
    plt = _plt()
    from matplotlib.image import imread

    dice_of = {}
    if not cases.empty:
        sub = cases[cases["seed"] == seed].copy()
        sub["stem"] = sub["case_id"].map(overlay_name)
        dice_of = sub.groupby(["run_id", "stem"])["dice"].mean().to_dict()
    fig, axes = plt.subplots(len(names), len(configs), figsize=(1.75 * len(configs) + 0.6, 1.9 * len(names) + 0.7),
                             squeeze=False)
    for j, c in enumerate(configs):
        run = next(r for r in c.runs if r.seed == seed)
        for i, name in enumerate(names):
            ax = axes[i][j]
            ax.imshow(imread(fetch_artifact(client, run, listing[run.run_id][name], tmp / "overlays")))
            ax.set_xticks([])
            ax.set_yticks([])
            d = dice_of.get((run.run_id, name))
            ax.set_xlabel(f"Dice {d:.2f}" if _finite(d) else "Dice n/a (empty GT)", fontsize=7, labelpad=2)
            if i == 0:
                ax.set_title(f"{c.model}\n{c.loss}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name[-22:], fontsize=7)
    fig.suptitle(f"{title}: seed {seed}; ground truth green, prediction red", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path, f"seed {seed}; cases: {', '.join(names)}"


# ----------------------------------------------------------------------------------------------------
# tables and rendering

def _fmt(value, key: str = "", like: float | None = None) -> str:
    """A value for a table; `like` picks the decimals (a std is printed with its mean's decimals)."""
    if not _finite(value):
        return "–"
    v = float(value)
    if key.startswith(("test/hd", "test/assd")):
        scale = abs(v if like is None or not _finite(like) else like)
        return f"{v:.2f}" if scale < 100 else f"{v:.1f}"
    if key == "model/params":
        return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{int(v):,}"
    if key.startswith("time/") or key == "run/duration_s":
        return f"{v:.1f}"
    if key == "best/epoch":
        return f"{v:.1f}"
    return f"{v:.3f}"


def fmt_stat(stat: tuple[float, float, int], key: str) -> str:
    mean, std, n = stat
    if n == 0:
        return "–"
    return _fmt(mean, key) + (f" ± {_fmt(std, key, like=mean)}" if _finite(std) else "")


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    bold: set = field(default_factory=set)          # (row, col) cells marked best
    caption: str = ""

    def markdown(self) -> str:
        def cell(text: str, i: int, j: int) -> str:
            text = text.replace("|", "\\|").replace("\n", " ")
            return f"**{text}**" if (i, j) in self.bold and text != "–" else text

        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in self.headers) + " |",
                 "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(cell(t, i, j) for j, t in enumerate(row)) + " |" for i, row in enumerate(self.rows)]
        out = "\n".join(lines)
        return (out + "\n\n" + self.caption) if self.caption else out

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = []
        for i, row in enumerate(self.rows):
            cells = []
            for j, t in enumerate(row):
                text = html.escape(t)
                cells.append(f'<td class="best"><strong>{text}</strong></td>' if (i, j) in self.bold and t != "–"
                             else f"<td>{text}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        cap = f'<p class="caption">{html.escape(self.caption)}</p>' if self.caption else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{cap}"


def main_table(configs: Sequence[Config]) -> Table:
    headers = ["model", "loss", "n runs", "seeds"] + [f"{label} {'↑' if hi else '↓'}" for _, label, hi in HEADLINE] + ["flags"]
    rows, bold = [], set()
    for c in configs:
        rows.append([c.model, c.loss, str(len(c.runs)), ", ".join(c.seeds)]
                    + [fmt_stat(c.stats[f"test/{m}"], f"test/{m}") for m, _, _ in HEADLINE]
                    + ["; ".join(c.flags) or ""])
    for j, (m, _, hi) in enumerate(HEADLINE, start=4):
        bold |= {(i, j) for i in best_indices([c.stats[f"test/{m}"][0] for c in configs], hi)}
    return Table(headers, rows, bold, "mean ± sample standard deviation (ddof = 1) over the seeds of each "
                 "configuration, of each run's test metric (itself the mean over test cases and structures); "
                 "bold: best in the column; ↑ higher is better, ↓ lower is better.")


def structure_table(configs: Sequence[Config], structures: Sequence[str]) -> Table:
    cols = [(m, s) for m in ("dice", "hd95") for s in structures]
    headers = ["model", "loss", "n runs"] + [f"{'Dice' if m == 'dice' else 'HD95'} {s}" for m, s in cols]
    rows = [[c.model, c.loss, str(len(c.runs))] + [fmt_stat(c.stats[f"test/{m}_{s}"], f"test/{m}") for m, s in cols]
            for c in configs]
    bold = set()
    for j, (m, s) in enumerate(cols, start=3):
        bold |= {(i, j) for i in best_indices([c.stats[f"test/{m}_{s}"][0] for c in configs], m == "dice")}
    return Table(headers, rows, bold, "per structure: mean ± std over seeds; bold: best in the column.")


def cost_table(configs: Sequence[Config]) -> Table:
    headers = ["model", "loss", "parameters", "train time (s)", "train img/s", "run wall time (s)", "best epoch"]
    rows = [[c.model, c.loss] + [fmt_stat(c.stats[k], k) if k != "model/params" else _fmt(c.stats[k][0], k)
                                 for k in COST_KEYS] for c in configs]
    bold = set()
    for j, (k, hi) in enumerate((("model/params", False), ("time/train_s", False), ("time/img_per_s", True)), start=2):
        bold |= {(i, j) for i in best_indices([c.stats[k][0] for c in configs], hi)}
    return Table(headers, rows, bold, "mean ± std over seeds; train time excludes validation and testing; "
                 "run wall time is MLflow's end - start of the run. Bold: cheapest / fastest.")


def stats_table(best: Config, rows: Sequence[dict]) -> Table:
    headers = ["best", "vs", "paired cases", "mean Δ Dice", "median Δ Dice", "W", "p", "p (Holm)", f"significant (α={ALPHA})"]
    body = []
    for r in rows:
        body.append([best.label, r["other"], str(r["n_pairs"]), _signed(r["mean_diff"]), _signed(r["median_diff"]),
                     _fmt(r["statistic"], "time/") if _finite(r["statistic"]) else "–", _p(r["p"]), _p(r["p_holm"]),
                     ("yes" if r["significant"] else "no") + (f" ({r['note']})" if r["note"] else "")])
    return Table(headers, body, set(), "Two-sided Wilcoxon signed-rank test over test cases, paired on (seed, "
                 "case): per-case Dice = mean over structures with defined Dice; cases with no defined Dice in "
                 "either configuration are dropped, zero differences are dropped by the test. Holm-Bonferroni "
                 "correction over the comparisons of this task. Δ = best − other.")


def _signed(v) -> str:
    return f"{float(v):+.3f}" if _finite(v) else "–"


def _p(v) -> str:
    if not _finite(v):
        return "–"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def reference_tables(task: str, dataset: str, configs: Sequence[Config], structures: Sequence[str],
                     best: Config | None) -> tuple[Table | None, str]:
    refs, real, missing = references_for(task, dataset)
    if not refs:
        return None, "No published reference for this task."
    keys = list(next(iter(refs)).dice)          # structure keys + "mean"
    ours = {}
    for k in keys:
        if k == "mean":
            ours[k] = "test/dice"
            continue
        match = [s for s in structures if s.lower() in STRUCTURE_ALIASES.get(k, (k,))]
        ours[k] = f"test/dice_{match[0]}" if match else None
    headers = ["", "method", *[k if k != "mean" else "mean" for k in keys], "source"]
    rows = [["published (real data)", r.method, *[f"{r.dice[k]:.2f}" for k in keys],
             r.source + (f". {r.note}" if r.note else "")] for r in refs]
    if best is not None:
        rows.append(["ours (this sweep)", f"best: {best.label}",
                     *[(f"{100 * best.stats[ours[k]][0]:.2f}" if ours[k] and ours[k] in best.stats
                        and _finite(best.stats[ours[k]][0]) else "–") for k in keys],
                     f"mean over {len(best.runs)} seed(s), Dice × 100, on this task's data"])
    caption = (f"Published numbers are the authors' results on {real}, as printed in the cited papers "
               f"(Dice in %). They are not comparable to ours when this task runs on phantom data, and "
               f"evaluation protocols differ (split, resolution, treatment of empty masks). {missing}").strip()
    return Table(headers, rows, set(), caption), ""


def excluded_table(runs: Sequence[Run]) -> Table:
    rows = [[r.name, r.run_id, r.model, r.loss, r.seed, r.status, r.why_excluded[:300]] for r in runs]
    return Table(["run", "run id", "model", "loss", "seed", "status", "why not averaged"], rows)


def results_frame(selection: Selection) -> pd.DataFrame:
    rows = []
    for task, runs in selection.tasks.items():
        for r in runs:
            row = {"task": task, "run_id": r.run_id, "run_name": r.name, "status": r.status,
                   "included": r.included, "sweep_id": r.sweep_id, "model": r.model, "loss": r.loss,
                   "seed": r.seed, "dataset": r.tags.get("dataset", ""), "config_hash": r.tags.get("config_hash", ""),
                   "failure_reason": r.tags.get("failure_reason", "")}
            row.update({k: v for k, v in sorted(r.metrics.items()) if k.startswith("test/")})
            row.update({k: r.metrics.get(k) for k in COST_KEYS})
            rows.append(row)
    return pd.DataFrame(rows)


def summary_frame(task: str, configs: Sequence[Config]) -> pd.DataFrame:
    rows = []
    for c in configs:
        row = {"task": task, "model": c.model, "loss": c.loss, "n_runs": len(c.runs), "seeds": " ".join(c.seeds),
               "flags": "; ".join(c.flags)}
        for k, (mean, std, n) in c.stats.items():
            row[f"{k}_mean"], row[f"{k}_std"], row[f"{k}_count"] = mean, std, n
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# the report

@dataclass
class Section:
    """One task's part of the report: (kind, payload) blocks rendered to both Markdown and HTML."""
    task: str
    blocks: list = field(default_factory=list)

    def h(self, text: str):
        self.blocks.append(("h3", text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, t: Table):
        self.blocks.append(("table", t))

    def image(self, path: Path | None, alt: str, out: Path):
        if path is not None:
            self.blocks.append(("img", (path.relative_to(out).as_posix(), alt)))

    def items(self, lines: Sequence[str]):
        if lines:
            self.blocks.append(("ul", list(lines)))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def build_task(client, task: str, runs: list[Run], scope: str, out: Path, tmp: Path,
               frames: dict) -> Section:
    sec = Section(task)
    included = [r for r in runs if r.included]
    excluded = sorted((r for r in runs if not r.included),
                      key=lambda r: (_rank(r.model, MODEL_ORDER), _rank(r.loss, LOSS_ORDER), _seed_key(r.seed)))
    structures = structures_of(included)
    configs = aggregate(runs, structures)
    dataset = next((r.tags.get("dataset") for r in runs if r.tags.get("dataset")), task)
    slug = _slug(task)
    figures = out / "figures"
    sec.p(f"Runs: {scope}; {len(runs)} run(s): {len(included)} averaged, {len(excluded)} not "
          f"(listed below). {len(configs)} configuration(s); structures: {', '.join(structures) or '–'}.")
    if not configs:
        sec.p("No FINISHED run with test metrics: nothing to average.")
    else:
        sec.h("Model × loss")
        sec.table(main_table(configs))
        flagged = [f"⚠ {c.label}: {'; '.join(c.flags)}" for c in configs if c.flags]
        have = {(c.model, c.loss) for c in configs}
        for model, loss in sorted({r.config for r in excluded} - have,
                                  key=lambda c: (_rank(c[0], MODEL_ORDER), _rank(c[1], LOSS_ORDER))):
            n = sum(r.config == (model, loss) for r in excluded)
            flagged.append(f"⚠ {model} + {loss}: no run to average ({n} not averaged, see below)")
        sec.items(flagged)
        if len(structures) > 1:
            sec.h("Per structure")
            sec.table(structure_table(configs, structures))
        sec.image(plot_heatmaps(configs, figures / f"{slug}_heatmaps.png", task), "heatmaps of Dice and HD95", out)

        histories = {}
        for r in (r for c in configs for r in c.runs):
            histories[r.run_id] = [(m.step, m.value) for m in client.get_metric_history(r.run_id, "val/dice")]
        sec.h("Validation Dice per epoch")
        curves = plot_learning_curves(configs, histories, figures / f"{slug}_learning_curves.png", task)
        sec.image(curves, "validation Dice learning curves", out)
        if curves is None:
            sec.p("No val/dice history logged.")

        cases, notes = load_cases(client, included, tmp)
        sec.h("Per-case test Dice")
        boxes = plot_case_boxes(configs, cases, figures / f"{slug}_case_dice.png", task)
        sec.image(boxes, "box plot of per-case Dice", out)
        if boxes is None:
            sec.p("No per-case results (cases.csv) found.")
        sec.items(notes)

        sec.h("Qualitative: the same test cases across configurations")
        grid, what = plot_qualitative(client, configs, cases, tmp, figures / f"{slug}_qualitative.png", task)
        sec.image(grid, "qualitative grid of overlays", out)
        sec.p(("Overlays logged by each run, " if grid else "Not drawn: ") + what + ".")

        sec.h("Statistics: best configuration vs each other one")
        best, rows = compare_to_best(cases, configs)
        if rows:
            sec.table(stats_table(best, rows))
            frames["wilcoxon"].append(pd.DataFrame([{"task": task, **r} for r in rows]))
        else:
            sec.p("Not computed: it needs at least two configurations with per-case results.")

        sec.h("Published reference")
        ref, why = reference_tables(task, dataset, configs, structures, best)
        if ref is not None:
            sec.table(ref)
        else:
            sec.p(why)

        sec.h("Cost")
        sec.table(cost_table(configs))
        frames["summary"].append(summary_frame(task, configs))
    sec.h("Runs not averaged")
    if excluded:
        sec.table(excluded_table(excluded))
    else:
        sec.p("None: every selected run FINISHED with test metrics.")
    return sec


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1250px;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f1f3f5}tr:nth-child(even) td{background:#fafafa}
td.best{background:#e6f4ea !important}
p.caption{font-size:.82em;color:#555;margin-top:0;max-width:1100px}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.meta{color:#555;font-size:.9em}.warn{color:#8a5300}
#missing-images{display:none;color:#b00020;font-weight:bold}
"""

IMAGE_CHECK = """<script>
window.addEventListener('load', function () {
  var bad = Array.prototype.filter.call(document.images, function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute('data-images', document.images.length);
  document.body.setAttribute('data-missing-images', bad.length);
  if (bad.length) { var m = document.getElementById('missing-images'); m.style.display = 'block';
    m.textContent = bad.length + ' image(s) failed to load: ' + bad.map(function (i) { return i.getAttribute('src'); }).join(', '); }
});
</script>"""


def render_markdown(title: str, meta: list[str], sections: Sequence[Section]) -> str:
    out = [f"# {title}", ""] + [f"- {m}" for m in meta] + [""]
    for sec in sections:
        out += [f"## Task: {sec.task}", ""]
        for kind, payload in sec.blocks:
            if kind == "h3":
                out += [f"### {payload}", ""]
            elif kind == "p":
                out += [payload, ""]
            elif kind == "table":
                out += [payload.markdown(), ""]
            elif kind == "img":
                out += [f"![{payload[1]}]({payload[0]})", ""]
            elif kind == "ul":
                out += [f"- {line}" for line in payload] + [""]
    return "\n".join(out)


def render_html(title: str, meta: list[str], sections: Sequence[Section]) -> str:
    toc = "".join(f'<li><a href="#task-{_slug(s.task)}">{html.escape(s.task)}</a></li>' for s in sections)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             '<p id="missing-images"></p>',
             "<ul class=\"meta\">" + "".join(f"<li>{html.escape(m)}</li>" for m in meta) + "</ul>",
             f"<p>Tasks:</p><ul>{toc}</ul>"]
    for sec in sections:
        parts.append(f'<h2 id="task-{_slug(sec.task)}">Task: {html.escape(sec.task)}</h2>')
        for kind, payload in sec.blocks:
            if kind == "h3":
                parts.append(f"<h3>{html.escape(payload)}</h3>")
            elif kind == "p":
                parts.append(f"<p>{html.escape(payload)}</p>")
            elif kind == "table":
                parts.append(payload.html())
            elif kind == "img":
                parts.append(f'<p><img src="{html.escape(payload[0])}" alt="{html.escape(payload[1])}"></p>')
            elif kind == "ul":
                parts.append('<ul class="warn">' + "".join(f"<li>{html.escape(x)}</li>" for x in payload) + "</ul>")
    parts.append(IMAGE_CHECK + "</body></html>")
    return "\n".join(parts)


def build_report(uri: str, out: Path, experiments: Sequence[str] = (), sweep_id: str | None = None,
                 tags: dict | None = None, all_sweeps: bool = False) -> dict:
    """Write the report for the selected runs into `out`; returns {"files", "tasks", "seconds", "selection"}."""
    start = time.perf_counter()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bar per artifact
    client = open_store(uri)
    selection = select_runs(client, uri, experiments, sweep_id, tags, all_sweeps)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out}: expected a directory, found a file")
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    if figures.is_dir():
        shutil.rmtree(figures)   # figures of an earlier report must not linger
    figures.mkdir()
    frames = {"summary": [], "wilcoxon": []}
    with tempfile.TemporaryDirectory(prefix="seg-report-") as tmp:
        sections = [build_task(client, task, runs, selection.scope[task], out, Path(tmp), frames)
                    for task, runs in selection.tasks.items()]
    title = "segsweep report: architecture × loss"
    meta = [f"generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {uri}",
            f"selection: {selection.filters}",
            "HD95 is in mm where the data has a physical spacing (NIfTI, DICOM) and in pixels of the original "
            "image for PNG data (COVID-QU-Ex); Dice, IoU and HD95 follow the metric contract of DESIGN.md "
            "(empty masks: NaN excluded and counted, one empty: Dice 0 and HD95 = image diagonal).",
            "results.csv: one row per run; summary.csv: mean/std per configuration; wilcoxon.csv: the tests."]
    meta += selection.notes
    files = {"html": out / "index.html", "md": out / "report.md", "csv": out / "results.csv"}
    files["html"].write_text(render_html(title, meta, sections), encoding="utf-8")
    files["md"].write_text(render_markdown(title, meta, sections), encoding="utf-8")
    results_frame(selection).to_csv(files["csv"], index=False)
    for name, parts in frames.items():
        path = out / f"{name}.csv"
        if parts:
            pd.concat(parts, ignore_index=True).to_csv(path, index=False)
            files[name] = path
        elif path.exists():
            path.unlink()
    return {"files": files, "tasks": list(selection.tasks), "selection": selection,
            "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------------
# CLI

def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. --tag profile=cpu), got {text!r}")
    return key, value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m seg.report",
                                description="MLflow runs -> architecture x loss report (index.html, report.md, "
                                            "results.csv). Default: the latest sweep of every experiment.")
    p.add_argument("--experiment", action="append", default=[], metavar="NAME",
                   help="experiment (task) to report; repeatable; default: every experiment in the store")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sweep-id", metavar="ID", help="only runs with tags.sweep_id = ID (the multirun dir name)")
    group.add_argument("--all-sweeps", action="store_true", help="every run, of every sweep, instead of the latest sweep")
    p.add_argument("--tag", action="append", default=[], type=_tag, metavar="KEY=VALUE",
                   help="only runs with this tag value; repeatable (all must match)")
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
        result = build_report(uri, args.out, args.experiment, args.sweep_id, dict(args.tag), args.all_sweeps)
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
