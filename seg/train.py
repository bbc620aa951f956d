"""The plain-PyTorch AMP training loop: run(cfg) -> train_epoch / evaluate -> MLflow.

run(cfg): seed, build data / model / loss / optimizer / scheduler from their `_target_` nodes,
train with early stopping on the monitored validation metric, keep the weights of the best epoch
(checkpoints/best.pt), evaluate the test split on those weights, log everything through
seg.tracking. A failing run is recorded FAILED with its reason; in a multirun the sweep goes on.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from seg.config import build, flatten, scheduler_patience_warning
from seg.data.base import Case
from seg.metrics import CASE_COLUMNS, structure_rows, summarize
from seg.tracking import Tracker, kill_sweep_parent, runs_with_hash, sweep_parent
from seg.viz import write_overlay

log = logging.getLogger(__name__)


MONITORS = ("val/dice", "val/iou")
# top-level config keys that do not change what a run computes (see config_hash)
HASH_EXCLUDED = ("paths", "tracking", "device", "threads", "hydra", "resume", "debug", "n_jobs", "slurm",
                 "seeds", "class_weights")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: the run stops and is recorded FAILED."""


# ---------------------------------------------------------------------------------------------
# set-up helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(name: str) -> torch.device:
    """"auto" -> cuda if available, else mps, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device=auto or device=cpu")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """amp: auto (fp16 on CUDA, off elsewhere) | fp16 | bf16 | off -> autocast dtype or None."""
    choices = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "off": None}
    if mode not in choices:
        raise ValueError(f"amp={mode!r}; allowed values: {', '.join(choices)}")
    if mode == "auto":
        return torch.float16 if device.type == "cuda" else None
    return choices[mode]


def config_hash(resolved: dict, replace: Sequence[str]) -> str:
    """Hash of the settings that define a run's result, machine independent: not the paths, tracking,
    device, threads, nor the sweep mechanics (resume, debug, launcher settings, seeds: each seed is a run)."""
    keep = {k: v for k, v in resolved.items() if k not in HASH_EXCLUDED}
    text = json.dumps(keep, sort_keys=True, default=str)
    for i, path in enumerate(replace):
        text = text.replace(path, f"<path{i}>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hydra_context(cfg: DictConfig) -> dict:
    """Run dir, sweep id, multirun flag and overrides from Hydra; fallbacks when called without it."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return {"output_dir": Path(hc.runtime.output_dir), "multirun": multirun,
                "sweep_id": Path(hc.sweep.dir).name if multirun else "none",
                "sweep_dir": Path(hc.sweep.dir) if multirun else None,
                "overrides": " ".join(hc.overrides.task)}
    except ValueError:  # not under @hydra.main (tests, notebooks)
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        return {"output_dir": Path(cfg.paths.output) / "runs" / f"{stamp}_{cfg.tracking.run_name}",
                "multirun": False, "sweep_id": "none", "sweep_dir": None, "overrides": ""}


# ---------------------------------------------------------------------------------------------
# the loop


def train_epoch(model, loader, loss_fn, optimizer, scaler, device, dtype, accumulate: int = 1,
                grad_clip: float | None = None, limit: int | None = None, desc: str = "train") -> tuple[float, int]:
    """One pass over loader -> (mean loss, images seen). Raises NonFiniteLossError on NaN / inf."""
    model.train()
    batches = len(loader) if limit is None else min(limit, len(loader))
    total, seen = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, total=batches, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    for step, (x, y) in enumerate(bar):
        if step >= batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # (B, C, S, S), (B, S, S)
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            logits = model(x)                                                     # (B, K, S, S)
            loss = loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at {desc}, step {step}: stopping this run "
                                     "(lower the learning rate, enable grad_clip, or check the data)")
        scaler.scale(loss / accumulate).backward()
        if (step + 1) % accumulate == 0 or step + 1 == batches:
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        total += loss.item() * x.shape[0]
        seen += x.shape[0]
        bar.set_postfix(loss=f"{total / seen:.4f}")
    bar.close()
    return total / max(seen, 1), seen


@torch.no_grad()
def predict(model, case: Case, device, dtype, num_classes: int, batch_size: int = 16) -> np.ndarray:
    """Case image (D, C, S, S) -> label map (D, H0, W0) at the original size of case.label.

    Logits are resized back bilinearly before the threshold / argmax.
    """
    return _predict_images(model, case.image, case.label.shape[-2:], device, dtype, num_classes, batch_size)


def _predict_images(model, images: np.ndarray, out_size, device, dtype, num_classes: int,
                    batch_size: int = 16) -> np.ndarray:
    """Images (N, C, S, S) -> label maps (N, H0, W0), batch_size images per forward pass."""
    model.eval()
    labels = []
    for i in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device)
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            logits = model(x)                                                     # (d, K, S, S)
        logits = F.interpolate(logits.float(), size=tuple(out_size), mode="bilinear", align_corners=False)
        pred = (logits[:, 0] > 0) if num_classes == 1 else logits.argmax(1)       # (d, H0, W0)
        labels.append(pred.to(torch.uint8).cpu().numpy())
    return np.concatenate(labels)


def _batches(cases: Sequence[Case], batch_size: int):
    """Cases -> lists of cases predicted together: consecutive single-image 2D cases with the same
    original size, up to batch_size of them (one forward pass); a 3D case alone (its slices are batched)."""
    group: list[Case] = []
    for case in cases:
        alone = case.is_3d or case.image.shape[0] != 1
        if group and (alone or len(group) == batch_size or case.label.shape != group[0].label.shape):
            yield group
            group = []
        if alone:
            yield [case]
        else:
            group.append(case)
    if group:
        yield group


def evaluate(model, cases: Sequence[Case], class_names: Sequence[str], device, dtype, num_classes: int,
             distances: bool = True, desc: str = "eval", keep: int = 0,
             batch_size: int = 16) -> tuple[list[dict], list[tuple]]:
    """Score every case per structure -> (rows, up to `keep` (case, prediction) pairs with foreground).

    2D cases of one size are predicted batch_size at a time (one image per forward pass made the
    per-epoch validation the largest cost of the loop after the training step itself)."""
    rows, kept = [], []
    bar = tqdm(total=len(cases), desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    for group in _batches(cases, batch_size):
        images = group[0].image if len(group) == 1 else np.concatenate([c.image for c in group])
        labels = _predict_images(model, images, group[0].label.shape[-2:], device, dtype, num_classes, batch_size)
        preds = np.split(labels, np.cumsum([c.image.shape[0] for c in group])[:-1])
        for case, pred in zip(group, preds):
            pred_s, label_s = (pred, case.label) if case.is_3d else (pred[0], case.label[0])
            rows += structure_rows(case.case_id, pred_s, label_s, class_names, case.spacing, distances)
            if len(kept) < keep and case.label.any():
                kept.append((case, pred))
        bar.update(len(group))
    bar.close()
    return rows, kept


# ---------------------------------------------------------------------------------------------
# run


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a cluster pre-empting the job, `kill`) handled like Ctrl-C: the run ends KILLED."""


def _on_sigterm(signum, frame):
    raise Interrupted("SIGTERM")


def run(cfg: DictConfig) -> float:
    """Train one configuration, log it to MLflow, return the best monitored validation value.

    With resume=true (default) a configuration that already has a FINISHED run with the same
    config_hash is skipped (its value returned), and a FAILED / KILLED one is reopened and continued
    from its last checkpoint. A failure is recorded in MLflow (FAILED run, `failure_reason` tag,
    traceback.txt). A single run re-raises it; in a multirun the job returns NaN so the sweep goes on.
    Ctrl-C or SIGTERM ends the run KILLED (its last completed epoch is checkpointed) and stops.
    Every job leaves `job_status.json` in its output dir: seg.callbacks.SweepSummary reads them.
    """
    ctx = hydra_context(cfg)
    job = {"status": "RUNNING", "run_name": str(cfg.tracking.run_name), "overrides": ctx["overrides"],
           "tracking_uri": str(cfg.tracking.uri)}
    ctx["job"] = job
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        value = _run(cfg, ctx)
        job.update(status=job.get("outcome", "FINISHED"), value=value)
        return value
    except KeyboardInterrupt as exc:
        job.update(status="KILLED", reason=f"interrupted: {exc or 'KeyboardInterrupt'}")
        if job.get("parent_run_id"):
            kill_sweep_parent(job["tracking_uri"], job["parent_run_id"])
        raise
    except Exception as exc:
        job.update(status="FAILED", reason=f"{type(exc).__name__}: {exc}")
        if not ctx["multirun"]:
            raise
        log.exception("run %s FAILED (the sweep continues)", cfg.tracking.run_name)
        return math.nan
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _write_job_status(ctx["output_dir"], job)


def _write_job_status(out_dir: Path, job: dict) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "job_status.json").write_text(json.dumps(job, indent=1, default=str))
    except OSError as exc:  # never hide the run's own outcome
        log.warning("could not write %s: %s", out_dir / "job_status.json", exc)


def _previous_runs(cfg: DictConfig, chash: str) -> tuple[object | None, object | None]:
    """(a FINISHED run of this configuration, else the newest FAILED / KILLED / RUNNING one) in MLflow."""
    runs = runs_with_hash(cfg.tracking.uri, cfg.tracking.experiment, chash)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        return finished[0], None
    unfinished = [r for r in runs if r.info.status in ("FAILED", "KILLED", "RUNNING")]
    return None, (unfinished[0] if unfinished else None)


def _run(cfg: DictConfig, ctx: dict) -> float:
    out_dir: Path = ctx["output_dir"]
    job = ctx["job"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    dtype = amp_dtype(cfg.amp, device)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    chash = config_hash(resolved, [cfg.paths.cache, cfg.paths.root])
    job["config_hash"] = chash

    if ctx["multirun"]:  # every job of a sweep, skipped ones too, is listed by the sweep's parent run
        info_file = ctx["sweep_dir"] / "sweep.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        job["parent_run_id"] = sweep_parent(cfg.tracking.uri, cfg.tracking.experiment, ctx["sweep_id"],
                                            ctx["sweep_dir"], info)

    done, unfinished = _previous_runs(cfg, chash) if cfg.resume else (None, None)
    if done is not None:
        value = done.data.metrics.get(f"best/{cfg.trainer.monitor}", math.nan)
        log.info("skipped %s: already FINISHED as MLflow run %s (config_hash %s); resume=false trains it again",
                 cfg.tracking.run_name, done.info.run_id, chash)
        job.update(outcome="SKIPPED", run_id=done.info.run_id,
                   reason=f"already FINISHED as run {done.info.run_id} (sweep {done.data.tags.get('sweep_id', '?')})")
        return float(value)

    tags = {"model": cfg.model.name, "loss": cfg.loss.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
            "sweep_id": ctx["sweep_id"], "config_hash": chash, "profile": cfg.profile.name,
            "overrides": ctx["overrides"], "output_dir": str(out_dir)}
    if "parent_run_id" in job:
        tags["mlflow.parentRunId"] = job["parent_run_id"]
    resume_from = None
    if unfinished is not None:
        tags["resumed"] = int(unfinished.data.tags.get("resumed", "0")) + 1
        old_dir = unfinished.data.tags.get("output_dir")
        resume_from = Path(old_dir) / "checkpoints" / "last.pt" if old_dir else None
        log.info("resuming %s: MLflow run %s was %s; checkpoint %s", cfg.tracking.run_name,
                 unfinished.info.run_id, unfinished.info.status, resume_from)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.run_name, tags,
                      run_id=unfinished.info.run_id if unfinished is not None else None)
    job["run_id"] = tracker.run_id
    log.info("MLflow run %s (%s) in experiment %s; output %s", tracker.run_id, cfg.tracking.run_name,
             cfg.tracking.experiment, out_dir)
    with tracker:
        params = flatten(resolved)
        if unfinished is not None:  # params are immutable in MLflow: log only those the run lacks
            params = {k: v for k, v in params.items() if k not in unfinished.data.params}
        tracker.log_params(params)
        config_path = out_dir / "config.yaml"
        config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tracker.log_artifact(config_path)
        return _fit_and_test(cfg, tracker, out_dir, device, dtype, resolved, resume_from)


def _fit_and_test(cfg, tracker: Tracker, out_dir: Path, device, dtype, resolved: dict,
                  resume_from: Path | None = None) -> float:
    t = cfg.trainer
    if t.monitor not in MONITORS:
        raise ValueError(f"trainer.monitor={t.monitor!r}; allowed values: {', '.join(MONITORS)} (higher is better)")
    if t.accumulate < 1:
        raise ValueError(f"trainer.accumulate={t.accumulate}; expected an integer >= 1")
    if (warning := scheduler_patience_warning(cfg)) is not None: log.warning(warning)  # noqa: E701
    num_classes = int(cfg.dataset.num_classes)
    data = build(cfg.dataset.source, seed=cfg.seed)
    (out_dir / "split.json").write_text(json.dumps(data.split, indent=1))
    tracker.log_artifact(out_dir / "split.json")
    log.info("data: %d training samples, %d val cases, %d test cases, structures %s",
             len(data.train), len(data.val), len(data.test), data.class_names)

    model = build(cfg.model).to(device)
    loss_fn = build(cfg.loss).to(device)
    optimizer = build(cfg.optimizer, params=model.parameters())
    scheduler = build(cfg.scheduler, optimizer=optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    n_params = sum(p.numel() for p in model.parameters())
    tracker.log_metrics({"model/params": n_params})

    generator = torch.Generator().manual_seed(int(cfg.seed))
    loader = DataLoader(data.train, batch_size=t.batch_size, shuffle=True, num_workers=t.num_workers,
                        generator=generator, drop_last=len(data.train) > t.batch_size,
                        pin_memory=device.type == "cuda", persistent_workers=t.num_workers > 0,
                        worker_init_fn=_seed_worker)

    best_path = out_dir / "checkpoints" / "best.pt"
    last_path = out_dir / "checkpoints" / "last.pt"
    best_path.parent.mkdir(parents=True, exist_ok=True)
    state = {"epoch": -1, "best": -math.inf, "best_epoch": -1, "stale": 0, "train_time": 0.0, "images": 0}
    if resume_from is not None:
        state = _load_last(resume_from, best_path, model, optimizer, scheduler, scaler, generator, state)
        tracker.set_tags({"resumed_from_epoch": state["epoch"] + 1})
    best, best_epoch, stale = state["best"], state["best_epoch"], state["stale"]
    train_time, images = state["train_time"], state["images"]
    stopped = t.early_stopping and stale >= t.early_stopping
    for epoch in range(state["epoch"] + 1, 0 if stopped else t.epochs):
        start = time.perf_counter()
        train_loss, seen = train_epoch(model, loader, loss_fn, optimizer, scaler, device, dtype, t.accumulate,
                                       t.grad_clip, t.limit_train_batches, desc=f"epoch {epoch + 1}/{t.epochs}")
        epoch_train = time.perf_counter() - start
        train_time, images = train_time + epoch_train, images + seen
        rows, _ = evaluate(model, data.val, data.class_names, device, dtype, num_classes, distances=False,
                           desc="val")
        val = summarize(rows, data.class_names, metrics=("dice", "iou"))
        monitored = val[t.monitor.split("/", 1)[1]]
        metrics = {"train/loss": train_loss, "lr": optimizer.param_groups[0]["lr"],
                   "time/epoch_s": time.perf_counter() - start, "train/img_per_s": seen / epoch_train,
                   **{f"val/{k}": v for k, v in val.items() if not k.endswith(("_std", "_n")) and k != "n_cases"}}
        tracker.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step=epoch)
        score = -math.inf if math.isnan(monitored) else monitored
        if score > best or best_epoch < 0:
            best, best_epoch, stale = score, epoch, 0
            torch.save({"state_dict": model.state_dict(), "config": resolved, "epoch": epoch,
                        "monitor": t.monitor, "value": score}, best_path)
        else:
            stale += 1
        log.info("epoch %d/%d  train/loss %.4f  %s %.4f  (best %.4f @ %d)  %.1fs", epoch + 1, t.epochs,
                 train_loss, t.monitor, monitored, best, best_epoch + 1, metrics["time/epoch_s"])
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(score if math.isfinite(score) else 0.0)
            else:
                scheduler.step()
        torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(), "generator": generator.get_state(),
                    "rng": torch.get_rng_state(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
                    "stale": stale, "train_time": train_time, "images": images}, last_path)
        if cfg.debug.sigterm_after_epoch is not None and epoch + 1 == int(cfg.debug.sigterm_after_epoch):
            os.kill(os.getpid(), signal.SIGTERM)
        if t.early_stopping and stale >= t.early_stopping:
            log.info("early stopping: no %s improvement for %d epochs", t.monitor, stale)
            break

    # test on the best epoch's weights, not the last
    checkpoint = torch.load(best_path, map_location=device, weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    rows, kept = evaluate(model, data.test, data.class_names, device, dtype, num_classes, distances=True,
                          desc="test", keep=int(cfg.tracking.overlays))
    test = summarize(rows, data.class_names)
    final = {f"test/{k}": v for k, v in test.items() if not (isinstance(v, float) and math.isnan(v))}
    final.update({"best/epoch": best_epoch + 1, f"best/{t.monitor}": best, "time/train_s": train_time,
                  "time/img_per_s": images / max(train_time, 1e-9)})
    tracker.log_metrics(final)
    _write_cases(out_dir / "cases.csv", rows)
    tracker.log_artifact(out_dir / "cases.csv")
    tracker.log_artifact(best_path, "checkpoints")
    for case, pred in kept:
        d = int(np.argmax(case.label.reshape(case.label.shape[0], -1).sum(1)))  # slice with most foreground
        name = "_".join(Path(case.case_id).with_suffix("").parts).replace(" ", "_")
        png = write_overlay(out_dir / "overlays" / f"{name}.png", case.image[d, 0], case.label[d], pred[d],
                            max(num_classes - 1, 1))
        tracker.log_artifact(png, "overlays")
    log.info("test: dice %.4f  iou %.4f  hd95 %.2f  (best epoch %d); run %s", test["dice"], test["iou"],
             test["hd95"], best_epoch + 1, tracker.run_id)
    last_path.unlink(missing_ok=True)  # only needed to resume an unfinished run
    return float(best)


def _load_last(path: Path, best_path: Path, model, optimizer, scheduler, scaler, generator, state: dict) -> dict:
    """Restore the training state of an interrupted run from its last.pt (and copy its best.pt beside
    this run's); returns the loop state. A missing checkpoint means the run restarts from epoch 1."""
    if not path.is_file():
        log.warning("no checkpoint to resume from at %s: training this configuration from the start", path)
        return state
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    generator.set_state(ckpt["generator"])
    torch.set_rng_state(ckpt["rng"])
    old_best = path.parent / "best.pt"
    if old_best.is_file() and old_best.resolve() != best_path.resolve():
        shutil.copyfile(old_best, best_path)
    log.info("resumed from %s after epoch %d (best %.4f at epoch %d)", path, ckpt["epoch"] + 1, ckpt["best"],
             ckpt["best_epoch"] + 1)
    return {k: ckpt[k] for k in state}


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _write_cases(path: Path, rows: list[dict]) -> None:
    fields = list(CASE_COLUMNS)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
