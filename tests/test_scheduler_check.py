"""The plateau scheduler's defaults act before early stopping, and seg.config warns when they cannot."""
from __future__ import annotations

import torch

from seg.config import build, scheduler_patience_warning
from tests.conftest import compose_cfg


def _first_cut(cfg) -> int | None:
    """Epoch (1-based) at which seg.train's loop, on a validation curve that never improves after epoch 1,
    first trains with a reduced LR; None when early stopping ends the run before that."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build(cfg.scheduler, optimizer=optimizer)
    best, stale = -1.0, 0
    for epoch in range(int(cfg.trainer.epochs)):
        if optimizer.param_groups[0]["lr"] < 1.0:
            return epoch + 1
        score = 0.5                                    # flat: improves only at the first epoch
        if score > best:
            best, stale = score, 0
        else:
            stale += 1
        scheduler.step(score)
        if cfg.trainer.early_stopping and stale >= cfg.trainer.early_stopping:
            return None
    return None


def test_default_plateau_cuts_the_lr_before_early_stopping():
    cfg = compose_cfg(["profile.epochs=40"])
    assert cfg.scheduler.patience == 5 and cfg.trainer.early_stopping == 10
    assert scheduler_patience_warning(cfg) is None
    assert _first_cut(cfg) == 8                      # epoch 1 sets best; stale epochs 2..7; cut after the 6th


def test_patience_that_cannot_act_is_warned_about_and_indeed_never_acts():
    for patience in (9, 10):
        cfg = compose_cfg(["profile.epochs=40", f"scheduler.patience={patience}"])
        warning = scheduler_patience_warning(cfg)
        assert warning is not None and f"scheduler.patience={patience}" in warning
        assert "trainer.early_stopping=10" in warning and "scheduler.patience <= 8" in warning
        assert _first_cut(cfg) is None
    cfg = compose_cfg(["profile.epochs=40", "scheduler.patience=8"])   # the largest patience that acts
    assert scheduler_patience_warning(cfg) is None and _first_cut(cfg) == 11


def test_without_early_stopping_the_bound_is_the_epoch_count_and_other_schedulers_pass():
    cfg = compose_cfg(["profile.epochs=6", "trainer.early_stopping=0"])
    assert "trainer.epochs=6" in scheduler_patience_warning(cfg)
    assert scheduler_patience_warning(compose_cfg(["scheduler=cosine"])) is None
    assert scheduler_patience_warning(compose_cfg(["scheduler=none"])) is None
