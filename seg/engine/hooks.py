"""The hooks seg.train attaches to fit(): checkpoints, MLflow logging, fault injection (docs/design.md)."""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path

import torch

from seg.background import BackgroundJob
from seg.engine import checkpoint
from seg.engine.loop import Fit, Hook

log = logging.getLogger(__name__)


class Checkpointer(Hook):
    """Writes best.pt (the monitored value improved) and last.pt (every epoch's resume state) atomically, the
    previous last.pt kept as last.prev.pt. Schema: seg.engine.checkpoint.

    on_checkpoint takes a CPU snapshot of the epoch's payloads (checkpoint.snapshot: training can no longer
    change them). Files are written by a background thread while the next epoch trains, one write at a time
    and in order, and at most every `every_s` seconds (trainer.checkpoint_every_s; 0: after every epoch): in
    between, the newest snapshots (best and last) are held in memory and replace each other. `flush()` writes
    what is held and waits for it, raising a write's error (a failed write fails the run, one epoch later at
    the latest); fit's end and seg.train call it before anything reads the files, also when fit raises: a
    run stopped by SIGTERM / Ctrl-C or failing keeps the last epoch it finished as last.pt. Only a process
    killed outright (SIGKILL, the machine lost) loses the epochs since the last write. best.pt is always
    written before the last.pt that names it. The writer thread runs at the lowest CPU priority
    (seg.background.background_thread_priority), so that it takes idle time rather than the training step's.

    supersedes: the checkpoint folder of the unfinished run this one resumes (another output dir): once this
    run has written its own last.pt, the old last.pt / last.prev.pt there are removed (nothing resumes from
    them any more; best.pt and set-aside *.damaged files stay)."""

    def __init__(self, folder: Path, config: dict, loader_generator: torch.Generator | None, dataset=None,
                 supersedes: Path | None = None, every_s: float = 0.0):
        self.folder = Path(folder)
        self.supersedes = Path(supersedes) if supersedes is not None else None
        self.config = config
        self.generator = loader_generator
        self.dataset = dataset
        self.every_s = float(every_s)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writer = BackgroundJob("segsweep-checkpoint", low_priority=True)
        self._held: dict[str, tuple] = {}           # "best" / "last" -> (snapshot, path, keep_previous), not written
        self._written_at = time.monotonic()         # when the last write started (or the run did)

    @property
    def best(self) -> Path:
        return self.folder / checkpoint.BEST

    @property
    def last(self) -> Path:
        return self.folder / checkpoint.LAST

    def on_checkpoint(self, ctx: Fit, improved: bool) -> None:
        self._writer.wait()                         # the previous write's error fails the run here
        st = ctx.state
        if improved:
            payload = checkpoint.best_payload(ctx.model, self.config, st.best_epoch, ctx.monitor, st.best)
            self._held["best"] = (checkpoint.snapshot(payload), self.best, None)
        payload = checkpoint.last_payload(ctx.model, self.config, ctx.optimizer, ctx.scheduler, ctx.scaler,
                                          st.loop_dict(), st.history, self.generator, self.dataset)
        self._held["last"] = (checkpoint.snapshot(payload), self.last, self.folder / checkpoint.PREV)
        if time.monotonic() - self._written_at >= self.every_s:
            self._write_held()

    def _write_held(self) -> None:
        """Start writing the held snapshots in the background: best.pt, then last.pt."""
        writes = [self._held[k] for k in ("best", "last") if k in self._held]
        if not writes:
            return
        old = None
        if "last" in self._held:
            old, self.supersedes = self.supersedes, None
        self._held = {}
        self._written_at = time.monotonic()
        self._writer.start(self._write, writes, old)

    def _write(self, writes: list, old: Path | None) -> None:
        for payload, path, prev in writes:
            checkpoint.save_atomic(payload, path, keep_previous=prev)
        if old is not None and old.resolve() != self.folder.resolve():
            for name in (checkpoint.LAST, checkpoint.PREV):
                if (old / name).exists():
                    (old / name).unlink(missing_ok=True)
                    log.info("removed %s: superseded by %s", old / name, self.last)

    def flush(self) -> None:
        """Write the held snapshots and wait until every write is on disk; raise a write's error, if one failed
        (a failed earlier write is raised before the held snapshots are written: they stay held)."""
        self._writer.wait()
        self._write_held()
        self._writer.wait()

    def on_fit_end(self, ctx: Fit) -> None:
        self.flush()

    def clean(self) -> None:
        """Remove last.pt / last.prev.pt (only needed to resume an unfinished run); a held best.pt is written."""
        self._held.pop("last", None)
        self.flush()
        for name in (checkpoint.LAST, checkpoint.PREV):
            (self.folder / name).unlink(missing_ok=True)


class MLflowLogger(Hook):
    """Logs each epoch's metrics (finite values) to the run at step = epoch (0-based).

    In fit the write runs in the background, as the checkpoint's does: on_epoch_end waits for the previous
    epoch's write, raising its error (a failed write fails the run, one epoch later at the latest), then
    starts this epoch's (Tracker.log_metrics(wait=False)); on_fit_end waits for the last one, and
    Tracker.end() for one still running when fit raised. The loop thread no longer waits for the store: a
    sqlite write of one epoch took 14 ms on 2 cores, 38 ms while the checkpoint writer held the GIL
    (docs/design.md, "The loop")."""

    def __init__(self, tracker):
        self.tracker = tracker

    def log_epoch(self, epoch: int, metrics: dict, wait: bool = True) -> None:
        self.tracker.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step=epoch, wait=wait)

    def on_epoch_end(self, ctx: Fit, metrics: dict) -> None:
        self.log_epoch(ctx.epoch, metrics, wait=False)      # waits for the previous epoch's write first

    def on_fit_end(self, ctx: Fit) -> None:
        self.tracker.flush()


class SigtermAfterEpoch(Hook):
    """debug.sigterm_after_epoch: SIGTERM to this process once epoch N (1-based) is checkpointed and
    logged, as a cluster pre-empting the job would (tests of resume)."""

    def __init__(self, epoch: int | None):
        self.epoch = None if epoch is None else int(epoch)

    def on_epoch_end(self, ctx: Fit, metrics: dict) -> None:
        if self.epoch is not None and ctx.epoch + 1 == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


class NanLossAtEpoch(Hook):
    """debug.nan_loss_at_epoch: the loss function returns NaN from epoch N (1-based) on, so the path
    of a diverging run (FAILED, checkpoints finite, resume from the last finite state) can be tested."""

    def __init__(self, epoch: int | None):
        self.epoch = None if epoch is None else int(epoch)
        self._loss = None

    def on_epoch_start(self, ctx: Fit) -> None:
        if self.epoch is None or ctx.epoch + 1 != self.epoch:
            return
        inner = ctx.loss_fn

        def nan_loss(logits, target):
            return inner(logits, target) * float("nan")

        ctx.loss_fn = nan_loss
