"""seg.engine.loop.fit: gradients off in validation and test, hooks in order, non-finite values stop the run."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from seg.data.base import Case
from seg.engine.loop import Fit, Hook, LoopState, NonFiniteLossError, NonFiniteWeightsError, fit, train_epoch
from seg.train import test_pass


class Recorder(torch.nn.Module):
    """A tiny conv net that records, for every forward pass, (training mode, grad enabled, inference mode)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(4, 1, 1))
        self.calls: list[tuple[bool, bool, bool]] = []

    def forward(self, x):                       # x (B, 1, S, S) -> logits (B, 1, S, S)
        self.calls.append((self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return self.net(x)


def _data(n_train: int = 4, n_val: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(0)
    train = [(torch.randn(2, 1, size, size, generator=g), torch.randint(0, 2, (2, size, size), generator=g))
             for _ in range(n_train)]
    rng = np.random.default_rng(0)
    cases = [Case(f"c{i}", rng.standard_normal((1, 1, size, size)).astype(np.float32),
                  (rng.random((1, size, size)) > 0.5).astype(np.uint8), (1.0, 1.0)) for i in range(n_val)]
    return train, cases


def _fit(model, train, cases, hooks=(), epochs=2, lr=0.1, **kw) -> Fit:
    loss = torch.nn.BCEWithLogitsLoss()
    return Fit(model=model, loader=train, val_cases=cases, class_names=["fg"],
               loss_fn=lambda logits, y: loss(logits[:, 0], y.float()),
               optimizer=torch.optim.SGD(model.parameters(), lr=lr), scheduler=None,
               scaler=torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), dtype=None,
               num_classes=1, epochs=epochs, hooks=list(hooks), **kw)


def test_validation_and_test_forwards_run_with_gradients_disabled():
    torch.manual_seed(0)
    model = Recorder()
    train, cases = _data()
    state = fit(_fit(model, train, cases, epochs=2))
    train_calls = [c for c in model.calls if c[0]]
    eval_calls = [c for c in model.calls if not c[0]]
    assert len(train_calls) == 2 * 4 and all(grad and not inf for _, grad, inf in train_calls)
    assert len(eval_calls) == 2 and all(not grad and inf for _, grad, inf in eval_calls)   # one batch per epoch
    assert state.epoch == 1 and state.steps == 8 and len(state.history) == 2
    model.calls.clear()
    rows, _ = test_pass(model, SimpleNamespace(test=cases, class_names=["fg"]), torch.device("cpu"), None, 1)
    assert len(rows) == 3 and model.calls and all(not t and not g and i for t, g, i in model.calls)


class Order(Hook):
    def __init__(self):
        self.events = []

    def on_fit_start(self, ctx):
        self.events.append("fit_start")

    def on_epoch_start(self, ctx):
        self.events.append(f"epoch_start {ctx.epoch}")

    def after_step(self, ctx, loss, images):
        self.events.append("step")

    def on_validation_end(self, ctx, val):
        self.events.append("val")

    def on_checkpoint(self, ctx, improved):
        self.events.append(f"checkpoint {ctx.state.epoch}")

    def on_epoch_end(self, ctx, metrics):
        self.events.append(f"epoch_end {sorted(k for k in metrics if k in ('train/loss', 'val/dice'))}")

    def on_fit_end(self, ctx):
        self.events.append("fit_end")


def test_hooks_are_called_in_the_documented_order_with_accumulation():
    torch.manual_seed(0)
    hook = Order()
    train, cases = _data(n_train=3)
    fit(_fit(Recorder(), train, cases, hooks=[hook], epochs=1, accumulate=2))
    assert hook.events == ["fit_start", "epoch_start 0", "step", "step", "val", "checkpoint 0",
                           "epoch_end ['train/loss', 'val/dice']", "fit_end"]   # 3 batches, accumulate 2: 2 steps


def test_resumed_state_trains_only_the_remaining_epochs():
    torch.manual_seed(0)
    hook = Order()
    train, cases = _data()
    state = LoopState(epoch=1, best=0.5, best_epoch=1, steps=8, history=[{"train/loss": 1.0}] * 2)
    fit(_fit(Recorder(), train, cases, hooks=[hook], epochs=3, state=state))
    assert [e for e in hook.events if e.startswith("epoch_start")] == ["epoch_start 2"]
    assert state.epoch == 2 and state.steps == 12 and len(state.history) == 3


def test_nan_weights_stop_the_run_naming_the_epoch_before_any_checkpoint():
    class Poison(Hook):
        def after_step(self, ctx, loss, images):
            if ctx.epoch == 1:
                with torch.no_grad():
                    ctx.model.net[2].bias.fill_(float("nan"))

    class Saves(Hook):
        epochs: list = []

        def on_checkpoint(self, ctx, improved):
            self.epochs.append(ctx.state.epoch)

    torch.manual_seed(0)
    train, cases = _data(n_train=1)
    saves = Saves()
    with pytest.raises(NonFiniteWeightsError, match=r"epoch 2 \(net\.2\.bias\)"):
        fit(_fit(Recorder(), train, cases, hooks=[Poison(), saves], epochs=3))
    assert saves.epochs == [0]                    # epoch 2's weights never reached a checkpoint


def test_nan_loss_names_the_epoch_and_step():
    train, _ = _data(n_train=2)
    model = Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 4, step 1"):
        train_epoch(model, train, lambda logits, y: logits.mean() * float("nan"), opt, scaler,
                    torch.device("cpu"), None, epoch=3)


@pytest.mark.parametrize("key,value,message", [
    ("monitor", "val/loss", "trainer.monitor='val/loss'; allowed values: val/dice, val/iou"),
    ("accumulate", 0, "trainer.accumulate=0; expected an integer >= 1"),
    ("grad_clip", -1.0, "trainer.grad_clip=-1.0; expected a positive max norm"),
    ("limit_batches", 0, "trainer.limit_train_batches=0; expected an integer >= 1"),
    ("epochs", 0, "trainer.epochs=0; expected an integer >= 1"),
])
def test_bad_trainer_settings_are_refused_naming_the_key(key, value, message):
    train, cases = _data(n_train=1)
    kw = {key: value}
    epochs = kw.pop("epochs", 1)
    with pytest.raises(ValueError) as err:
        fit(_fit(Recorder(), train, cases, epochs=epochs, **kw))
    assert message in str(err.value)


class Snapshots(Hook):
    """The model's weights at each checkpoint point (after that epoch's training), by epoch."""

    def __init__(self):
        self.weights: dict[int, dict] = {}

    def on_checkpoint(self, ctx, improved):
        self.weights[ctx.state.epoch] = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}


def _scripted_validation(monkeypatch, values):
    """seg.engine.loop's validation summary returns `values` in turn (val Dice; IoU = Dice / 2)."""
    it = iter(values)

    def summarize(rows, class_names, metrics=("dice", "iou")):
        v = next(it)
        return {"dice": v, "iou": v / 2, "n_cases": len(rows)}

    monkeypatch.setattr("seg.engine.loop.summarize", summarize)


@pytest.mark.parametrize("monitor,best_value", [("val/dice", 0.6), ("val/iou", 0.3)])
def test_best_pt_holds_the_peak_epoch_not_the_last(tmp_path, monkeypatch, monitor, best_value):
    """Val Dice 0.2, 0.6, 0.4: best.pt must hold epoch 2's weights and value, not epoch 3's (the last)."""
    from seg.engine import checkpoint
    from seg.engine.hooks import Checkpointer

    _scripted_validation(monkeypatch, [0.2, 0.6, 0.4])
    torch.manual_seed(0)
    train, cases = _data(n_train=2)
    snaps = Snapshots()
    saver = Checkpointer(tmp_path / "ckpt", {"amp": "off"}, None)
    state = fit(_fit(Recorder(), train, cases, hooks=[snaps, saver], epochs=3, monitor=monitor))
    assert state.best == pytest.approx(best_value) and state.best_epoch == 1 and state.stale == 1
    best = checkpoint.load(saver.best)
    assert best["epoch"] == 1 and best["value"] == pytest.approx(best_value) and best["monitor"] == monitor
    for name, tensor in best["state_dict"].items():
        assert torch.equal(tensor, snaps.weights[1][name]), name
    assert any(not torch.equal(best["state_dict"][k], snaps.weights[2][k]) for k in snaps.weights[2])
    last = checkpoint.load(saver.last)
    assert last["epoch"] == 2 and all(torch.equal(last["state_dict"][k], v) for k, v in snaps.weights[2].items())
    assert [h["val/dice"] for h in state.history] == [0.2, 0.6, 0.4]


def test_early_stopping_counts_epochs_without_improvement(monkeypatch):
    """Val Dice 0.5, 0.4, 0.45, 0.3, ...: with early_stopping=2 the run stops after epoch 3 (0.4, 0.45 < 0.5)."""
    _scripted_validation(monkeypatch, [0.5, 0.4, 0.45, 0.3, 0.9])
    torch.manual_seed(0)
    train, cases = _data(n_train=1)
    state = fit(_fit(Recorder(), train, cases, epochs=5, early_stopping=2))
    assert state.epoch == 2 and state.best == 0.5 and state.best_epoch == 0 and state.stale == 2
