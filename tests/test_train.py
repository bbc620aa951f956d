"""The training loop end to end: forward/backward for every model x loss x task, a tiny multirun
logged to MLflow, and the failure paths (NaN loss, missing dataset root)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import numpy as np
import torch

from seg import PROJECT_ROOT
from seg.config import build
from seg.data import open_dataset
from seg.tracking import search_runs
from tests.conftest import compose_cfg

MODELS = ["unet", "resunet", "transunet"]
LOSSES = ["bce", "focal", "dice", "bce_dice", "dice_focal"]
TASKS = ["phantom_xray", "phantom_cardiac"]              # MLflow experiments of the phantom runs
DATASET = {"phantom_xray": "covid_infection", "phantom_cardiac": "acdc"}   # their configs (root unset)
TINY = ["profile.image_size=32", "profile.epochs=1", "trainer.limit_train_batches=2", "tracking.overlays=1"]


@pytest.fixture(scope="module")
def batches(phantom_cache):
    """One real training batch per phantom task (read through the dataset readers)."""
    out = {}
    for task in TASKS:
        cfg = compose_cfg([f"dataset={DATASET[task]}", "profile.image_size=32"])
        data = open_dataset(cfg.dataset, seed=0, cache_dir=cfg.paths.cache)
        x, y = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4, shuffle=True)))
        out[task] = (cfg, x, y)
    return out


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("model", MODELS)
def test_forward_backward_every_model_loss_task(batches, model, loss, task):
    _, x, y = batches[task]
    cfg = compose_cfg([f"model={model}", f"loss={loss}", f"dataset={DATASET[task]}", "profile.image_size=32"])
    net, loss_fn = build(cfg.model), build(cfg.loss)
    logits = net(x)
    assert logits.shape == (x.shape[0], cfg.dataset.num_classes, 32, 32)
    value = loss_fn(logits, y)
    value.backward()
    assert torch.isfinite(value)
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def _run(args: list[str], tmp_path: Path, phantom_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "SEGSWEEP_CACHE": str(phantom_cache)}
    return subprocess.run([sys.executable, "run.py", *args, f"hydra.sweep.dir={tmp_path}/multirun",
                           f"hydra.run.dir={tmp_path}/run"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_tiny_multirun_logs_finished_runs(tmp_path, seeded_store, phantom_cache):
    # memory_format=channels_last (what memory_format=auto gives U-Net on CUDA), here on CPU through both model
    # families, TransUNet's token reshapes included
    proc = _run(["-m", "model=unet,transunet", "loss=dice", "memory_format=channels_last", *TINY], tmp_path,
                phantom_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [r for r in search_runs(f"sqlite:///{tmp_path}/mlflow.db", "phantom_xray")
            if r.data.tags.get("segsweep.parent") != "true"]
    assert sorted(r.info.run_name for r in runs) == ["transunet-dice-s0", "unet-dice-s0"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1 and runs[0].data.tags["sweep_id"] != "none"
    for r in runs:
        m, tags, params = r.data.metrics, r.data.tags, r.data.params
        for key in ("test/dice", "test/iou", "test/hd95", "test/dice_infection", "test_n/dice", "test_std/dice_infection", "val/dice"):
            assert key in m, key
        assert 0.0 <= m["test/dice"] <= 1.0 and m["test/hd95"] >= 0
        assert tags["model"] in ("unet", "transunet") and tags["loss"] == "dice" and tags["dataset"] == "covid_infection"
        assert len(tags["config_hash"]) == 16 and params["model.name"] == tags["model"]
        assert params["trainer.epochs"] == "1"
        artifacts = Path(r.info.artifact_uri.removeprefix("file://"))
        assert (artifacts / "config.yaml").is_file() and (artifacts / "cases.csv").is_file()
        assert (artifacts / "checkpoints" / "best.pt").is_file() and list((artifacts / "overlays").glob("*.png"))
        ckpt = torch.load(artifacts / "checkpoints" / "best.pt", weights_only=True)
        assert ckpt["config"]["model"]["name"] == tags["model"] and "state_dict" in ckpt
        convs = [w for w in ckpt["state_dict"].values() if w.dim() == 4 and w.shape[1] > 1 and w.shape[2] > 1]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                             for w in convs)          # the network trained in the layout asked for
        assert params["memory_format"] == "channels_last"


@pytest.mark.slow   # a full sweep of subprocess runs: make test-all
def test_nan_loss_fails_that_run_and_the_sweep_goes_on(tmp_path, seeded_store, phantom_cache):
    # plain SGD at lr 1e30 without clipping blows the weights up: the loss is NaN within a few steps
    proc = _run(["-m", "optimizer.lr=1e30,1e-3,1e-4", "optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=false",
                 "trainer.grad_clip=0", *TINY, "trainer.limit_train_batches=4"], tmp_path, phantom_cache)
    runs = [r for r in search_runs(f"sqlite:///{tmp_path}/mlflow.db", "phantom_xray")
            if r.data.tags.get("segsweep.parent") != "true"]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"], proc.stderr[-3000:]
    # Hydra logs to stdout; the summary names the failed job and why
    assert proc.returncode == 1 and "2 of 3 jobs FINISHED, 0 SKIPPED (already finished), 1 FAILED" in proc.stdout
    assert "FAILED   optimizer.lr=1e+30" in proc.stdout and "NonFiniteLossError" in proc.stdout
    assert "loss is nan" in failed[0].data.tags["failure_reason"].lower()
    assert failed[0].data.params["optimizer.lr"] == "1e+30"
    traceback = Path(failed[0].info.artifact_uri.removeprefix("file://")) / "traceback.txt"
    assert "NonFiniteLossError" in traceback.read_text()
    assert all("test/dice" in r.data.metrics for r in runs if r.info.status == "FINISHED")


def test_missing_dataset_root_names_path_and_layout(tmp_path, seeded_store, phantom_cache):
    missing = tmp_path / "no_such_dir"
    proc = _run([f"dataset.root={missing}", *TINY], tmp_path, phantom_cache)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0] and "Infection Segmentation Data" in errors[0]
    # the data are opened before an MLflow run is created: nothing is recorded for a wrong path
    assert search_runs(f"sqlite:///{tmp_path}/mlflow.db", "covid_infection") == []


def test_unknown_monitor_is_refused_with_the_allowed_values(tmp_path, seeded_store, phantom_cache):
    proc = _run(["trainer.monitor=val/loss", *TINY], tmp_path, phantom_cache)
    assert proc.returncode != 0
    assert "trainer.monitor='val/loss'" in proc.stderr and "val/dice, val/iou" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_phantom_tasks_are_not_trivial_after_one_epoch(tmp_path, seeded_store, phantom_cache, task):
    """DESIGN: after one epoch no model reaches Dice 0.9 on the phantom tasks (default cpu profile)."""
    proc = _run(["-m", "model=unet,resunet,transunet", f"dataset={DATASET[task]}", "profile.epochs=1"], tmp_path, phantom_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [r for r in search_runs(f"sqlite:///{tmp_path}/mlflow.db", task) if r.data.tags.get("segsweep.parent") != "true"]
    assert len(runs) == 3
    for r in runs:
        assert r.data.metrics["best/val/dice"] < 0.9, r.info.run_name
        assert r.data.metrics["test/dice"] < 0.9, r.info.run_name


@pytest.mark.slow
def test_default_cardiac_run_learns_every_structure(tmp_path, seeded_store, phantom_cache):
    """`python run.py dataset=acdc` with the cpu profile: per-structure metrics, each learnt."""
    proc = _run(["dataset=acdc"], tmp_path, phantom_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = search_runs(f"sqlite:///{tmp_path}/mlflow.db", "phantom_cardiac")
    m = run.data.metrics
    for metric in ("dice", "iou", "hd95"):
        for structure in ("rv", "myo", "lv"):
            assert f"test/{metric}_{structure}" in m
    assert m["test/dice_lv"] > 0.7 and m["test/dice_rv"] > 0.5 and m["test/dice_myo"] > 0.3
    assert m["test_n/cases"] == 20   # 10 test patients x (ED, ES), scored as 3D volumes


def test_best_checkpoint_is_the_best_epoch_not_the_last(tmp_path, seeded_store, phantom_cache):
    # the X-ray phantom: its 2D test pass is short (the ACDC one scores 3D volumes); best != last on purpose is
    # tests/engine/test_loop.py::test_best_pt_holds_the_peak_epoch_not_the_last
    proc = _run(["profile.image_size=32", "profile.epochs=4", "trainer.early_stopping=0",
                 "trainer.limit_train_batches=3", "tracking.overlays=0"], tmp_path, phantom_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (run,) = search_runs(uri, "phantom_xray")
    from mlflow import MlflowClient

    history = sorted(MlflowClient(uri).get_metric_history(run.info.run_id, "val/dice"), key=lambda m: m.step)
    values = [m.value for m in history]
    assert len(values) == 4
    best_epoch = values.index(max(values))                     # first epoch reaching the maximum
    ckpt = torch.load(Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints" / "best.pt",
                      weights_only=True)
    assert ckpt["epoch"] == best_epoch and ckpt["value"] == pytest.approx(max(values))
    assert run.data.metrics["best/epoch"] == best_epoch + 1
    assert run.data.metrics["best/val/dice"] == pytest.approx(max(values))


class _CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        return super().step(closure)


@pytest.mark.parametrize("accumulate,expected_steps", [(1, 5), (2, 3), (5, 1)])
def test_gradient_accumulation_steps(accumulate, expected_steps):
    from seg.engine.loop import train_epoch

    torch.manual_seed(0)
    data = [(torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))) for _ in range(5)]
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    _CountingSGD.steps = 0
    opt = _CountingSGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, seen = train_epoch(model, data, build(compose_cfg(["loss=bce"]).loss), opt, scaler, torch.device("cpu"),
                             None, accumulate=accumulate, grad_clip=1.0)
    assert _CountingSGD.steps == expected_steps and seen == 10 and loss > 0


def test_evaluate_batches_2d_cases_and_scores_each_like_predict():
    from seg.data.base import Case
    from seg.engine.inference import batches as _batches, evaluate, predict_case as predict

    rng = np.random.default_rng(0)
    def case(i, size, is_3d=False, d=1):
        return Case(f"c{i}", rng.standard_normal((d, 1, 32, 32)).astype(np.float32),
                    (rng.random((d, size, size)) > 0.5).astype(np.uint8), (1.0,) * (3 if is_3d else 2), is_3d)
    cases = [case(0, 40), case(1, 40), case(2, 40), case(3, 48), case(4, 30, True, 3), case(5, 48), case(6, 48)]
    groups = [[c.case_id for c in g] for g in _batches(cases, batch_size=2)]
    assert groups == [["c0", "c1"], ["c2", "c3"], ["c4"], ["c5", "c6"]]   # any sizes; a 3-slice volume alone
    assert [[c.case_id for c in g] for g in _batches(cases, batch_size=4)] == [["c0", "c1", "c2", "c3"],
                                                                                ["c4", "c5"], ["c6"]]

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 1, 1))
    rows, kept = evaluate(net, cases, ["fg"], torch.device("cpu"), None, 1, distances=False, keep=10, batch_size=4)
    assert [r["case_id"] for r in rows] == [c.case_id for c in cases]
    for c, (kept_case, pred) in zip(cases, kept):
        alone = predict(net, c, torch.device("cpu"), None, 1)
        assert kept_case is c and pred.shape == c.label.shape
        assert (pred == alone).mean() > 0.999          # same labels as one case at a time (float noise aside)


def test_the_test_pass_scores_the_best_epochs_weights_not_the_last(tmp_path, seeded_store, phantom_cache, monkeypatch):
    """In process, val Dice scripted to 0.2, 0.6, 0.4: the test split is scored with epoch 2's weights
    (those in best.pt), and best/epoch, best/val/dice say so."""
    import seg.train
    from seg.engine import checkpoint
    from seg.engine.loop import Hook

    values = iter([0.2, 0.6, 0.4])
    monkeypatch.setattr("seg.engine.loop.summarize",
                        lambda rows, names, metrics=("dice", "iou"): {"dice": (v := next(values)), "iou": v / 2})
    monkeypatch.setattr("seg.engine.loop.evaluate", lambda *a, **kw: ([], []))   # validation: scripted above

    class Snapshots(Hook):
        weights: dict = {}

        def on_checkpoint(self, ctx, improved):
            self.weights[ctx.state.epoch] = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}

    tested = {}
    real_test_pass = seg.train.test_pass

    def recording_test_pass(model, data, *args, **kw):   # scores one test case (the weights are what matter)
        tested.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_test_pass(model, SimpleNamespace(test=data.test[:1], class_names=data.class_names), *args, **kw)

    monkeypatch.setattr(seg.train, "test_pass", recording_test_pass)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg(["profile.image_size=32", "profile.epochs=3", "trainer.early_stopping=0",
                       "trainer.limit_train_batches=1", "tracking.overlays=0", f"tracking.uri={uri}",
                       f"paths.output={tmp_path}/outputs", "resume=false"])
    snaps = Snapshots()
    assert seg.train.run(cfg, hooks=[snaps]) == pytest.approx(0.6)
    (run,) = search_runs(uri, cfg.tracking.experiment)
    best = checkpoint.load(Path(run.data.tags["output_dir"]) / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and run.data.metrics["best/epoch"] == 2
    assert run.data.metrics["best/val/dice"] == pytest.approx(0.6)
    assert tested.keys() == snaps.weights[1].keys()
    for name, tensor in tested.items():
        assert torch.equal(tensor, snaps.weights[1][name]) and torch.equal(tensor, best["state_dict"][name]), name
    assert any(not torch.equal(tested[k], snaps.weights[2][k]) for k in tested)


def test_cpu_training_stays_contiguous_and_evaluation_runs_channels_last(tmp_path, seeded_store, phantom_cache,
                                                                         monkeypatch):
    """memory_format=auto on the CPU, U-Net: the training steps run on contiguous weights (the CPU's faster
    layout for training), validation and the test pass on channels_last ones (the faster one for inference),
    and best.pt holds the training layout. The run also sets the allocator policy (seg.runtime) once."""
    import seg.train
    from seg.engine import checkpoint
    from seg.engine.loop import Hook
    from seg.runtime import stored_layout

    class Layouts(Hook):
        seen: list = []

        def on_fit_start(self, ctx):
            ctx.model.register_forward_pre_hook(lambda m, args: self.seen.append((m.training, stored_layout(m))))

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg(["model=unet", "profile.image_size=32", "profile.epochs=2", "trainer.limit_train_batches=1",
                       "tracking.overlays=0", f"tracking.uri={uri}", f"paths.output={tmp_path}/outputs",
                       "resume=false", "device=cpu"])
    assert cfg.memory_format == "auto"
    probe = Layouts()
    malloc_calls = []
    monkeypatch.setattr(seg.train, "retain_freed_memory", lambda: malloc_calls.append(1) or True)
    seg.train.run(cfg, hooks=[probe])
    assert malloc_calls == [1]
    train = {layout for training, layout in probe.seen if training}
    evals = [layout for training, layout in probe.seen if not training]
    assert train == {torch.contiguous_format}
    assert len(evals) >= 3 and set(evals) == {torch.channels_last}      # 2 validations + the test pass
    (run,) = search_runs(uri, cfg.tracking.experiment)
    folder = Path(run.data.tags["output_dir"]) / "checkpoints"
    convs = [w for w in checkpoint.load(folder / "best.pt")["state_dict"].values() if w.dim() == 4 and w.shape[1] > 1]
    assert convs and all(w.is_contiguous() for w in convs)
