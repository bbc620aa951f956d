"""Figures of a task (matplotlib, Agg backend): heatmaps, learning curves, per-unit boxes, the qualitative grid.

Every figure takes the task's `Config`s with `stats` filled by seg.report.stats.summarize_config
(keys of a summary.csv row) and writes one PNG; None when there is nothing to draw.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from seg.report.runs import LOSS_ORDER, MODEL_ORDER, Config, fetch_artifact, list_artifact_files, order, seed_key
from seg.report.stats import unit_values

GRID_CASES = 4                         # test cases in the qualitative grid


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _loss_colors(configs: Sequence[Config]) -> dict:
    plt = _plt()
    losses = order([c.loss for c in configs], LOSS_ORDER)
    cmap = plt.get_cmap("tab10")
    return {loss: cmap(i % 10) for i, loss in enumerate(losses)}


def plot_heatmaps(configs: Sequence[Config], path: Path, title: str, dice_label: str) -> Path:
    """Model x loss grids of Dice (mean with 95% CI) and HD95 (median). Configurations that share a
    model x loss (differing settings) show the first; the table lists all."""
    plt = _plt()
    models = order([c.model for c in configs], MODEL_ORDER)
    losses = order([c.loss for c in configs], LOSS_ORDER)
    panels = (("dice_pos", f"test {dice_label}\nmean over units [95% CI]", "viridis"),
              ("hd95_median", "test HD95 (MONAI's), median\nover units; lower is better", "viridis_r"))
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 2.2 + 2.1 * len(losses) * 2), 1.8 + 0.9 * len(models)),
                             squeeze=False)
    lookup: dict = {}
    for c in configs:
        lookup.setdefault((c.model, c.loss), c)
    for ax, (key, label, cmap) in zip(axes[0], panels):
        grid = np.full((len(models), len(losses)), np.nan)
        for i, m in enumerate(models):
            for j, l in enumerate(losses):
                if (m, l) in lookup and _finite(lookup[(m, l)].stats.get(key)):
                    grid[i, j] = lookup[(m, l)].stats[key]
        cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cm, aspect="auto")
        ax.set_xticks(range(len(losses)), losses)
        ax.set_yticks(range(len(models)), models)
        ax.set_xlabel("loss")
        ax.set_ylabel("model")
        ax.set_title(label, fontsize=9)
        finite = grid[np.isfinite(grid)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(len(models)):
            for j in range(len(losses)):
                c = lookup.get((models[i], losses[j]))
                if c is None or not _finite(grid[i, j]):
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=9)
                    continue
                if key == "dice_pos":
                    text = f"{grid[i, j]:.3f}"
                    if _finite(c.stats.get("dice_pos_ci_low")):
                        text += f"\n[{c.stats['dice_pos_ci_low']:.3f}, {c.stats['dice_pos_ci_high']:.3f}]"
                else:
                    text = f"{grid[i, j]:.1f}" if grid[i, j] >= 100 else f"{grid[i, j]:.2f}"
                    text += f"\n{c.stats.get('n_hd95_penalty', 0)} penalty"
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
    """Validation Dice per epoch: each seed thin, the mean over seeds thick; one panel per model."""
    if not any(histories.get(r.run_id) for c in configs for r in c.runs):
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    models = order([c.model for c in configs], MODEL_ORDER)
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
                name = c.loss + (f" [{c.variant}]" if c.variant else "")
                ax.plot(mean.index, mean.values, color=colors[c.loss], linewidth=2, label=f"{name} (n={len(series)})",
                        marker="o" if len(mean) < 4 else None, linestyle="--" if c.variant else "-")
        ax.set_title(model)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="loss", title_fontsize=8)
    axes[0][0].set_ylabel("validation Dice")
    fig.suptitle(title + " (thin: each seed; thick: mean over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_unit_boxes(configs: Sequence[Config], cases: pd.DataFrame, path: Path, title: str,
                    unit_name: str) -> Path | None:
    """Per-unit test Dice on positive units (seeds averaged), one box per configuration."""
    u = unit_values(cases, "dice")
    labels = set(u.index.get_level_values(0))
    data = [(c, u.loc[c.label, "dice"]) for c in configs if c.label in labels]
    data = [(c, s) for c, s in data if len(s)]
    if not data:
        return None
    plt = _plt()
    colors = _loss_colors(configs)
    fig, ax = plt.subplots(figsize=(1.0 + 0.95 * len(data), 4.0))
    box = ax.boxplot([s.values for _, s in data],
                     tick_labels=[f"{c.model}\n{c.loss}" + ("\n*" if c.variant else "") for c, _ in data],
                     showmeans=True, showfliers=False, patch_artist=True, widths=0.6)
    for patch, (c, _) in zip(box["boxes"], data):
        patch.set_facecolor(colors[c.loss])
        patch.set_alpha(0.55)
    rng = np.random.default_rng(0)
    for i, (_, s) in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(s)), s.values, s=6, color="black", alpha=0.35, zorder=3)
    ax.set_ylabel(f"test Dice per {unit_name} (mean over seeds)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title + f" (ground-truth-positive {unit_name}s; triangle: mean)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overlay_name(case_id: str) -> str:
    """The overlay file stem seg.train writes for a case id."""
    return "_".join(Path(case_id).with_suffix("").parts).replace(" ", "_")


def false_positive_lines(configs: Sequence[Config], cases: pd.DataFrame, seed: str, limit: int = 3) -> list[str]:
    """Per configuration, for `seed`: how many ground-truth-empty cases got foreground, and which."""
    if cases.empty or not cases["gt_empty"].any():
        return []
    out = []
    for c in configs:
        run = next((r for r in c.runs if r.seed == seed), None)
        if run is None:
            continue
        mine = cases[(cases["run_id"] == run.run_id) & cases["gt_empty"]]
        empty = mine.groupby("case_id")["pred_empty"].all()
        fp = sorted(empty.index[~empty.to_numpy()])
        out.append(f"{c.label}: false positives on {len(fp)} of {len(empty)} empty cases"
                   + (f" ({', '.join(Path(x).name for x in fp[:limit])}{' ...' if len(fp) > limit else ''})" if fp
                      else ""))
    return out


def plot_qualitative(client, configs: Sequence[Config], cases: pd.DataFrame, tmp: Path, path: Path,
                     title: str) -> tuple[Path | None, str]:
    """Rows: the same test cases (overlay artifacts of one seed), columns: configurations; a last row
    counts each configuration's false positives on ground-truth-empty cases (seg.train draws overlays of
    positive cases only, so those cases have no image)."""
    seeds = [set(c.seeds) for c in configs]
    common = sorted(set.intersection(*seeds), key=seed_key) if seeds else []
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
    fp_rows = []
    if not cases.empty and cases["gt_empty"].any():
        for c in configs:
            run = next(r for r in c.runs if r.seed == seed)
            mine = cases[(cases["run_id"] == run.run_id) & cases["gt_empty"]].groupby("case_id")["pred_empty"].all()
            fp_rows.append((int((~mine).sum()), int(mine.size)))
    plt = _plt()
    from matplotlib.image import imread

    dice_of = {}
    if not cases.empty:
        sub = cases[cases["seed"] == seed].copy()
        sub["stem"] = sub["case_id"].map(overlay_name)
        dice_of = sub.groupby(["run_id", "stem"])["dice"].mean().to_dict()
    n_rows = len(names) + (1 if fp_rows else 0)
    fig, axes = plt.subplots(n_rows, len(configs), figsize=(1.75 * len(configs) + 0.6, 1.9 * n_rows + 0.7),
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
                ax.set_title(f"{c.model}\n{c.loss}" + ("\n*" if c.variant else ""), fontsize=8)
            if j == 0:
                ax.set_ylabel(name[-22:], fontsize=7)
        if fp_rows:
            ax = axes[-1][j]
            k, n = fp_rows[j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("#fde0dd" if k else "#e6f4ea")
            ax.text(0.5, 0.5, f"false positive\non {k} of {n}\nempty cases", ha="center", va="center", fontsize=8,
                    color="#b00020" if k else "black", transform=ax.transAxes)
            if j == 0:
                ax.set_ylabel("empty GT", fontsize=7)
    fig.suptitle(f"{title}: seed {seed}; ground truth green, prediction red", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    what = f"seed {seed}; cases: {', '.join(names)}"
    if fp_rows:
        what += "; last row: false positives on the ground-truth-empty cases (listed below)"
    return path, what
