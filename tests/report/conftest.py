"""Synthetic MLflow stores for the report tests: runs written through MlflowClient with known metric
values, params and per-case CSVs (so no training is needed). `synth` gives the helpers to tests."""
from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from seg.report.figures import overlay_name

SWEEP = "2026-11-01_10-00-00"
OLD_SWEEP = "2026-10-01_10-00-00"
T0 = int(time.time() * 1000) - 3_600_000


def params_for(model: str, loss: str, seed: int, **extra) -> dict:
    """The flattened config params seg.train logs, reduced to what the report reads."""
    p = {"model.name": model, "loss.name": loss, "seed": str(seed), "trainer.epochs": "16",
         "trainer.monitor": "val/dice", "trainer.limit_train_batches": "None", "debug.sigterm_after_epoch": "None",
         "optimizer.lr": "0.001", "paths.root": "/proj", "paths.cache": "/proj/outputs/cache",
         "dataset.source.root": "/proj/outputs/cache/phantom", "tracking.run_name": f"{model}-{loss}-s{seed}"}
    p.update({k: str(v) for k, v in extra.items()})
    return p


def cases_frame(case_ids, dice, gt_empty=None, pred_empty=None, structure="infection", hd95=None) -> pd.DataFrame:
    """A cases.csv frame with the contract's columns: NaN Dice / distances where both masks are empty,
    Dice 0 and the penalty 100.0 where exactly one is."""
    n = len(case_ids)
    gt_empty = list(gt_empty) if gt_empty is not None else [False] * n
    pred_empty = list(pred_empty) if pred_empty is not None else [False] * n
    rows = []
    for i, cid in enumerate(case_ids):
        both, one = gt_empty[i] and pred_empty[i], gt_empty[i] != pred_empty[i]
        d = math.nan if both else 0.0 if one else float(dice[i])
        h = math.nan if both else 100.0 if one else (float(hd95[i]) if hd95 is not None else 20 * (1 - d) + 1)
        rows.append({"case_id": cid, "structure": structure, "gt_empty": gt_empty[i], "pred_empty": pred_empty[i],
                     "dice": d, "iou": math.nan if both else d / (2 - d), "hd": h, "hd95": h,
                     "hd95_pooled": h * 0.9 if np.isfinite(h) and not one else h, "assd": h / 4})
    return pd.DataFrame(rows)


def log_run(client, exp_id, stage: Path, model, loss, seed, sweep=SWEEP, cases: pd.DataFrame | None = None,
            val: float = 0.5, status="FINISHED", start=None, params: dict | None = None, tags: dict | None = None,
            overlays: bool = True, history=None) -> str:
    """One run; FINISHED runs get test/* means of their cases, best/val/dice = val, cases.csv, an overlay."""
    stage.mkdir(parents=True, exist_ok=True)
    run_tags = {"model": model, "loss": loss, "seed": str(seed), "sweep_id": sweep, "dataset": "phantom_xray",
                "config_hash": f"{model}-{loss}-{seed}-{sweep}", **(tags or {})}
    run = client.create_run(exp_id, start_time=start if start is not None else T0,
                            tags=run_tags, run_name=f"{model}-{loss}-s{seed}")
    rid = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric("val/dice", v, now, step) for step, v in enumerate(history or [val * 0.5, val])]
    if status == "FINISHED" and cases is not None:
        for m in ("dice", "iou", "hd95", "hd95_pooled"):
            means = [float(np.nanmean(g[m])) for _, g in cases.groupby("structure", sort=False)]
            metrics.append(Metric(f"test/{m}", float(np.mean(means)), now, 0))
        metrics += [Metric("best/val/dice", val, now, 0), Metric("model/params", 1.0e6, now, 0),
                    Metric("time/train_s", 10.0 + seed, now, 0), Metric("time/img_per_s", 50.0, now, 0),
                    Metric("best/epoch", 3.0, now, 0)]
        cases.to_csv(stage / "cases.csv", index=False)
        if overlays:
            png = stage / "overlays" / f"{overlay_name(str(cases.case_id.iloc[0]))}.png"
            png.parent.mkdir(exist_ok=True)
            matplotlib.image.imsave(png, np.full((16, 16), 0.2 + 0.1 * (seed % 5)), cmap="gray")
        client.log_artifacts(rid, str(stage))
    p = params if params is not None else params_for(model, loss, seed)
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in p.items()])
    if status == "FAILED":
        client.set_tag(rid, "failure_reason", "FloatingPointError: loss is NaN at epoch 2")
    if status != "RUNNING":
        client.set_terminated(rid, status=status)
    return rid


@pytest.fixture
def new_store(empty_store, tmp_path):
    """() -> (uri, client, root): a fresh copy of the empty store in this test's tmp_path."""
    def make(name: str = "s"):
        root = tmp_path / name
        root.mkdir()
        shutil.copy(empty_store, root / "mlflow.db")
        uri = f"sqlite:///{root}/mlflow.db"
        return uri, MlflowClient(tracking_uri=uri), root
    return make


# this module, captured while it is imported: every conftest.py is a module named "conftest", so
# sys.modules["conftest"] may name another folder's conftest by the time a test runs
_THIS_MODULE = sys.modules[__name__]


@pytest.fixture(scope="session")
def synth():
    """This module's helpers (params_for, cases_frame, log_run, SWEEP, ...)."""
    return _THIS_MODULE
