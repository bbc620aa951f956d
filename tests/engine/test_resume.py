"""Resume end to end (seg.train.run in-process, tiny CPU runs): a killed and resumed run equals the
uninterrupted one bitwise; a diverged run is FAILED and a resume recovers from its last finite state;
a damaged last.pt is set aside and no MLflow step is ever logged twice (issue 19, points 2 and 3)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from seg.engine.loop import NonFiniteError, NonFiniteLossError
from seg.tracking import search_runs
from seg.train import run
from tests.helpers.compose import compose_cfg

TINY = ["profile.image_size=32", "profile.epochs=3", "trainer.limit_train_batches=2", "trainer.early_stopping=0",
        "tracking.overlays=0", "device=cpu", "threads=1"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cfg(tmp: Path, store: str, *overrides: str):
    return compose_cfg([*TINY, f"tracking.uri=sqlite:///{tmp}/{store}.db", f"paths.output={tmp}/{store}", *overrides])


def _runs(tmp: Path, store: str) -> list:
    return search_runs(f"sqlite:///{tmp}/{store}.db", "phantom_xray")


def _history(tmp: Path, store: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(f"sqlite:///{tmp}/{store}.db")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_killed_and_resumed_run_equals_the_uninterrupted_one_bitwise(tmp_path, phantom_cache, workers):
    extra = f"trainer.num_workers={workers}"
    run(_cfg(tmp_path, "whole", extra))
    with pytest.raises(KeyboardInterrupt):     # no file written at an epoch's end: the SIGTERM writes epoch 2's state
        run(_cfg(tmp_path, "split", extra, "debug.sigterm_after_epoch=2", "trainer.checkpoint_every_s=3600"))
    (killed,) = _runs(tmp_path, "split")
    assert killed.info.status == "KILLED"
    folder = Path(killed.data.tags["output_dir"]) / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt"]      # one write: no last.prev.pt
    run(_cfg(tmp_path, "split", extra))
    (whole,), (split,) = _runs(tmp_path, "whole"), _runs(tmp_path, "split")
    assert split.info.run_id == killed.info.run_id and split.info.status == "FINISHED"
    assert split.data.tags["resumed_from_epoch"] == "2"
    for key in ("train/loss", "val/dice", "val/iou", "lr"):
        a, b = _history(tmp_path, "whole", whole.info.run_id, key), _history(tmp_path, "split", split.info.run_id, key)
        assert [s for s, _ in a] == [0, 1, 2] and a == b, key          # == on floats: bitwise
    tests = {k: v for k, v in whole.data.metrics.items() if k.startswith(("test/", "best/"))}
    assert tests and tests == {k: v for k, v in split.data.metrics.items() if k.startswith(("test/", "best/"))}
    assert len({v for k, v in _history(tmp_path, "whole", whole.info.run_id, "train/loss")}) == 3  # it trained


@pytest.mark.slow
def test_a_diverged_run_is_failed_naming_the_epoch_and_a_resume_recovers(tmp_path, phantom_cache):
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 2, step 1"):
        run(_cfg(tmp_path, "s", "debug.nan_loss_at_epoch=2"))
    (failed,) = _runs(tmp_path, "s")
    assert failed.info.status == "FAILED" and "loss is nan at epoch 2" in failed.data.tags["failure_reason"]
    last = torch.load(Path(failed.data.tags["output_dir"]) / "checkpoints" / "last.pt", weights_only=True)
    assert last["loop"]["epoch"] == 0 and all(torch.isfinite(t).all() for t in last["state_dict"].values()
                                              if t.is_floating_point())
    run(_cfg(tmp_path, "s"))                                  # the same configuration, without the fault
    (again,) = _runs(tmp_path, "s")
    assert again.info.run_id == failed.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["resumed_from_epoch"] == "1" and "failure_reason" not in again.data.tags
    assert [s for s, _ in _history(tmp_path, "s", again.info.run_id, "train/loss")] == [0, 1, 2]


@pytest.mark.slow
def test_the_diverging_sgd_of_the_probe_is_failed_not_finished(tmp_path, phantom_cache):
    """Issue 19 point 2: sgd lr=1e12, no clipping, bce, 1 epoch used to end FINISHED with NaN weights."""
    with pytest.raises(NonFiniteError) as err:
        run(_cfg(tmp_path, "s", "optimizer=sgd", "optimizer.lr=1e12", "trainer.grad_clip=null", "loss=bce",
                 "profile.epochs=1"))
    assert "epoch 1" in str(err.value)
    (failed,) = _runs(tmp_path, "s")
    assert failed.info.status == "FAILED" and "epoch 1" in failed.data.tags["failure_reason"]
    assert "test/dice" not in failed.data.metrics
    assert not (Path(failed.data.tags["output_dir"]) / "checkpoints" / "best.pt").exists()


@pytest.mark.slow
def test_a_truncated_last_checkpoint_resumes_from_the_previous_one_without_duplicated_steps(tmp_path, phantom_cache):
    with pytest.raises(KeyboardInterrupt):                      # last.pt written after every epoch
        run(_cfg(tmp_path, "s", "debug.sigterm_after_epoch=2", "trainer.checkpoint_every_s=0"))
    (killed,) = _runs(tmp_path, "s")
    folder = Path(killed.data.tags["output_dir"]) / "checkpoints"
    assert torch.load(folder / "last.prev.pt", weights_only=True)["loop"]["epoch"] == 0
    (folder / "last.pt").write_bytes(b"")                        # as a kill -9 during a write in place left it
    run(_cfg(tmp_path, "s"))
    runs = {r.info.run_id: r for r in _runs(tmp_path, "s")}
    assert len(runs) == 2 and runs[killed.info.run_id].info.status == "KILLED"
    (new,) = [r for r in runs.values() if r.info.run_id != killed.info.run_id]
    assert new.info.status == "FINISHED" and new.data.tags["resumes_run"] == killed.info.run_id
    assert "last.pt" in new.data.tags["resume_note"] and "set aside as last.pt.damaged" in new.data.tags["resume_note"]
    assert (folder / "last.pt.damaged").is_file()
    for run_id, steps in ((killed.info.run_id, [0, 1]), (new.info.run_id, [0, 1, 2])):
        for key in ("train/loss", "val/dice"):
            assert [s for s, _ in _history(tmp_path, "s", run_id, key)] == steps, (run_id, key)
    old = dict(_history(tmp_path, "s", killed.info.run_id, "train/loss"))
    assert dict(_history(tmp_path, "s", new.info.run_id, "train/loss"))[0] == old[0]   # epoch 1 copied, not retrained
