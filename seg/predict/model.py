"""MODEL -> a trained network with its run's preprocessing: checkpoint file, MLflow run id, or
best:<experiment>:<metric> (see seg.predict); several (comma-separated, or best: of a cross-validation
configuration) make one fold ensemble (seg.predict.ensemble). Checkpoints load through seg.engine.checkpoint
(weights-only; the model through the allowlist of seg.models.build_model); the autocast dtype is
the run's own `amp` setting (seg.runtime.amp_dtype), not always fp16."""
from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from seg.data.base import Reader
from seg.data.datasets import UnknownDataset, predict_reader
from seg.data.transforms import transforms_pair
from seg.engine import checkpoint
from seg.engine.inference import fold_batchnorm
from seg.runtime import amp_dtype, memory_format, to_layout

log = logging.getLogger("seg.predict")

RUN_ID = re.compile(r"[0-9a-f]{32}")


class ModelError(ValueError):
    """MODEL cannot be resolved, loaded or trusted."""


# ---------------------------------------------------------------------------------------------
# the model: checkpoint file, MLflow run id, best:<experiment>:<metric>
# ---------------------------------------------------------------------------------------------

def reader_for(config: dict) -> Reader:
    """The intensity scaling and structure names of the checkpoint's dataset (its `dataset.source._target_`),
    from that dataset's module (`seg.data.datasets.predict_reader`: a closed lookup)."""
    try:
        return predict_reader(config)
    except UnknownDataset as err:
        raise ModelError(f"the checkpoint's {err}") from None


@dataclass
class Model:
    """A trained network with the preprocessing of its run."""

    net: torch.nn.Module
    config: dict
    num_classes: int
    image_size: int
    class_names: list[str]
    reader: Reader
    source: str                 # where it came from (checkpoint path / run id), for the log
    transform: object           # the run's evaluation transform: resize + its `transforms` normalisation
    amp: str = "auto"           # the run's amp setting (checkpoint "amp" / config.amp)
    dtype: torch.dtype | None = None   # its autocast dtype on this device (seg.runtime.amp_dtype)


def load_checkpoint(path: str | Path) -> dict:
    """seg.engine.checkpoint.load (weights-only) with ModelError naming the file; the config must hold
    a 'model' and a 'dataset' section."""
    try:
        ckpt = checkpoint.load(path)
    except checkpoint.CheckpointError as err:
        raise ModelError(str(err)) from None
    for key in ("model", "dataset"):
        if not isinstance(ckpt["config"].get(key), dict):
            raise ModelError(f"{path}: the checkpoint's config has no '{key}' section")
    return ckpt


def model_from_checkpoint(ckpt: dict, source: str, device: torch.device) -> Model:
    """Checkpoint dict -> Model on device, in eval mode (the architecture from config.model through the
    allowlist: seg.engine.checkpoint.build_from), with the run's amp setting and its BatchNorms folded for good
    (seg.engine.inference.fold_batchnorm: it only predicts)."""
    config = ckpt["config"]
    dataset = config["dataset"]
    num_classes, image_size = int(dataset["num_classes"]), int(dataset["image_size"])
    if int(dataset.get("in_channels", 1)) != 1:
        raise ModelError(f"{source}: the model takes {dataset['in_channels']} input channels; seg.predict "
                         "segments single-channel (grayscale) images")
    reader = reader_for(config)
    try:
        net = checkpoint.build_from(ckpt, source)
    except checkpoint.CheckpointError as err:
        raise ModelError(str(err)) from None
    amp = checkpoint.amp_of(ckpt)
    try:
        dtype = amp_dtype(amp, device)
    except ValueError as err:
        raise ModelError(f"{source}: the checkpoint's {err}") from None
    try:
        transform = transforms_pair(image_size, False, 0, (dataset.get("source") or {}).get("transforms"))[1]
    except (ValueError, TypeError) as err:
        raise ModelError(f"{source}: the config's dataset.source.transforms are invalid: {err}") from None
    names = reader.class_names
    if len(names) != max(num_classes - 1, 1):
        raise ModelError(f"{source}: {num_classes} classes in the config but the {reader.name} reader names "
                         f"{len(names)} structure(s) ({', '.join(names)})")
    net = to_layout(net.to(device), memory_format("auto", device, net, inference=True)).eval()  # by model, device
    fold_batchnorm(net)       # for good: this network only predicts (the forwards of validation and the test pass)
    return Model(net, config, num_classes, image_size, names, reader, source, transform, amp, dtype)


def best_run(uri: str, experiment: str, metric: str):
    """The run `best:<experiment>:<metric>[@KEY=VALUE...]` names, chosen on validation only.

    metric: `dice` / `iou` (meaning val/dice, val/iou) or `val/<name>`; test metrics are refused. Each
    `@KEY=VALUE` keeps runs whose tag KEY equals VALUE (`@sweep_id=<ID>` one sweep; default: every sweep).
    The configuration (model x loss x settings) with the best mean best/<metric> over its seeds, then its
    seed with the best best/<metric>: seg.report.runs.best_by_validation (smoke runs only if nothing else).
    """
    run, _ = _best(uri, experiment, metric)
    from seg.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri).get_run(run.run_id)


def best_runs(uri: str, experiment: str, metric: str) -> list[str]:
    """The run ids `best:<experiment>:<metric>[@KEY=VALUE...]` stands for: the validation-selected
    configuration as in `best_run`; for a cross-validation configuration (its runs have cv.folds) every run
    of it (each fold, and each seed), in fold then seed order (seg.predict ensembles them); otherwise its
    best seed's run alone."""
    run, config = _best(uri, experiment, metric)
    if config.is_cv:
        log.info("best:%s:%s is a cross-validation configuration: the ensemble of its %d run(s) (folds %s)",
                 experiment, metric, len(config.runs), ", ".join(config.folds))
        return [r.run_id for r in config.runs]
    return [run.run_id]


def _best(uri: str, experiment: str, metric: str):
    """(run, Config) of best:<experiment>:<metric>[@KEY=VALUE...] (see best_run)."""
    from seg.report.runs import ReportError, best_by_validation

    metric, *filters = metric.split("@")
    tags = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ModelError(f"best:{experiment}:{metric}@{item}: expected @KEY=VALUE filters, e.g. "
                             f"best:{experiment}:dice@sweep_id=2026-11-26_13-46-28")
        tags[key] = value
    monitor = metric if "/" in metric else f"val/{metric}"
    sweep = tags.pop("sweep_id", None)
    try:
        run, config = best_by_validation(uri, experiment, monitor, sweep_id=sweep, tags=tags)
    except ReportError as err:
        raise ModelError(f"best:{experiment}:{metric}: {err}") from None
    log.info("best:%s:%s -> run %s (%s) of %s, best/%s = %.4f (mean over %d run(s) %.4f)", experiment, metric,
             run.run_id, run.name, config.label, monitor, run.metrics[f"best/{monitor}"], len(config.runs),
             config.val(monitor))
    return run, config


def resolve_model(spec: str, device: torch.device, uri: str | None = None) -> Model:
    """MODEL argument (checkpoint path | run id | best:<experiment>:<metric> | several of them joined by
    commas) -> Model. Several models (a comma list, or best: of a cross-validation configuration: its
    fold runs) are one ensemble: the mean of their probabilities (seg.predict.ensemble)."""
    path = Path(spec).expanduser()
    if "," in spec and not path.exists():
        parts = [p.strip() for p in spec.split(",")]
        if not all(parts):
            raise ModelError(f"MODEL {spec!r}: an empty item in the comma-separated list of models")
        from seg.predict.ensemble import ensemble_model

        return ensemble_model([resolve_model(p, device, uri) for p in parts])
    if path.is_dir() and (path / "checkpoints" / "best.pt").is_file():    # a run's output folder
        path = path / "checkpoints" / "best.pt"
    if path.exists():
        return model_from_checkpoint(load_checkpoint(path), str(path), device)
    from seg.tracking import resolve_uri

    uri = resolve_uri(uri)
    try:
        return _model_from_mlflow(spec, device, uri)
    except ModelError:
        raise
    except Exception as err:   # the store itself: unreachable server, unreadable database, ...
        raise ModelError(f"MODEL {spec!r}: MLflow tracking store {uri} failed: {type(err).__name__}: {err}") from None


def _model_from_mlflow(spec: str, device: torch.device, uri: str) -> Model:
    looks_like_run = spec.startswith("best:") or RUN_ID.fullmatch(spec)
    from seg.tracking import sqlite_path

    db = sqlite_path(uri)
    if looks_like_run and db is not None and not db.is_file():
        raise ModelError(f"MODEL {spec!r}: the MLflow store {uri} does not exist (no runs logged there yet?); "
                         "set MLFLOW_TRACKING_URI or --tracking-uri to the store of your runs")
    if spec.startswith("best:"):
        experiment, sep, metric = spec[len("best:"):].rpartition(":")
        if not sep or not experiment or not metric:
            raise ModelError(f"MODEL {spec!r}: expected best:<experiment>:<metric>, e.g. best:phantom_xray:dice")
        run_ids = best_runs(uri, experiment, metric)
        if len(run_ids) > 1:     # a cross-validation configuration: its fold models, as one ensemble
            from seg.predict.ensemble import ensemble_model

            return ensemble_model([model_of_run(uri, rid, device) for rid in run_ids])
        run_id = run_ids[0]
    elif RUN_ID.fullmatch(spec):
        run_id = spec
    else:
        raise ModelError(f"MODEL {spec!r}: no such checkpoint file, and not an MLflow run id (32 hex digits) "
                         "or best:<experiment>:<metric>")
    return model_of_run(uri, run_id, device)


def model_of_run(uri: str, run_id: str, device: torch.device) -> Model:
    """The best checkpoint of an MLflow run -> Model (weights-only load, model allowlist)."""
    from seg.tracking import download_artifact

    with tempfile.TemporaryDirectory(prefix="segsweep-ckpt-") as tmp:
        try:
            local = download_artifact(uri, run_id, "checkpoints/best.pt", tmp)
        except (LookupError, FileNotFoundError) as err:
            raise ModelError(str(err)) from None
        return model_from_checkpoint(load_checkpoint(local), f"run {run_id}", device)
