"""seg.engine.checkpoint: atomic writes, the previous last.pt kept, damaged files set aside, every RNG restored."""
from __future__ import annotations

import io
import os
import pickle
import random
import sys

import numpy as np
import pytest
import torch
from torch import nn

from seg.data.transforms import PairedDataset, build_transforms
from seg.engine import checkpoint


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"state_dict": {"w": torch.ones(2)}, "config": {}}, path)
    real_save = torch.save

    def dies_half_way(obj, fh):
        real_save(obj, fh)
        fh.truncate(10)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"state_dict": {"w": torch.zeros(2)}, "config": {}}, path)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["state_dict"]["w"], torch.ones(2))   # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]               # no temp file left


def test_last_is_kept_as_last_prev_and_job_status_is_written_whole(tmp_path):
    for value in (1.0, 2.0):
        checkpoint.save_atomic({"state_dict": {"w": torch.full((2,), value)}, "config": {}}, tmp_path / "last.pt",
                               keep_previous=tmp_path / "last.prev.pt")
    assert checkpoint.load(tmp_path / "last.pt")["state_dict"]["w"][0] == 2.0
    assert checkpoint.load(tmp_path / "last.prev.pt")["state_dict"]["w"][0] == 1.0
    checkpoint.write_text_atomic(tmp_path / "job_status.json", '{"status": "FINISHED"}')
    assert (tmp_path / "job_status.json").read_text() == '{"status": "FINISHED"}'


def _last(value: float, epoch: int) -> dict:
    return {"state_dict": {"w": torch.full((2,), value)}, "config": {}, "optimizer": {}, "loop": {"epoch": epoch}}


@pytest.mark.parametrize("damage,why", [("truncate", "corrupt or unreadable checkpoint"),
                                        ("nan", "holds non-finite weights (w)")])
def test_a_damaged_last_is_named_set_aside_and_the_previous_one_used(tmp_path, damage, why, caplog):
    torch.save(_last(1.0, 0), tmp_path / "last.prev.pt")
    if damage == "truncate":
        (tmp_path / "last.pt").write_bytes(b"")           # a kill -9 during a non-atomic write
    else:
        torch.save(_last(float("nan"), 1), tmp_path / "last.pt")
    ckpt, notes = checkpoint.resume_state(tmp_path)
    assert ckpt["loop"]["epoch"] == 0 and torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    assert len(notes) == 1 and why in notes[0] and str(tmp_path / "last.pt") in notes[0]
    assert "set aside as last.pt.damaged" in notes[0] and "damaged checkpoint" in caplog.text
    assert not (tmp_path / "last.pt").exists() and (tmp_path / "last.pt.damaged").is_file()
    (tmp_path / "last.prev.pt").write_bytes(b"junk")
    assert checkpoint.resume_state(tmp_path)[0] is None        # nothing good left: from scratch


def test_every_random_stream_continues_after_a_restore():
    transform = build_transforms(32, train=True, seed=3)

    class Data(PairedDataset):
        def __len__(self):
            return 4

        def load(self, index):
            rng = np.random.default_rng(index)
            return (rng.random((40, 40)) * 255).astype(np.uint8), (rng.random((40, 40)) > 0.5).astype(np.uint8)

    data = Data(transform)
    concat = torch.utils.data.ConcatDataset([data])
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    data[0]                                                    # move the transform's stream along
    saved = checkpoint.rng_state(gen, concat)

    def draws():
        return (torch.rand(3), np.random.rand(3), random.random(), torch.randperm(10, generator=gen),
                data[1][0])

    first = draws()
    blob = io.BytesIO()
    torch.save(saved, blob)
    blob.seek(0)
    restored = torch.load(blob, weights_only=True)             # the state survives a weights-only round trip
    data.transform = build_transforms(32, train=True, seed=3)  # a resumed run rebuilds (reseeds) its data
    checkpoint.set_rng_state(restored, gen, concat)
    second = draws()
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    data.transform = build_transforms(32, train=True, seed=3)
    assert not torch.equal(data[1][0], first[4])               # without the restore: epoch 1's augmentations again


def test_a_last_pt_written_before_schema_1_still_resumes(tmp_path):
    """A KILLED run of an older store left a flat last.pt (torch RNG and loader generator only)."""
    gen = torch.Generator().manual_seed(4)
    old = {"state_dict": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": []}, "scheduler": None,
           "scaler": {}, "generator": gen.get_state(), "rng": torch.get_rng_state(), "epoch": 2, "best": 0.4,
           "best_epoch": 1, "stale": 1, "train_time": 3.0, "images": 30}
    torch.save(old, tmp_path / "last.pt")
    ckpt, notes = checkpoint.resume_state(tmp_path)
    assert notes == [] and ckpt["loop"] == {"epoch": 2, "best": 0.4, "best_epoch": 1, "stale": 1, "train_time": 3.0,
                                            "images": 30}
    expected = torch.randperm(8, generator=torch.Generator().manual_seed(4))
    other = torch.Generator().manual_seed(99)
    checkpoint.set_rng_state(ckpt["rng"], other)
    assert torch.equal(torch.randperm(8, generator=other), expected) and ckpt["history"] is None


# --- the payloads' exact contents and load()'s refusals (mutation testing found them unchecked) -------------

def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    return net, opt


def test_best_and_last_payloads_hold_exactly_the_documented_keys_and_values():
    net, opt = _tiny()
    cfg = {"amp": "bf16", "model": {"name": "unet"}}
    best = checkpoint.best_payload(net, cfg, epoch=3, monitor="val/dice", value=0.75)
    assert set(best) == {"schema", "state_dict", "config", "amp", "epoch", "monitor", "value"}
    assert (best["schema"], best["amp"], best["epoch"], best["monitor"], best["value"]) == (1, "bf16", 3, "val/dice", 0.75)
    assert best["config"] is cfg and torch.equal(best["state_dict"]["weight"], net.weight)
    assert checkpoint.best_payload(net, {}, 0, "val/dice", 0.5)["amp"] == "auto"     # a config without amp

    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(5)
    loop, history = {"epoch": 4, "best": 0.7, "steps": 5}, [{"epoch": 0, "val/dice": 0.5}]
    last = checkpoint.last_payload(net, cfg, opt, sched, scaler, loop, history, gen, None)
    assert set(last) == {"schema", "state_dict", "config", "amp", "epoch", "optimizer", "scheduler", "scaler", "rng",
                         "loop", "history"}
    assert (last["schema"], last["amp"], last["epoch"]) == (1, "bf16", 4) and last["config"] is cfg
    assert last["optimizer"]["state"][0]["momentum_buffer"].shape == (2, 3)        # the optimizer's own state
    assert last["scheduler"] == sched.state_dict() and last["scaler"] == scaler.state_dict()
    assert torch.equal(last["rng"]["loader"], gen.get_state())
    assert last["loop"] == loop and last["loop"] is not loop and last["history"] == history
    assert last["history"][0] is not history[0]                                     # copies, not the live objects
    bare = checkpoint.last_payload(net, {}, opt, None, scaler, loop, [], None, None)   # a config without amp
    assert bare["scheduler"] is None and bare["amp"] == "auto"


def test_load_returns_the_dict_and_refuses_what_is_not_a_checkpoint_naming_the_file(tmp_path):
    good = {"state_dict": {"w": torch.ones(2)}, "config": {"amp": "off"}}
    torch.save(good, tmp_path / "good.pt")
    got = checkpoint.load(tmp_path / "good.pt")
    assert set(got) == {"state_dict", "config"} and torch.equal(got["state_dict"]["w"], torch.ones(2))
    assert got["state_dict"]["w"].device.type == "cpu"
    cases = {"missing.pt": (None, "checkpoint not found"),
             "text.pt": (b"not a pickle", "not a PyTorch checkpoint"),
             "no_config.pt": ({"state_dict": {}}, "is not a segsweep checkpoint"),        # config required by default
             "not_dict_config.pt": ({"state_dict": {}, "config": "x"}, "is not a segsweep checkpoint"),
             "no_state.pt": ({"config": {}}, "is not a segsweep checkpoint"),
             "list.pt": ([1, 2], "got list")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        with pytest.raises(checkpoint.CheckpointError) as err:
            checkpoint.load(path)
        assert message in str(err.value) and str(path) in str(err.value), name
    # a last.pt written before schema 1 has no config: accepted only when asked
    assert checkpoint.load(tmp_path / "no_config.pt", require_config=False) == {"state_dict": {}}
    with pytest.raises(checkpoint.CheckpointError, match="expected a dict with 'state_dict' and 'config'.*\\['config'\\]"):
        checkpoint.load(tmp_path / "no_state.pt", require_config=False)


@pytest.mark.parametrize("missing", ["optimizer", "loop"])
def test_a_last_pt_without_what_a_resume_needs_is_set_aside(tmp_path, missing):
    payload = {"state_dict": {"w": torch.ones(2)}, "config": {}, "optimizer": {}, "loop": {"epoch": 1}}
    del payload[missing]
    if missing == "loop":      # a schema-1 file without loop would be "upgraded": give it the new keys' marker
        payload["rng"] = None
    torch.save(payload, tmp_path / "last.pt")
    ckpt, notes = checkpoint.resume_state(tmp_path)
    if missing == "optimizer":
        assert ckpt is None and f"has no {missing!r}: not a resumable last.pt" in notes[0]
        assert (tmp_path / "last.pt.damaged").is_file()
    else:                      # no loop: read as a pre-schema-1 file and upgraded (loop from its flat keys)
        assert notes == [] and ckpt["loop"] == {}


def test_only_last_prev_left_by_a_kill_between_the_two_renames_is_resumed(tmp_path):
    """_write_atomic renames last.pt -> last.prev.pt, then the new file -> last.pt: a kill in between
    leaves only last.prev.pt, which must be found."""
    torch.save(_last(2.0, 5), tmp_path / "last.prev.pt")
    ckpt, notes = checkpoint.resume_state(tmp_path)
    assert notes == [] and ckpt["loop"]["epoch"] == 5 and torch.equal(ckpt["state_dict"]["w"], torch.full((2,), 2.0))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_checkpointer_keeps_the_previous_last_holds_every_resume_state_and_drops_a_superseded_run(tmp_path):
    from types import SimpleNamespace

    from seg.engine.hooks import Checkpointer
    from seg.engine.loop import LoopState

    net, opt = _tiny()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    gen = torch.Generator().manual_seed(11)
    data = PairedDataset(build_transforms(8, train=True, seed=3))
    old = tmp_path / "old_run"
    old.mkdir()
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        (old / name).write_bytes(b"x")
    saver = Checkpointer(tmp_path / "ckpt", {"amp": "off"}, gen, data, supersedes=old)
    state = LoopState()
    ctx = SimpleNamespace(model=net, optimizer=opt, scheduler=sched, scaler=torch.amp.GradScaler("cpu", enabled=False),
                          state=state, monitor="val/dice")
    state.epoch, state.best, state.best_epoch = 0, 0.5, 0
    saver.on_checkpoint(ctx, improved=True)
    saver.flush()                                               # the background write finished
    # the resumed-from run's last.pt / last.prev.pt are gone once this run has its own; its best.pt stays
    assert not (old / "last.pt").exists() and not (old / "last.prev.pt").exists() and (old / "best.pt").exists()
    first = checkpoint.load(saver.last)
    state.epoch = 1
    saver.on_checkpoint(ctx, improved=False)
    saver.flush()
    prev = checkpoint.load(saver.folder / "last.prev.pt")
    assert prev["epoch"] == 0 and checkpoint.load(saver.last)["epoch"] == 1 == checkpoint.load(saver.last)["loop"]["epoch"]
    assert checkpoint.load(saver.best)["epoch"] == 0            # not improved: best.pt untouched
    assert first["scheduler"]["last_epoch"] == 1 and first["scheduler"]["_last_lr"] == pytest.approx([0.05])
    assert torch.equal(first["rng"]["loader"], gen.get_state())
    assert len(first["rng"]["transforms"]) == 1 and first["rng"]["transforms"][0]["numpy"] == \
        data.transform.random_generator.bit_generator.state
    same = Checkpointer(tmp_path / "ckpt", {"amp": "off"}, gen, data, supersedes=tmp_path / "ckpt")
    same.on_checkpoint(ctx, improved=False)                     # resuming in its own folder deletes nothing
    same.flush()
    assert saver.last.exists() and (saver.folder / "last.prev.pt").exists()


def test_the_checkpoint_written_in_the_background_is_the_epochs_snapshot_and_a_failed_write_fails(
        tmp_path, monkeypatch):
    """on_checkpoint returns while the files are still being written; training changing the weights meanwhile
    does not reach them (the payload is a CPU snapshot); flush() waits, and raises a write's error once."""
    import threading
    from types import SimpleNamespace

    from seg.engine import hooks
    from seg.engine.loop import LoopState

    net, opt = _tiny()
    saver = hooks.Checkpointer(tmp_path / "run" / "checkpoints", {"amp": "off"}, None)   # made with its parents
    state = LoopState()
    state.epoch, state.best, state.best_epoch = 0, 0.5, 0
    ctx = SimpleNamespace(model=net, optimizer=opt, scheduler=None, scaler=torch.amp.GradScaler("cpu", enabled=False),
                          state=state, monitor="val/dice")
    real, gate = checkpoint.save_atomic, threading.Event()

    def held(obj, path, keep_previous=None):
        assert gate.wait(10)
        return real(obj, path, keep_previous)

    monkeypatch.setattr(checkpoint, "save_atomic", held)
    epoch_weights = {k: v.clone() for k, v in net.state_dict().items()}
    saver.on_checkpoint(ctx, improved=True)
    assert not saver.best.exists() and not saver.last.exists()     # still being written
    assert "segsweep-checkpoint" in [t.name for t in threading.enumerate()]   # named in stack dumps / py-spy
    with torch.no_grad():                                         # the next epoch trains on
        for p in net.parameters():
            p.add_(1.0)
    gate.set()
    saver.flush()
    for path in (saver.best, saver.last):
        stored = checkpoint.load(path)["state_dict"]
        assert stored.keys() == epoch_weights.keys()
        assert all(torch.equal(stored[k], epoch_weights[k]) for k in epoch_weights), path.name

    def full(obj, path, keep_previous=None):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "save_atomic", full)
    state.epoch = 1
    saver.on_checkpoint(ctx, improved=False)
    with pytest.raises(OSError, match=r"No space left on device: '.*last\.pt'"):
        saver.flush()
    saver.flush()                                                 # reported once
    assert checkpoint.load(saver.last)["epoch"] == 0              # the epoch before is still there
    monkeypatch.setattr(checkpoint, "save_atomic", real)
    saver.on_checkpoint(ctx, improved=False)                      # last.pt of epoch 1, the old one -> last.prev.pt
    saver.clean()                                                 # waits for that write, then removes both
    assert sorted(p.name for p in saver.folder.iterdir()) == ["best.pt"]
    saver.clean()                                                 # nothing left to remove: no error


def test_checkpoints_are_held_in_memory_between_writes_and_flush_writes_the_newest_epoch(tmp_path, monkeypatch):
    """trainer.checkpoint_every_s: an epoch's snapshots (best.pt when improved, last.pt) are held until every_s
    has passed since the last write; then the newest of each is written, best.pt before last.pt. flush() (fit's
    end, a run stopped or failing) writes what is held; clean() drops a held last.pt but writes a held best.pt."""
    from types import SimpleNamespace

    from seg.engine import hooks
    from seg.engine.loop import LoopState

    clock = [1000.0]
    monkeypatch.setattr(hooks.time, "monotonic", lambda: clock[0])
    order = []
    real = checkpoint.save_atomic

    def recording(obj, path, keep_previous=None):
        order.append((path.name, obj["epoch"]))
        return real(obj, path, keep_previous)

    monkeypatch.setattr(checkpoint, "save_atomic", recording)
    net, opt = _tiny()
    saver = hooks.Checkpointer(tmp_path / "ckpt", {"amp": "off"}, None, every_s=60)
    state = LoopState()
    ctx = SimpleNamespace(model=net, optimizer=opt, scheduler=None, scaler=torch.amp.GradScaler("cpu", enabled=False),
                          state=state, monitor="val/dice")

    def epoch(e: int, improved: bool, seconds: float) -> None:
        clock[0] += seconds
        state.epoch = e
        if improved:
            state.best, state.best_epoch = 0.1 * (e + 1), e
        with torch.no_grad():
            net.weight.fill_(float(e))                           # each epoch's weights are its number
        saver.on_checkpoint(ctx, improved)
        saver._writer.wait()                                     # let a write started here finish

    epoch(0, True, 20)
    epoch(1, True, 20)
    epoch(2, False, 19.5)                                        # 59.5 s after the start: nothing written yet
    assert order == [] and not any(saver.folder.iterdir())
    epoch(3, False, 0.5)                                         # 60 s: the newest best (epoch 1) and last (3)
    assert order == [("best.pt", 1), ("last.pt", 3)]
    assert torch.equal(checkpoint.load(saver.best)["state_dict"]["weight"], torch.full((2, 3), 1.0))
    assert torch.equal(checkpoint.load(saver.last)["state_dict"]["weight"], torch.full((2, 3), 3.0))
    epoch(4, True, 30)
    epoch(5, False, 10)                                          # 40 s since the write: held
    assert len(order) == 2
    saver.flush()                                                # as fit's end, SIGTERM or a failure does
    assert order[2:] == [("best.pt", 4), ("last.pt", 5)]
    assert checkpoint.load(saver.folder / "last.prev.pt")["epoch"] == 3 and checkpoint.load(saver.last)["epoch"] == 5
    saver.flush()                                                # nothing held: nothing written again
    epoch(6, True, 1)
    saver.clean()
    assert order[4:] == [("best.pt", 6)] and sorted(p.name for p in saver.folder.iterdir()) == ["best.pt"]
    assert torch.equal(checkpoint.load(saver.best)["state_dict"]["weight"], torch.full((2, 3), 6.0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_the_checkpoint_writer_runs_at_the_lowest_cpu_priority_and_the_training_thread_keeps_its_own(
        tmp_path, monkeypatch):
    """The writer thread is nice 19, so it takes idle CPU rather than the next epoch's training step; the
    calling (training) thread and the process keep their priority."""
    import threading
    from types import SimpleNamespace

    from seg.engine import hooks
    from seg.engine.loop import LoopState

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice()
    seen = []
    real = checkpoint.save_atomic

    def recording(obj, path, keep_previous=None):
        seen.append(nice())
        return real(obj, path, keep_previous)

    monkeypatch.setattr(checkpoint, "save_atomic", recording)
    net, opt = _tiny()
    saver = hooks.Checkpointer(tmp_path / "checkpoints", {"amp": "off"}, None)
    state = LoopState()
    state.epoch, state.best, state.best_epoch = 0, 0.5, 0
    saver.on_checkpoint(SimpleNamespace(model=net, optimizer=opt, scheduler=None, state=state, monitor="val/dice",
                                        scaler=torch.amp.GradScaler("cpu", enabled=False)), improved=True)
    saver.flush()
    assert seen == [19, 19]                                       # best.pt and last.pt
    assert nice() == before and os.getpriority(os.PRIO_PROCESS, 0) == before
    assert checkpoint.load(saver.last)["epoch"] == 0


def test_snapshot_copies_tensors_to_the_cpu_keeps_layout_and_state_dict_metadata():
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)).to(memory_format=torch.channels_last)
    sd = net.state_dict()
    cuda_like = [torch.arange(3)]                                 # rng["cuda"]: a list of tensors
    snap = checkpoint.snapshot({"state_dict": sd, "history": [{"a": 1.0}], "rng": (1, [2, 3]), "name": "x",
                                "states": cuda_like})
    assert snap["state_dict"]._metadata == sd._metadata and snap["state_dict"]._metadata is not sd._metadata
    assert all(snap["state_dict"]._metadata[k] is not v for k, v in sd._metadata.items())
    assert type(snap) is dict and type(snap["state_dict"]) is type(sd)       # OrderedDict stays one, dict too
    assert snap["rng"] == (1, [2, 3]) and snap["name"] == "x"
    cuda_like[0].add_(10)
    assert snap["states"][0].tolist() == [0, 1, 2]                # tensors inside lists are copied too
    w = snap["state_dict"]["0.weight"]
    assert torch.equal(w, sd["0.weight"]) and w.data_ptr() != sd["0.weight"].data_ptr()
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    sd["0.weight"].data.add_(1.0)
    assert not torch.equal(w, sd["0.weight"])                      # a copy, not a view


class _Touches:
    """Unpickling it makes a folder: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")      # torch notes the bare pickle's protocol 4
def test_load_refuses_pickled_code_naming_what_it_references_and_never_runs_it(tmp_path):
    marker = tmp_path / "ran"
    zipped, bare = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({"state_dict": {}, "config": {}, "x": _Touches(marker)}, zipped)   # torch.save's zip format
    bare.write_bytes(pickle.dumps({"state_dict": _Touches(marker)}, protocol=4))   # a bare pickle
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(zipped)
    assert str(err.value).startswith(f"refusing checkpoint {zipped}: it needs arbitrary pickled objects "
                                     f"(it references {os.mkdir.__module__}.mkdir)")  # the global it would call
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(bare)
    assert str(err.value).startswith(f"refusing checkpoint {bare}: it needs arbitrary pickled objects "
                                     "(a bare pickle, not a torch.save file)")
    assert not marker.exists()
    # bytes that are no pickle at all are not called malicious; the message says what the unpickler met
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(junk)
    assert str(err.value) == f"not a PyTorch checkpoint: {junk} (Unsupported operand 0)"


def test_load_stays_weights_only_when_the_environment_asks_torch_for_full_unpickling(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns torch.load's default to full unpickling; only an explicit
    weights_only=True resists it."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "config": {}, "x": _Touches(marker)}, tmp_path / "evil.pt")
    with pytest.raises(checkpoint.CheckpointError, match="refusing checkpoint"):
        checkpoint.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_load_puts_the_tensors_where_map_location_says(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "config": {}}, tmp_path / "w.pt")
    assert checkpoint.load(tmp_path / "w.pt", map_location="meta")["state_dict"]["w"].device.type == "meta"
    assert checkpoint.load(tmp_path / "w.pt")["state_dict"]["w"].device.type == "cpu"
