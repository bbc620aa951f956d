"""Fold ensembles: the models of a cross-validation configuration (one per fold, README "Cross-validation")
combined into one network whose output is the mean of their probabilities.

    FoldEnsemble(nets, num_classes)        x (B, 1, S, S) -> logits (B, K, S, S) of the mean probability
    ensemble_model(models)                 seg.predict Models of one configuration -> one Model (seg.predict)
    evaluate_ensemble(uri, run_ids)        the members' common test split scored per case (cases.csv rows)
    ensemble_cases(uri, run_ids)           the same, cached as an MLflow artifact (cv_ensemble/) of the first run

The ensemble returns logits so that every consumer of a single model's logits uses it unchanged (the
one inference path, seg.engine.inference: thresholding at 0 / argmax, flip TTA, resizing to the
original size): binary, logit(p) with p the mean of the members' sigmoids (sigmoid(logit(p)) = p);
multiclass, log(p) with p the mean of the members' softmaxes (softmax(log p) = p, argmax log p = argmax
p). p is clipped to [1e-7, 1 - 1e-7] (binary) or >= 1e-12 (multiclass) so the logits stay finite.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from seg.predict.model import Model, ModelError, model_of_run

log = logging.getLogger("seg.predict")

ARTIFACT_DIR = "cv_ensemble"            # artifact folder of the cached ensemble results (on the first member run)
P_MIN = 1e-7


class FoldEnsemble(torch.nn.Module):
    """The mean of the members' probabilities, as logits: x (B, C, S, S) -> (B, K, S, S).

    K = 1 (binary): logit(mean_m sigmoid(z_m)); K > 1: log(mean_m softmax(z_m)). Members run in float32
    after their forward pass (under the caller's autocast), one after the other on the same batch.
    """

    def __init__(self, nets: Sequence[torch.nn.Module], num_classes: int):
        super().__init__()
        if not nets:
            raise ValueError("FoldEnsemble: expected at least one network")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes={num_classes}; expected an integer >= 1")
        self.nets = torch.nn.ModuleList(nets)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for net in self.nets:
            z = net(x).float()                                                        # (B, K, S, S)
            p = torch.sigmoid(z) if self.num_classes == 1 else torch.softmax(z, dim=1)
            total = p if total is None else total + p
        p = total / len(self.nets)
        if self.num_classes == 1:
            p = p.clamp(P_MIN, 1 - P_MIN)
            return torch.log(p) - torch.log1p(-p)
        return torch.log(p.clamp_min(1e-12))


def _same(models: Sequence[Model], what: str, get) -> None:
    values = [get(m) for m in models]
    if any(v != values[0] for v in values[1:]):
        shown = ", ".join(f"{m.source}: {v}" for m, v in zip(models, values))
        raise ModelError(f"the models of an ensemble must share their {what}; they differ ({shown})")


def ensemble_model(models: Sequence[Model]) -> Model:
    """Models of one configuration (e.g. its folds) -> one Model whose net is their FoldEnsemble; the
    preprocessing, classes and amp of the first. ModelError when they differ in classes, input size,
    dataset, intensity transforms or amp (they could not share one preprocessing)."""
    models = list(models)
    if not models:
        raise ModelError("an ensemble needs at least one model")
    if len(models) == 1:
        return models[0]
    _same(models, "number of classes", lambda m: m.num_classes)
    _same(models, "input size", lambda m: m.image_size)
    _same(models, "dataset", lambda m: m.config["dataset"].get("name"))
    _same(models, "dataset transforms", lambda m: json.dumps((m.config["dataset"].get("source") or {})
                                                              .get("transforms"), sort_keys=True, default=str))
    _same(models, "amp setting", lambda m: m.amp)
    first = models[0]
    net = FoldEnsemble([m.net for m in models], first.num_classes).eval()
    source = f"ensemble of {len(models)} models ({', '.join(m.source for m in models)})"
    return Model(net, first.config, first.num_classes, first.image_size, first.class_names, first.reader, source,
                 first.transform, first.amp, first.dtype)


def _test_split(uri: str, run_id: str) -> list[str] | None:
    """The test ids of a run's split.json artifact; None when it has none."""
    from seg.tracking import download_artifact

    with tempfile.TemporaryDirectory(prefix="segsweep-split-") as tmp:
        try:
            return list(json.loads(Path(download_artifact(uri, run_id, "split.json", tmp)).read_text())["test"])
        except (LookupError, FileNotFoundError, KeyError, ValueError):
            return None


def _cache_dir(config: dict) -> str:
    """Where the run's phantom lies: its paths.cache when that folder exists here, else this machine's cache
    ($SEGSWEEP_CACHE, else <project>/outputs/cache): the phantom is rewritten, identically, if absent."""
    from seg import PROJECT_ROOT

    stored = (config.get("paths") or {}).get("cache")
    if stored and Path(stored).is_dir():
        return str(stored)
    return os.environ.get("SEGSWEEP_CACHE") or str(PROJECT_ROOT / "outputs" / "cache")


@functools.lru_cache(maxsize=1)
def _open_test_data(key: str):
    """seg.data.open_dataset of a stored config (key: JSON of its dataset node, seed, cache folder and cv node),
    kept for the next call: the configurations of one study share their data, so a report opens it once."""
    from seg.data import open_dataset

    spec = json.loads(key)
    return open_dataset(spec["dataset"], seed=spec["seed"], cache_dir=spec["cache"], cv=spec["cv"])


def evaluate_ensemble(uri: str, run_ids: Sequence[str], device: torch.device | None = None,
                      batch_size: int = 16) -> list[dict]:
    """Score the ensemble of the runs' best checkpoints on their test split -> rows of seg.metrics
    (cases.csv columns: case_id, structure, gt_empty, pred_empty, dice, iou, hd, hd95, hd95_pooled, assd).

    The data are opened from the first run's stored config (seg.data.open_dataset, with its `cv` node); every
    member's split.json must list the same test cases (ModelError naming the run otherwise). Inference is
    seg.engine.inference.evaluate, the path of the runs' own test pass.
    """
    from seg.engine.inference import evaluate
    from seg.runtime import select_device

    if not run_ids:
        raise ModelError("an ensemble needs at least one run")
    device = device or select_device("auto")
    models = [model_of_run(uri, rid, device) for rid in run_ids]
    model = ensemble_model(models)
    config = models[0].config
    data = _open_test_data(json.dumps({"dataset": config["dataset"], "seed": int(config.get("seed", 0)),
                                       "cache": _cache_dir(config), "cv": config.get("cv")}, sort_keys=True))
    test = list(data.split["test"])
    for rid in run_ids:
        stored = _test_split(uri, rid)
        if stored is not None and stored != test:
            raise ModelError(f"run {rid}: its split.json lists other test cases than the data opened from run "
                             f"{run_ids[0]}'s config ({len(stored)} vs {len(test)}): not one test set, no ensemble")
    rows, _ = evaluate(model.net, data.test, data.class_names, device, model.dtype, model.num_classes,
                       distances=True, desc="ensemble", batch_size=batch_size)
    return rows


def members_key(run_ids: Sequence[str]) -> str:
    """The cache key of an ensemble: sha256 of its sorted member run ids, 16 hex digits."""
    return hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:16]


def ensemble_cases(uri: str, run_ids: Sequence[str], device: torch.device | None = None, cache: bool = True):
    """evaluate_ensemble as a DataFrame of cases.csv rows, cached on the first run as the artifacts
    `cv_ensemble/<key>/cases.csv` and `members.json` (key: members_key). -> (frame, "cached" | "computed")."""
    import pandas as pd

    from seg.metrics import CASE_COLUMNS
    from seg.tracking import MlflowClient, download_artifact

    key = members_key(run_ids)
    folder = f"{ARTIFACT_DIR}/{key}"
    owner = run_ids[0]
    if cache:
        with tempfile.TemporaryDirectory(prefix="segsweep-ens-") as tmp:
            try:
                members = json.loads(Path(download_artifact(uri, owner, f"{folder}/members.json", tmp)).read_text())
                if sorted(members.get("run_ids", [])) == sorted(run_ids):
                    frame = pd.read_csv(download_artifact(uri, owner, f"{folder}/cases.csv", tmp),
                                        dtype={"case_id": str, "structure": str})
                    return frame, "cached"
            except (LookupError, FileNotFoundError, ValueError, OSError):
                pass
    rows = evaluate_ensemble(uri, run_ids, device)
    frame = pd.DataFrame(rows, columns=list(CASE_COLUMNS))
    if cache:
        with tempfile.TemporaryDirectory(prefix="segsweep-ens-") as tmp:
            frame.to_csv(Path(tmp) / "cases.csv", index=False)
            (Path(tmp) / "members.json").write_text(json.dumps({"run_ids": list(run_ids), "key": key}, indent=1))
            try:
                client = MlflowClient(tracking_uri=uri)
                client.log_artifact(owner, str(Path(tmp) / "cases.csv"), folder)
                client.log_artifact(owner, str(Path(tmp) / "members.json"), folder)
            except Exception as exc:   # a read-only store: the result stands, it is only not cached
                log.warning("could not cache the ensemble's cases.csv on run %s: %s: %s", owner, type(exc).__name__, exc)
    return frame, "computed"
