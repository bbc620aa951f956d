"""seg.engine.loop.fit: gradients off in validation and test, hooks in order, non-finite values stop the run."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from seg.data.base import Case
from seg.engine.loop import (Fit, Hook, LoopState, NonFiniteLossError, NonFiniteWeightsError, fit, train_epoch,
                             validation_due)
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


def test_fit_freezes_the_set_up_objects_out_of_garbage_collection_and_hands_them_back():
    """Objects alive at fit's start are frozen during it (a full collection would walk them all, stalling an
    epoch for over half a second in a benchmark process); cyclic garbage made inside the fit is still collected;
    after the fit, normal or raising, nothing stays frozen."""
    import gc
    import weakref

    class Cycle:
        pass

    class Watch(Hook):
        def __init__(self):
            self.frozen, self.collected = [], []

        def on_epoch_start(self, ctx):
            self.frozen.append(gc.get_freeze_count())
            junk = Cycle()
            junk.me = junk                                  # a reference cycle: only gc frees it
            ref = weakref.ref(junk)
            del junk
            gc.collect(0)                                   # the youngest generation, where the cycle is
            self.collected.append(ref() is None)

    before = Cycle()
    before.me = before
    alive = weakref.ref(before)
    train, cases = _data(n_train=1)
    watch = Watch()
    assert gc.get_freeze_count() == 0
    fit(_fit(Recorder(), train, cases, hooks=[watch], epochs=2))
    assert all(n > 1000 for n in watch.frozen), watch.frozen     # the interpreter's objects, the model, ...
    assert watch.collected == [True, True]
    assert gc.get_freeze_count() == 0
    del before
    gc.collect()                                    # unfrozen objects are in the oldest generation
    assert alive() is None                          # frozen during the fit, collectable after it

    class Boom(Hook):
        def on_epoch_end(self, ctx, metrics):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(_fit(Recorder(), train, cases, hooks=[watch, Boom()], epochs=2))
    assert watch.frozen[-1] > 1000 and gc.get_freeze_count() == 0


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


class Validations(Hook):
    """Records the epochs (0-based) whose validation ran and which checkpoints were flagged improved."""

    def __init__(self):
        self.validated, self.improved = [], []

    def on_validation_end(self, ctx, val):
        self.validated.append(ctx.epoch)

    def on_checkpoint(self, ctx, improved):
        self.improved.append(improved)


def test_val_every_validates_every_nth_epoch_and_the_last(tmp_path, monkeypatch):
    """val_every=2 over 5 epochs: validation after epochs 2, 4 and 5 (the last), scripted Dice 0.3, 0.7, 0.5.
    Only those compete for best: best = epoch 4 (0-based 3); best.pt holds its weights; stale counts
    validated epochs only (epoch 5 is one validated epoch without improvement: stale 1)."""
    from seg.engine import checkpoint
    from seg.engine.hooks import Checkpointer

    _scripted_validation(monkeypatch, [0.3, 0.7, 0.5])
    torch.manual_seed(0)
    train, cases = _data(n_train=1)
    seen, snaps = Validations(), Snapshots()
    saver = Checkpointer(tmp_path / "ckpt", {"amp": "off"}, None)
    state = fit(_fit(Recorder(), train, cases, hooks=[seen, snaps, saver], epochs=5, val_every=2))
    assert seen.validated == [1, 3, 4]
    assert seen.improved == [False, True, False, True, False]
    assert state.best == 0.7 and state.best_epoch == 3 and state.stale == 1 and state.epoch == 4
    assert ["val/dice" in h for h in state.history] == [False, True, False, True, True]
    best = checkpoint.load(saver.best)
    assert best["epoch"] == 3 and all(torch.equal(best["state_dict"][k], v) for k, v in snaps.weights[3].items())
    assert checkpoint.load(saver.last)["epoch"] == 4


def test_early_stopping_counts_only_validated_epochs(monkeypatch):
    """val_every=2, early_stopping=2, Dice 0.5, 0.4, 0.3 at epochs 2, 4, 6: two validated epochs without
    improvement (4 and 6) stop the run after epoch 6, not after epoch 3 as a count of all epochs would."""
    _scripted_validation(monkeypatch, [0.5, 0.4, 0.3, 0.9])
    torch.manual_seed(0)
    train, cases = _data(n_train=1)
    state = fit(_fit(Recorder(), train, cases, epochs=10, early_stopping=2, val_every=2))
    assert state.epoch == 5 and state.best == 0.5 and state.best_epoch == 1 and state.stale == 2


def test_val_every_steps_a_plateau_scheduler_only_on_validated_epochs(monkeypatch):
    _scripted_validation(monkeypatch, [0.5, 0.5])
    torch.manual_seed(0)
    model = Recorder()
    train, cases = _data(n_train=1)
    ctx = _fit(model, train, cases, epochs=4, val_every=2)
    steps = []
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(ctx.optimizer, mode="max", patience=0)
    original = sched.step
    sched.step = lambda metric: (steps.append(metric), original(metric))
    ctx.scheduler = sched
    fit(ctx)
    assert steps == [0.5, 0.5]


def test_val_every_below_one_is_rejected():
    train, cases = _data(n_train=1)
    with pytest.raises(ValueError, match=r"trainer.val_every=0; expected an integer >= 1"):
        fit(_fit(Recorder(), train, cases, epochs=2, val_every=0))


# --- the selection rules on their own (hand-made sequences; fit uses exactly these) ------------------------

def test_record_keeps_the_first_strictly_best_epoch_and_counts_stale_epochs():
    st = LoopState()
    seq = [(0, 0.5), (1, 0.7), (2, 0.7), (3, 0.6), (4, math.nan), (5, 0.71)]
    got = [st.record(epoch, value) for epoch, value in seq]
    assert [imp for imp, _ in got] == [True, True, False, False, False, True]
    assert [score for _, score in got] == [0.5, 0.7, 0.7, 0.6, -math.inf, 0.71]
    assert (st.best, st.best_epoch, st.stale) == (0.71, 5, 0)
    st = LoopState()
    st.record(0, 0.8)
    st.record(1, 0.8)                     # a tie keeps the earlier epoch and counts as stale
    st.record(2, 0.2)
    assert (st.best, st.best_epoch, st.stale) == (0.8, 0, 2)


def test_a_first_epoch_scoring_nan_is_best_until_a_real_value_comes():
    st = LoopState()
    assert st.record(0, math.nan) == (True, -math.inf) and (st.best_epoch, st.stale) == (0, 0)
    assert st.record(1, math.nan) == (False, -math.inf) and (st.best_epoch, st.stale) == (0, 1)
    assert st.record(2, 0.0) == (True, 0.0) and (st.best, st.best_epoch, st.stale) == (0.0, 2, 0)


def test_stopped_early_after_patience_stale_epochs_and_never_when_off():
    st = LoopState(stale=2)
    assert not st.stopped_early(3) and st.stopped_early(2) and st.stopped_early(1)
    assert not st.stopped_early(0) and not LoopState(stale=100).stopped_early(0)
    assert not LoopState(stale=0).stopped_early(1)


def test_validation_due_every_nth_epoch_and_always_the_last():
    assert [e for e in range(10) if validation_due(e, 3, 10)] == [2, 5, 8, 9]
    assert [e for e in range(6) if validation_due(e, 1, 6)] == list(range(6))
    assert [e for e in range(4) if validation_due(e, 5, 4)] == [3]
    assert [e for e in range(4) if validation_due(e, 2, 4)] == [1, 3]


def test_nonfinite_names_each_bad_tensor_and_no_finite_one_even_when_the_fused_norm_overflows():
    from seg.engine.checkpoint import nonfinite

    big = torch.full((4,), 3e38)                       # finite, but its sum of squares overflows float32
    tensors = [("a", torch.ones(3)), ("steps", torch.tensor(7)), ("big", big),
               ("half", torch.tensor([60000.0, 60000.0], dtype=torch.float16)), ("empty", torch.empty(0)),
               ("d", torch.tensor([1.0, 2.0], dtype=torch.float64))]
    assert nonfinite(tensors) == []                    # an overflowing fused norm alone names nothing
    assert nonfinite([]) == [] and nonfinite([("n", torch.tensor([1, 2]))]) == []
    bad = tensors + [("nan", torch.tensor([1.0, float("nan")])), ("inf64", torch.tensor([-math.inf]).double()),
                     ("inf16", torch.tensor([float("inf")], dtype=torch.float16))]
    assert nonfinite(bad) == ["nan", "inf64", "inf16"]
    assert nonfinite([("x", torch.zeros(5)), ("p", torch.nn.Parameter(torch.tensor([math.nan])))]) == ["p"]


def test_batches_read_ahead_by_a_thread_are_the_batches_and_random_draws_of_a_plain_loop():
    """A loader without workers is read one batch ahead by a thread (seg.background.prefetched): the epoch trains
    on the same batches in the same order, and the loader's shuffle and the augmentations' generators end where a
    plain loop over `limit` batches leaves them (last.pt saves them: a resumed run draws what an uninterrupted
    one would)."""
    import threading

    from torch.utils.data import DataLoader

    from seg.data.transforms import PairedDataset, build_transforms

    readers = set()

    class Shapes(PairedDataset):
        def __len__(self):
            return 24

        def load(self, index):
            readers.add(threading.current_thread().name)
            image = np.full((20, 20), 10 * index, np.uint8)
            image[5:15, 4:12] = 200
            return image, (image > 100).astype(np.uint8)

    def loader():
        return DataLoader(Shapes(build_transforms(16, train=True, seed=7)), batch_size=4, shuffle=True,
                          num_workers=0, generator=torch.Generator().manual_seed(3))

    plain = loader()
    it = iter(plain)
    expected = [next(it)[0] for _ in range(3)]                    # what a plain loop takes for limit=3
    seen, threads = [], set()

    class Net(Recorder):
        def forward(self, x):
            seen.append(x.clone())
            return super().forward(x)

    ahead = loader()
    readers.clear()
    model = Net()
    loss = torch.nn.BCEWithLogitsLoss()
    train_epoch(model, ahead, lambda logits, y: (threads.add(threading.current_thread().name),
                                                 loss(logits[:, 0], y.float()))[1],
                torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False),
                torch.device("cpu"), None, limit=3)
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert torch.equal(ahead.generator.get_state(), plain.generator.get_state())
    t_ahead, t_plain = ahead.dataset.transform, plain.dataset.transform
    assert t_ahead.random_generator.bit_generator.state == t_plain.random_generator.bit_generator.state
    assert t_ahead.py_random.getstate() == t_plain.py_random.getstate()
    assert threads == {"MainThread"} and readers == {"segsweep-batches"}         # the step here, the reading there
    assert "segsweep-batches" not in [t.name for t in threading.enumerate()]
    nan = lambda logits, y: loss(logits[:, 0], y.float()) * (float("nan") if len(seen) == 5 else 1.0)  # noqa: E731
    with pytest.raises(NonFiniteLossError, match="step 2") as err:     # err keeps the epoch's frame alive
        train_epoch(model, loader(), nan, torch.optim.SGD(model.parameters(), lr=0.1),
                    torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), None, epoch=0)
    assert err.value and "segsweep-batches" not in [t.name for t in threading.enumerate()]   # stopped, not left
