"""fit(): the training loop, straight-line, with hook points that everything else attaches to.

One epoch (docs/design.md, "The loop"):

    on_epoch_start -> train_epoch (autocast, GradScaler, unscale before clipping,
    zero_grad(set_to_none=True), accumulation; after_step per optimizer step) -> weights finite?
    -> validation (seg.engine.inference.evaluate; every `val_every` epochs and the last) ->
    on_validation_end -> scheduler step -> on_checkpoint (best / last written) -> on_epoch_end
    (MLflow, fault injection) -> early stop

With val_every = N > 1, epochs N, 2N, ... and the last one are validated; only those can become
the best epoch, early stopping counts validated epochs without improvement (patience in validated
epochs), and ReduceLROnPlateau steps on validated epochs only; the other epochs still write last.pt
and log train/* (no val/*).

Hooks (subclass `Hook`, override what you need) are how logging, checkpoints, SIGTERM fault
injection and the benchmarks' timing attach to the loop; none of them changes what it computes.
`on_span(kind, start, end, info)` reports timed phases: "train" (info: images seen, seconds
waiting for the DataLoader), "eval" (info: "val"), "forward" / "metrics" (inside validation),
"log" (the on_epoch_end hooks).

A loss or weight that is not finite stops the run with NonFiniteLossError / NonFiniteWeightsError
naming the epoch and the cause; weights are checked before any checkpoint is written, so
checkpoints always hold finite weights.
"""
from __future__ import annotations

import gc
import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from seg.background import prefetched
from seg.engine.checkpoint import nonfinite
from seg.engine.inference import evaluate
from seg.metrics import summarize
from seg.schema import MONITORS    # one list: the config check and the loop

log = logging.getLogger(__name__)



class NonFiniteError(FloatingPointError):
    """A loss or weight became NaN or inf: the run stops and is recorded FAILED."""


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or inf."""


class NonFiniteWeightsError(NonFiniteError):
    """The model's weights (parameters or buffers) hold NaN or inf after an epoch's training."""


@dataclass
class LoopState:
    """Where the loop stands; saved in last.pt ("loop", "history") and restored on resume.

    epoch: the last completed epoch, 0-based (-1: none yet); best / best_epoch: the best monitored
    validation value and its epoch; stale: epochs without improvement; steps: optimizer steps taken;
    history: per completed epoch, the metrics logged for it (train/loss, val/*, lr, time/*).
    """

    epoch: int = -1
    best: float = -math.inf
    best_epoch: int = -1
    stale: int = 0
    train_time: float = 0.0
    images: int = 0
    steps: int = 0
    history: list[dict] = field(default_factory=list)

    def loop_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "history"}

    def record(self, epoch: int, monitored: float) -> tuple[bool, float]:
        """A validated epoch's monitored value -> (improved, score). The first validated epoch always
        improves; later ones only when strictly higher (a tie keeps the earlier epoch); a NaN value scores
        -inf (never better). Improved: best / best_epoch take the epoch and stale restarts at 0; else
        stale counts one more validated epoch without improvement."""
        score = -math.inf if math.isnan(monitored) else monitored
        improved = score > self.best or self.best_epoch < 0
        if improved:
            self.best, self.best_epoch, self.stale = score, epoch, 0
        else:
            self.stale += 1
        return improved, score

    def stopped_early(self, patience: int) -> bool:
        """Early stopping is on (patience > 0) and `patience` validated epochs in a row did not improve."""
        return bool(patience) and self.stale >= patience

    @classmethod
    def restore(cls, loop: dict, history: list[dict] | None) -> "LoopState":
        known = {k: loop[k] for k in cls.__dataclass_fields__ if k in loop and k != "history"}
        return cls(**known, history=list(history or []))


class Hook:
    """Override any of these; `ctx` is the running Fit (model, optimizer, scheduler, scaler, state, ...)."""

    def on_fit_start(self, ctx: "Fit") -> None: ...

    def on_epoch_start(self, ctx: "Fit") -> None: ...

    def after_step(self, ctx: "Fit", loss: float, images: int) -> None: ...

    def on_validation_end(self, ctx: "Fit", val: dict) -> None: ...

    def on_checkpoint(self, ctx: "Fit", improved: bool) -> None: ...

    def on_epoch_end(self, ctx: "Fit", metrics: dict) -> None: ...

    def on_fit_end(self, ctx: "Fit") -> None: ...

    def on_span(self, kind: str, start: float, end: float, info: Any) -> None: ...


def train_epoch(model, loader, loss_fn, optimizer, scaler, device, dtype, accumulate: int = 1,
                grad_clip: float | None = None, limit: int | None = None, desc: str = "train",
                epoch: int | None = None, on_step: Callable[[float, int], None] | None = None,
                stats: dict | None = None) -> tuple[float, int]:
    """One pass over loader -> (mean loss per image, images seen).

    x (B, C, S, S), y (B, S, S) per batch; one optimizer step per `accumulate` batches (and at the
    end); grad_clip: max global grad norm of the unscaled gradients (None / 0: off). on_step(loss,
    images) after each optimizer step; stats, if given, gets "steps" and "data_wait" (seconds spent
    waiting for the loader). Raises NonFiniteLossError naming the epoch and step.
    """
    model.train()
    batches = len(loader) if limit is None else min(limit, len(loader))
    total, seen, steps, wait = 0.0, 0, 0, 0.0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=batches, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    workers = getattr(loader, "num_workers", 0)
    it = prefetched(loader, batches, name="segsweep-batches") if workers == 0 else iter(loader)
    try:
        for step in range(batches):
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - t0
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # (B, C, S, S), (B, S, S)
            with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
                logits = model(x)                                                     # (B, K, S, S)
                loss = loss_fn(logits, y)
            if not torch.isfinite(loss):
                where = f"epoch {epoch + 1}, step {step + 1}" if epoch is not None else f"{desc}, step {step + 1}"
                raise NonFiniteLossError(f"loss is {loss.item()} at {where}: stopping this run (lower the learning "
                                         "rate, enable trainer.grad_clip, or check the data)")
            scaler.scale(loss / accumulate).backward()
            total += loss.item() * x.shape[0]
            seen += x.shape[0]
            if (step + 1) % accumulate == 0 or step + 1 == batches:
                if grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                if on_step is not None:
                    on_step(loss.item(), seen)
            bar.update(1)
            bar.set_postfix(loss=f"{total / seen:.4f}")
    finally:
        if workers == 0:
            it.close()              # stops the prefetching thread, also when the step raised
    bar.close()
    if stats is not None:
        stats.update(steps=steps, data_wait=wait)
    return total / max(seen, 1), seen


@dataclass
class Fit:
    """Everything one fit() works on; hooks read (and the checkpoint hook saves) it."""

    model: torch.nn.Module
    loader: Any
    val_cases: Sequence
    class_names: Sequence[str]
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    dtype: torch.dtype | None
    num_classes: int
    epochs: int
    monitor: str = "val/dice"
    accumulate: int = 1
    grad_clip: float | None = None
    limit_batches: int | None = None
    early_stopping: int = 0
    val_every: int = 1                  # validate epochs val_every, 2 * val_every, ... and the last
    val_batch_size: int = 32            # images (2D cases or slices of volumes) per validation forward pass
    eval_layout: torch.memory_format | None = None   # validation's layout (seg.runtime.memory_format, inference)
    state: LoopState = field(default_factory=LoopState)
    hooks: Sequence[Hook] = ()
    epoch: int = -1                     # the epoch running now (0-based)

    def emit(self, name: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, name)(self, *args)

    def span(self, kind: str, start: float, end: float, info: Any = None) -> None:
        for hook in self.hooks:
            hook.on_span(kind, start, end, info)


def check_settings(epochs: int, accumulate: int, grad_clip, monitor: str, early_stopping: int,
                   limit_batches, val_every: int = 1) -> None:
    """ValueError naming the trainer key and its allowed range."""
    if monitor not in MONITORS:
        raise ValueError(f"trainer.monitor={monitor!r}; allowed values: {', '.join(MONITORS)} (higher is better)")
    if int(accumulate) < 1:
        raise ValueError(f"trainer.accumulate={accumulate}; expected an integer >= 1")
    if int(epochs) < 1:
        raise ValueError(f"trainer.epochs={epochs}; expected an integer >= 1")
    if grad_clip is not None and not float(grad_clip) >= 0:
        raise ValueError(f"trainer.grad_clip={grad_clip}; expected a positive max norm, or null / 0 (off)")
    if int(early_stopping or 0) < 0:
        raise ValueError(f"trainer.early_stopping={early_stopping}; expected an integer >= 0 (0: off)")
    if limit_batches is not None and int(limit_batches) < 1:
        raise ValueError(f"trainer.limit_train_batches={limit_batches}; expected an integer >= 1 or null (all)")
    if int(val_every) < 1:
        raise ValueError(f"trainer.val_every={val_every}; expected an integer >= 1 (1: validate every epoch)")


def validation_due(epoch: int, val_every: int, epochs: int) -> bool:
    """Whether 0-based `epoch` is validated: every val_every-th epoch (the val_every-th, 2 x val_every-th, ...)
    and always the last one, so a run's final weights are scored."""
    return (epoch + 1) % val_every == 0 or epoch + 1 == epochs


@contextmanager
def frozen_heap():
    """The objects alive when the block starts are left out of Python's garbage collections inside it
    (gc.freeze) and handed back after it (gc.unfreeze), also when it raises.

    At fit's start these are the set-up's objects (the model, data, MLflow, Hydra, albumentations: a million
    and more in a benchmark process); they live through the fit. Left in the oldest generation, a full
    collection walks all of them: 0.55-0.66 s, single-threaded, in the middle of an epoch, at a moment the
    loop does not choose (the benchmark's loop section caught one in most runs, about 2 % of one model's
    loop / step ratio). Frozen, a full collection walks only what the fit made since. Cyclic garbage made
    inside the fit is still collected; the frozen objects become collectable again when the fit ends (a
    sweep running several jobs in one process does not keep them). The same call spares DataLoader workers,
    forked per epoch, from copying the memory pages a collection would write to (Python's gc.freeze docs)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def fit(ctx: Fit) -> LoopState:
    """Train from ctx.state (a fresh LoopState, or one restored from last.pt) to ctx.epochs or early stop,
    with the set-up's objects frozen out of garbage collection (frozen_heap).

    Returns the final LoopState. Raises NonFiniteError (FAILED run), KeyboardInterrupt (KILLED).
    """
    check_settings(ctx.epochs, ctx.accumulate, ctx.grad_clip, ctx.monitor, ctx.early_stopping, ctx.limit_batches,
                   ctx.val_every)
    with frozen_heap():
        return _fit(ctx)


def _fit(ctx: Fit) -> LoopState:
    st = ctx.state
    key = ctx.monitor.split("/", 1)[1]
    ctx.emit("on_fit_start")
    for epoch in range(st.epoch + 1, ctx.epochs):
        if st.stopped_early(ctx.early_stopping):
            break
        ctx.epoch = epoch
        ctx.emit("on_epoch_start")
        start = time.perf_counter()
        stats: dict = {}
        on_step = (lambda loss, seen: ctx.emit("after_step", loss, seen)) if ctx.hooks else None
        train_loss, seen = train_epoch(ctx.model, ctx.loader, ctx.loss_fn, ctx.optimizer, ctx.scaler, ctx.device,
                                       ctx.dtype, ctx.accumulate, ctx.grad_clip, ctx.limit_batches,
                                       desc=f"epoch {epoch + 1}/{ctx.epochs}", epoch=epoch, on_step=on_step,
                                       stats=stats)
        trained = time.perf_counter()
        ctx.span("train", start, trained, {"seen": seen, "data_wait": stats["data_wait"]})
        st.steps += stats["steps"]
        bad = nonfinite(list(ctx.model.named_parameters()) + list(ctx.model.named_buffers()))
        if bad:
            raise NonFiniteWeightsError(f"non-finite weights after the training of epoch {epoch + 1} "
                                        f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): stopping this "
                                        "run (lower the learning rate, enable trainer.grad_clip, or check the data)")
        validated = validation_due(epoch, ctx.val_every, ctx.epochs)
        val: dict = {}
        if validated:
            rows, _ = evaluate(ctx.model, ctx.val_cases, ctx.class_names, ctx.device, ctx.dtype, ctx.num_classes,
                               distances=False, desc="val", batch_size=ctx.val_batch_size, span=ctx.span,
                               layout=ctx.eval_layout)
            val = summarize(rows, ctx.class_names, metrics=("dice", "iou"))
            ctx.span("eval", trained, time.perf_counter(), "val")
            ctx.emit("on_validation_end", val)
        epoch_train = trained - start
        st.train_time += epoch_train
        st.images += seen
        metrics = {"train/loss": train_loss, "lr": ctx.optimizer.param_groups[0]["lr"],
                   "time/epoch_s": time.perf_counter() - start, "train/img_per_s": seen / max(epoch_train, 1e-9),
                   **{f"val/{k}": v for k, v in val.items() if not k.endswith(("_std", "_n")) and k != "n_cases"}}
        improved, monitored, score = False, math.nan, math.nan
        if validated:                   # only validated epochs compete for best and count towards early stopping
            monitored = val[key]
            improved, score = st.record(epoch, monitored)
        if ctx.scheduler is not None:
            if isinstance(ctx.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if validated:
                    ctx.scheduler.step(score if math.isfinite(score) else 0.0)
            else:
                ctx.scheduler.step()
        st.epoch = epoch
        st.history.append({k: float(v) for k, v in metrics.items()})
        log.info("epoch %d/%d  train/loss %.4f  %s %.4f  (best %.4f @ %d)  %.1fs", epoch + 1, ctx.epochs,
                 train_loss, ctx.monitor, monitored, st.best, st.best_epoch + 1, metrics["time/epoch_s"])
        ctx.emit("on_checkpoint", improved)
        logged = time.perf_counter()
        ctx.emit("on_epoch_end", metrics)
        ctx.span("log", logged, time.perf_counter(), epoch)
        if st.stopped_early(ctx.early_stopping):
            log.info("early stopping: no %s improvement for %d epochs", ctx.monitor, st.stale)
            break
    ctx.emit("on_fit_end")
    return st
