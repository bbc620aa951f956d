"""run(cfg): one configuration, end to end: build, fit, test, log (docs/design.md, "Training").

    check settings -> sweep bookkeeping (seg.sweep: config_hash, skip FINISHED, resume unfinished)
    -> MLflow run (seg.tracking) -> data (_open_data) -> model / loss / optimizer / scheduler from
    their `_target_` nodes -> seg.engine.loop.fit with the checkpoint, MLflow and fault-injection hooks
    -> test pass on the best epoch's weights (seg.engine.inference, the path seg.predict uses)
    -> metrics, cases.csv, overlays, best checkpoint as artifacts.

A run is FINISHED only if it took at least one optimizer step and its best weights are finite; a
non-finite loss or weight ends it FAILED naming the epoch and the cause. A failing run is recorded
FAILED with its reason; in a multirun the sweep goes on. Ctrl-C / SIGTERM end it KILLED.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from seg.config import build, cv_enabled, flatten, scheduler_patience_warning
from seg.data import open_dataset
from seg.engine import checkpoint
from seg.engine.hooks import Checkpointer, MLflowLogger, NanLossAtEpoch, SigtermAfterEpoch
from seg.engine.inference import evaluate
from seg.engine.loop import Fit, Hook, LoopState, NonFiniteWeightsError, fit
from seg.metrics import CASE_COLUMNS, summarize
from seg.schema import ConfigError, validate
from seg.runtime import (amp_dtype, memory_format, retain_freed_memory, seed_everything, seed_worker, select_device,
                         set_threads)
from seg.sweep import (HOST, config_hash, config_lock, holder_text, hydra_context, live_owner, plan_resume,
                       previous_runs, sweep_parent_id, write_job_status)
from seg.tracking import (NOTE_TAG, Tracker, describe_experiment, kill_sweep_parent, log_dataset_input, log_pyfunc_model,
                          provenance_tags, summary_metric_key, system_metrics, tidy_params)
from seg.viz import write_overlay

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a cluster pre-empting the job, `kill`) handled like Ctrl-C: the run ends KILLED."""


def _on_sigterm(signum, frame):
    raise Interrupted("SIGTERM")


def run(cfg: DictConfig, hooks: Sequence[Hook] = ()) -> float:
    """Train one configuration, log it to MLflow, return the best monitored validation value.

    With resume=true (default) a configuration that already has a FINISHED run with the same
    config_hash is skipped (its value returned), and a FAILED / KILLED one is continued from its
    last good checkpoint (seg.engine.checkpoint.resume_state). A failure is recorded in MLflow
    (FAILED run, `failure_reason` tag, traceback.txt); a single run re-raises it, in a multirun the
    job returns NaN so the sweep goes on. Ctrl-C or SIGTERM ends the run KILLED and stops. Every job
    leaves `job_status.json` in its output dir (seg.sweep.SweepSummary reads them). `hooks` are
    attached to the loop after the run's own (the benchmarks time the loop this way).
    """
    ctx = hydra_context(cfg)
    job = {"status": "RUNNING", "run_name": str(cfg.tracking.run_name), "overrides": ctx["overrides"],
           "tracking_uri": str(cfg.tracking.uri), "pid": os.getpid(), "host": HOST}
    ctx["job"] = job
    if ctx["multirun"]:   # RUNNING until the job records its outcome: a job whose process dies stays RUNNING,
        write_job_status(ctx["output_dir"], job)   # and the sweep summary (seg.sweep) ends its run
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        validate(cfg)           # before anything is created: a typo makes no run and no experiment
        value = _run(cfg, ctx, hooks)
        job.update(status=job.get("outcome", "FINISHED"), value=value)
        return value
    except KeyboardInterrupt as exc:
        job.update(status="KILLED", reason=f"interrupted: {str(exc) or type(exc).__name__}")
        if job.get("parent_run_id"):
            kill_sweep_parent(job["tracking_uri"], job["parent_run_id"])
        raise
    except Exception as exc:
        job.update(status="FAILED", reason=f"{type(exc).__name__}: {exc}")
        if not ctx["multirun"]:
            raise
        if isinstance(exc, ConfigError):
            log.error("job %s FAILED before it started: %s", cfg.tracking.run_name, exc)
            return math.nan
        log.exception("run %s FAILED (the sweep continues)", cfg.tracking.run_name)
        return math.nan
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        write_job_status(ctx["output_dir"], job)


def _open_data(cfg: DictConfig):
    """The run's dataset (seg.data.base.SegData): the one place training opens its data.

    `dataset.root` unset = the embedded phantom (seg.data.open_dataset); every validation and test file
    is read and checked here, before an MLflow run exists or epoch 1 starts.
    """
    return open_dataset(cfg.dataset, seed=cfg.seed, cache_dir=cfg.paths.cache, cv=cfg.get("cv"))


def _run(cfg: DictConfig, ctx: dict, hooks: Sequence[Hook]) -> float:
    out_dir: Path = ctx["output_dir"]
    job = ctx["job"]
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.threads)
    retain_freed_memory()          # a cpu-preset run is 10-15 % faster without the page faults (seg.runtime)
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    dtype = amp_dtype(cfg.amp, device)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    chash = config_hash(resolved, [cfg.paths.cache, cfg.paths.root])
    job["config_hash"] = chash
    if ctx["multirun"]:  # every job of a sweep, skipped ones too, is listed by the sweep's parent run
        job["parent_run_id"] = sweep_parent_id(cfg, ctx)
    # one writer per configuration: across processes the lock file, across machines the run's heartbeat
    with config_lock(cfg.tracking.uri, cfg.paths.output, chash) as (lock, holder):
        if holder is not None:
            return _skip_busy(cfg, job, chash, holder)
        return _run_locked(cfg, ctx, hooks, chash, resolved, device, dtype, lock)


def _skip_busy(cfg: DictConfig, job: dict, chash: str, owner: dict) -> float:
    """The configuration is being trained by another live job: SKIPPED, naming it (resume=true or not)."""
    reason = f"being trained by {holder_text(owner)}"
    log.info("skipped %s: %s (config_hash %s)", cfg.tracking.run_name, reason, chash)
    job.update(outcome="SKIPPED", reason=reason)
    if owner.get("run_id"):
        job["run_id"] = owner["run_id"]
    return math.nan


def _run_locked(cfg: DictConfig, ctx: dict, hooks: Sequence[Hook], chash: str, resolved: dict, device, dtype,
                lock) -> float:
    out_dir: Path = ctx["output_dir"]
    job = ctx["job"]
    done, unfinished = previous_runs(cfg.tracking.uri, cfg.tracking.experiment, chash) if cfg.resume else (None, None)
    if done is not None:
        value = done.data.metrics.get(f"best/{cfg.trainer.monitor}", math.nan)
        log.info("skipped %s: already FINISHED as MLflow run %s (config_hash %s); resume=false trains it again",
                 cfg.tracking.run_name, done.info.run_id, chash)
        job.update(outcome="SKIPPED", run_id=done.info.run_id,
                   reason=f"already FINISHED as run {done.info.run_id} (sweep {done.data.tags.get('sweep_id', '?')})")
        return float(value)
    if unfinished is not None and unfinished.info.status == "RUNNING":
        owner = live_owner(unfinished, float(cfg.tracking.get("stale_after_s", 300)))
        if owner is not None:       # another machine (or checkout) trains it now: its heartbeat is fresh
            return _skip_busy(cfg, job, chash, owner)
        log.warning("MLflow run %s of %s is RUNNING but its owner is gone (no heartbeat for %s s or its process "
                    "ended): resuming it", unfinished.info.run_id, cfg.tracking.run_name,
                    cfg.tracking.get("stale_after_s", 300))

    data = _open_data(cfg)      # bad data fails here: before an MLflow run is created or reopened
    tags = {"model": cfg.model.name, "loss": cfg.loss.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
            "sweep_id": ctx["sweep_id"], "config_hash": chash, "profile": cfg.profile.name,
            "overrides": ctx["overrides"], "output_dir": str(out_dir)}
    if cv_enabled(cfg):         # cross-validation: the report groups a configuration's folds by these
        tags.update({"cv_folds": cfg.cv.folds, "cv_fold": cfg.cv.fold, "cv_seed": cfg.cv.seed})
    if "parent_run_id" in job:
        tags["mlflow.parentRunId"] = job["parent_run_id"]
    tags.update(provenance_tags(device, cfg.threads))
    tags[NOTE_TAG] = _run_note(cfg, ctx)
    resume = plan_resume(cfg, unfinished, tags)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.run_name, tags,
                      run_id=resume["run_id"], heartbeat_s=cfg.tracking.get("heartbeat_s", 30))
    job["run_id"] = tracker.run_id
    lock.note(run_id=tracker.run_id)
    if ctx["multirun"]:
        write_job_status(out_dir, job)
    log.info("MLflow run %s (%s) in experiment %s; output %s", tracker.run_id, cfg.tracking.run_name,
             cfg.tracking.experiment, out_dir)
    describe_experiment(cfg.tracking.uri, cfg.tracking.experiment, _experiment_note(cfg))
    with tracker:
        params = run_params(resolved)
        if resume["run_id"] is not None:  # params are immutable in MLflow: log only those the run lacks
            params = {k: v for k, v in params.items() if k not in unfinished.data.params}
        tracker.log_params(params)
        config_path = out_dir / "config.yaml"
        config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tracker.log_artifact(config_path)
        with system_metrics(cfg.tracking.uri, tracker.run_id, bool(cfg.tracking.get("system_metrics", False))):
            return _fit_and_test(cfg, tracker, out_dir, device, dtype, resolved, resume, hooks, data)


def _fit_and_test(cfg, tracker: Tracker, out_dir: Path, device, dtype, resolved: dict, resume: dict,
                  extra_hooks: Sequence[Hook], data) -> float:
    t = cfg.trainer
    warning = scheduler_patience_warning(cfg)   # a plateau patience that cannot act before early stopping
    if warning is not None:
        log.warning(warning)
    num_classes = int(cfg.dataset.num_classes)
    (out_dir / "split.json").write_text(json.dumps(data.split, indent=1))
    tracker.log_artifact(out_dir / "split.json")
    source = cfg.dataset.get("root") or Path(cfg.paths.cache) / "phantom"   # the embedded phantom's cache
    log_dataset_input(cfg.tracking.uri, tracker.run_id, str(cfg.dataset.name), out_dir / "split.json", str(source),
                      {"train": len(data.train), "val": len(data.val), "test": len(data.test)})
    log.info("data: %d training samples, %d val cases, %d test cases, structures %s",
             len(data.train), len(data.val), len(data.test), data.class_names)

    model = build(cfg.model)
    layout = cfg.get("memory_format", "auto")
    model = model.to(device, memory_format=memory_format(layout, device, model))
    eval_layout = memory_format(layout, device, model, inference=True)   # auto: U-Net / ResU-Net NHWC on CPU too
    loss_fn = build(cfg.loss).to(device)
    optimizer = build(cfg.optimizer, params=model.parameters())
    scheduler = build(cfg.scheduler, optimizer=optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    tracker.log_metrics({"model/params": sum(p.numel() for p in model.parameters())})

    generator = torch.Generator().manual_seed(int(cfg.seed))
    # workers are not persistent: each epoch's workers are seeded from `generator`, whose state last.pt
    # keeps, so a resumed run draws the same augmentations as an uninterrupted one
    loader = DataLoader(data.train, batch_size=t.batch_size, shuffle=True, num_workers=t.num_workers,
                        generator=generator, drop_last=len(data.train) > t.batch_size,
                        pin_memory=device.type == "cuda", worker_init_fn=seed_worker)
    saver = Checkpointer(out_dir / "checkpoints", resolved, generator, data.train, supersedes=resume["folder"],
                         every_s=float(t.get("checkpoint_every_s") or 0))
    logger = MLflowLogger(tracker)
    state = LoopState()
    ckpt = resume["ckpt"]
    if ckpt is not None:
        state = LoopState.restore(*checkpoint.restore(ckpt, model, optimizer, scheduler, scaler, generator, data.train))
        old_best = resume["folder"] / checkpoint.BEST
        if old_best.is_file() and old_best.resolve() != saver.best.resolve():
            shutil.copyfile(old_best, saver.best)
        for epoch, metrics in enumerate(state.history):   # epochs the checkpoint holds that the run lacks
            if epoch > resume["logged"]:
                logger.log_epoch(epoch, metrics)
        tracker.set_tags({"resumed_from_epoch": state.epoch + 1})
        log.info("resumed after epoch %d (best %s %.4f at epoch %d)", state.epoch + 1, t.monitor, state.best,
                 state.best_epoch + 1)
    elif resume["folder"] is not None:
        tracker.set_tags({"resumed_from_epoch": 0})

    hooks = [saver, logger, SigtermAfterEpoch(cfg.debug.sigterm_after_epoch),
             NanLossAtEpoch(cfg.debug.get("nan_loss_at_epoch")), *extra_hooks]
    try:
        state = fit(Fit(model=model, loader=loader, val_cases=data.val, class_names=data.class_names,
                        loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, scaler=scaler, device=device,
                        dtype=dtype, num_classes=num_classes, epochs=int(t.epochs), monitor=t.monitor,
                        accumulate=int(t.accumulate), grad_clip=t.grad_clip, limit_batches=t.limit_train_batches,
                        early_stopping=int(t.early_stopping or 0), val_every=int(t.get("val_every") or 1),
                        eval_layout=eval_layout, state=state, hooks=hooks))
    except BaseException:
        # killed or failed mid-fit: the checkpoint written in the background is finished before the run is
        # recorded (last.pt is what a resume reads); a write error of its own is logged, the first one raised
        try:
            saver.flush()
        except Exception:
            log.exception("writing the last checkpoint failed as well")
        raise
    if state.steps == 0 or not saver.best.is_file():
        raise RuntimeError("the run took no optimizer step (check trainer.limit_train_batches and the training "
                           "set): nothing was trained, so it is not recorded as FINISHED")

    # test on the best epoch's weights, not the last
    best = checkpoint.load(saver.best, map_location=device)
    bad = checkpoint.nonfinite(best["state_dict"].items())
    if bad:
        raise NonFiniteWeightsError(f"the best checkpoint {saver.best} holds non-finite weights ({', '.join(bad[:3])})")
    model.load_state_dict(best["state_dict"])
    rows, kept = test_pass(model, data, device, dtype, num_classes, keep=int(cfg.tracking.overlays), hooks=hooks,
                           layout=eval_layout)
    test = summarize(rows, data.class_names)
    final = {summary_metric_key(k): v for k, v in test.items() if not (isinstance(v, float) and math.isnan(v))}
    final.update({"best/epoch": state.best_epoch + 1, f"best/{t.monitor}": state.best,
                  "time/train_s": state.train_time, "time/img_per_s": state.images / max(state.train_time, 1e-9)})
    tracker.log_metrics(final)
    _write_cases(out_dir / "cases.csv", rows)
    tracker.log_artifact(out_dir / "cases.csv")
    tracker.log_artifact(saver.best, "checkpoints")
    for case, pred in kept:
        d = int(np.argmax(case.label.reshape(case.label.shape[0], -1).sum(1)))  # slice with most foreground
        name = "_".join(Path(case.case_id).with_suffix("").parts).replace(" ", "_")
        png = write_overlay(out_dir / "overlays" / f"{name}.png", case.image[d, 0], case.label[d], pred[d],
                            max(num_classes - 1, 1))
        tracker.log_artifact(png, "overlays")
    log.info("test: dice %.4f  iou %.4f  hd95 %.2f  (best epoch %d); run %s", test["dice"], test["iou"],
             test["hd95"], state.best_epoch + 1, tracker.run_id)
    if cfg.tracking.get("log_model", True):
        size = int(cfg.dataset.image_size)   # input example: one raw slice (1, S, S), a ramp of pixel values
        example = np.linspace(0, 255, size * size, dtype=np.float32).reshape(1, size, size)
        log_pyfunc_model(cfg.tracking.uri, tracker.run_id, saver.best, example)
    saver.clean()                      # last.pt / last.prev.pt are only needed to resume an unfinished run
    if resume["folder"] is not None and resume["folder"].resolve() != saver.folder.resolve():
        for name in (checkpoint.LAST, checkpoint.PREV):
            (resume["folder"] / name).unlink(missing_ok=True)
    return float(state.best)


def run_params(resolved: dict) -> dict:
    """The MLflow params of a run: its flattened resolved config, tidied (seg.tracking.tidy_params). Without
    cross-validation (cv.folds null) the `cv.*` keys are left out, so such a run logs the params it logged
    before the `cv` node existed; with it, cv.folds / cv.fold / cv.seed are params (and tags cv_*)."""
    flat = flatten(resolved)
    if not cv_enabled(resolved):
        flat = {k: v for k, v in flat.items() if not k.startswith("cv.")}
    return tidy_params(flat)


def _run_note(cfg: DictConfig, ctx: dict) -> str:
    """The run's description (markdown, shown by the MLflow UI): what it trains, on what, from which sweep."""
    where = "the embedded phantom" if cfg.dataset.get("root") in (None, "") else f"`{cfg.dataset.root}`"
    fold = f", fold {cfg.cv.fold} of {cfg.cv.folds} (cv.seed {cfg.cv.seed})" if cv_enabled(cfg) else ""
    lines = [f"**{cfg.model.name} + {cfg.loss.name}** on {cfg.dataset.name} ({where}), seed {cfg.seed}{fold}, "
             f"profile {cfg.profile.name}: {cfg.trainer.epochs} epoch(s) at {cfg.dataset.image_size} px, "
             f"optimizer {cfg.optimizer.get('name', '?')} lr {cfg.optimizer.get('lr', '?')}.",
             f"Selection metric: best `{cfg.trainer.monitor}`; test metrics under `test/` (counts `test_n/`, "
             "spreads `test_std/`)."]
    if ctx["multirun"]:
        lines.append(f"Sweep {ctx['sweep_id']} (parent run); overrides: `{ctx['overrides'] or '-'}`.")
    return "\n\n".join(lines)


def _experiment_note(cfg: DictConfig) -> str:
    """The experiment's description: the task, the dataset and where its published numbers come from
    (seg.data.datasets.references)."""
    from seg.data.datasets import references

    phantom = cfg.dataset.get("root") in (None, "")
    lines = [f"Task: segmentation of {cfg.dataset.name} ({int(cfg.dataset.num_classes) - 1 or 1} foreground "
             f"structure(s)), model x loss comparisons; one run per configuration and seed.",
             "Data: " + ("the embedded phantom (synthetic images; its numbers say nothing about real data)."
                         if phantom else f"{cfg.dataset.root}.")]
    published = references(str(cfg.dataset.name))
    if published.references:
        lines.append("Published numbers (on " + (published.real_data or "the real data set") + "): "
                     + "; ".join(f"{r.method} ({r.source})" for r in published.references) + ".")
        if published.not_included:
            lines.append(f"Not included: {published.not_included}.")
    else:
        lines.append("Published numbers: none recorded for this dataset.")
    lines.append("Compare with `python -m seg.report`; the parent run of each sweep holds its summary table, "
                 "heatmap and HTML report.")
    return "\n\n".join(lines)


def test_pass(model, data, device, dtype, num_classes: int, keep: int = 0, hooks: Sequence[Hook] = (),
              layout: torch.memory_format | None = None):
    """The test split through seg.engine.inference.evaluate (distances included, forward passes in `layout`)
    -> (rows, kept).

    The same inference path as validation and seg.predict; hooks get an "eval" span with info "test"."""
    start = time.perf_counter()

    def span(kind, s, e, info):
        for hook in hooks:
            hook.on_span(kind, s, e, info)

    rows, kept = evaluate(model, data.test, data.class_names, device, dtype, num_classes, distances=True,
                          desc="test", keep=keep, span=span, layout=layout)
    span("eval", start, time.perf_counter(), "test")
    return rows, kept


test_pass.__test__ = False    # not a pytest test


def _write_cases(path: Path, rows: list[dict]) -> None:
    fields = list(CASE_COLUMNS)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
