"""MLflow as the dashboard (issue 15): provenance on every run, a tidy metric / param namespace, a parent
run named after its study that holds the sweep's comparison, each run's model as an MLflow pyfunc whose
predictions are seg.predict's, and the split as a dataset input."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seg import PROJECT_ROOT
from seg.tracking import (UI_ORDER_BY, provenance_tags, summary_metric_key, sweep_title, tidy_params, ui_url)

TINY = ["profile.image_size=32", "profile.epochs=1", "trainer.limit_train_batches=2", "tracking.overlays=1"]


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


# ----------------------------------------------------------------------------------------------------
# the pieces

@pytest.mark.parametrize("key, name", [("dice", "test/dice"), ("dice_lv", "test/dice_lv"),
                                       ("hd95_pooled", "test/hd95_pooled"), ("dice_n", "test_n/dice"),
                                       ("dice_lv_n", "test_n/dice_lv"), ("n_cases", "test_n/cases"),
                                       ("hd95_pooled_infection_std", "test_std/hd95_pooled_infection"),
                                       ("fpr_empty", "test/fpr_empty")])
def test_summary_keys_map_to_one_prefix_per_kind(key, name):
    assert summary_metric_key(key) == name


@pytest.mark.parametrize("enabled", [True, False])
def test_system_metrics_switch_logs_cpu_and_memory_into_the_run(tmp_path, seeded_store, enabled):
    """tracking.system_metrics=true: MLflow's monitor samples the machine into the run as system/*; off
    (the default), the run holds no system metric."""
    import time

    from mlflow import MlflowClient

    from seg.tracking import system_metrics

    uri = seeded_store
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sysm", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    with system_metrics(uri, run_id, enabled, interval_s=0.2):
        time.sleep(1.0)
    metrics = client.get_run(run_id).data.metrics
    found = {k for k in metrics if k.startswith("system/")}
    if not enabled:
        assert found == set()
        return
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= found
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0
    import psutil

    total_mb = psutil.virtual_memory().total / 1e6
    assert 0.0 < metrics["system/system_memory_usage_megabytes"] <= total_mb


def test_params_lose_targets_and_machine_paths_and_gain_headlines():
    flat = {"model._target_": "seg.models.UNet", "model.name": "unet", "loss.name": "dice", "dataset.name": "acdc",
            "optimizer.name": "adam", "optimizer.lr": 0.001, "trainer.epochs": 3, "dataset.image_size": 64,
            "seed": 1, "paths.root": "/home/x/proj", "paths.cache": "/home/x/cache", "tracking.uri": "sqlite:///x",
            "dataset.source._target_": "seg.data.datasets.acdc.open", "trainer.batch_size": 8}
    out = tidy_params(flat)
    assert out == {"model.name": "unet", "loss.name": "dice", "dataset.name": "acdc", "optimizer.name": "adam",
                   "optimizer.lr": 0.001, "trainer.epochs": 3, "dataset.image_size": 64, "seed": 1,
                   "trainer.batch_size": 8, "model": "unet", "loss": "dice", "dataset": "acdc", "optimizer": "adam",
                   "lr": 0.001, "epochs": 3, "image_size": 64}


def test_provenance_names_the_commit_packages_and_machine():
    tags = provenance_tags("cpu", 3)
    assert tags["mlflow.source.git.commit"] == _head() and tags["git_dirty"] in ("true", "false")
    assert tags["version.torch"] == torch.__version__ and tags["version.hydra-core"] == "1.3.8"
    assert tags["device"] == "cpu" and tags["threads"] == "3" and tags["host"] and tags["mlflow.source.name"]


def test_parent_title_and_ui_link():
    assert sweep_title("covid_arch_x_loss", "2026-11-26 11:15:42") == "covid_arch_x_loss 2026-11-26 11:15"
    assert ui_url("sqlite:////x/mlflow.db", "3", "tags.mlflow.parentRunId = 'ab'") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?searchFilter=tags.mlflow.parentRunId%20%3D%20%27ab%27")
    assert ui_url("http://host:5001/", "3", "x").startswith("http://host:5001/#/experiments/3/runs?")
    # sorted by test Dice (best first): the UI then lists the sweep's children flat, not under the parent's "+"
    assert ui_url("sqlite:////x/mlflow.db", "3", "x", order_by=UI_ORDER_BY).endswith(
        "?searchFilter=x&orderByKey=metrics.%60test/dice%60&orderByAsc=false")


# ----------------------------------------------------------------------------------------------------
# the acceptance test: a 2-configuration sweep, asserted through the MLflow client

@pytest.fixture(scope="module")
def sweep(tmp_path_factory, phantom_cache):
    tmp = tmp_path_factory.mktemp("dash")
    uri = f"sqlite:///{tmp}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SEGSWEEP_CACHE": str(phantom_cache),
           "SEGSWEEP_LOG_MODEL": "true"}   # this sweep checks the logged models
    proc = subprocess.run([sys.executable, "run.py", "-m", "model=unet", "loss=dice,bce", *TINY,
                           f"hydra.sweep.dir={tmp}/multirun"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("phantom_xray")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("segsweep.parent") == "true")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {"uri": uri, "client": client, "exp": exp, "parent": parent, "children": children, "tmp": tmp,
            "out": proc.stdout + proc.stderr}


@pytest.mark.slow
def test_sweep_runs_carry_provenance_namespace_and_dataset(sweep):
    client, children = sweep["client"], sweep["children"]
    assert sorted(r.info.run_name for r in children) == ["unet-bce-s0", "unet-dice-s0"]
    exp_note = sweep["exp"].tags["mlflow.note.content"]
    assert "covid_infection" in exp_note and "Tahir et al." in exp_note      # its published numbers' source
    for r in children:
        tags, metrics, params = r.data.tags, r.data.metrics, r.data.params
        assert tags["mlflow.source.git.commit"] == _head() and tags["version.mlflow"] == "3.17.2"
        assert "unet + " in tags["mlflow.note.content"]
        assert not [k for k in metrics if k.startswith("test/") and k.endswith(("_n", "_std"))]
        assert metrics["test_n/cases"] == 32 and metrics["test_n/dice"] >= 1 and "test_std/dice_infection" in metrics
        assert not [k for k in params if k.endswith("_target_") or k.startswith("paths.")]
        assert (params["model"], params["image_size"], params["epochs"]) == ("unet", "32", "1")
        inputs = client.get_run(r.info.run_id).inputs.dataset_inputs
        assert len(inputs) == 1 and inputs[0].dataset.name == "covid_infection"
        split = Path(client.download_artifacts(r.info.run_id, "split.json", str(sweep["tmp"] / r.info.run_id)))
        assert inputs[0].dataset.digest == hashlib.sha256(split.read_bytes()).hexdigest()[:16]


@pytest.mark.slow
def test_sweep_parent_is_named_described_and_holds_the_comparison(sweep):
    client, parent = sweep["client"], sweep["parent"]
    started = json.loads((sweep["tmp"] / "multirun" / "sweep.json").read_text())["started"]
    assert parent.info.run_name == f"phantom_xray {started[:16]}"
    assert "**Sweep" in parent.data.tags["mlflow.note.content"]
    paths = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert paths == {"comparison/summary.json", "comparison/heatmaps.png"}
    assert {"path": "comparison/summary.json", "type": "table"} in json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    import pandas as pd

    table = pd.read_json(client.download_artifacts(parent.info.run_id, "comparison/summary.json", str(sweep["tmp"])),
                         orient="split")
    assert sorted(table["loss"]) == ["bce", "dice"] and set(table["model"]) == {"unet"}
    png = Path(client.download_artifacts(parent.info.run_id, "comparison/heatmaps.png", str(sweep["tmp"])))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = Path(client.download_artifacts(parent.info.run_id, "report/index.html", str(sweep["tmp"])))
    assert "unet" in html.read_text()
    link = ui_url(sweep["uri"], sweep["exp"].experiment_id, f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                  order_by=UI_ORDER_BY)
    assert link in sweep["out"]


def _seg_predict(run_id: str, uri: str, pixels: np.ndarray) -> np.ndarray:
    from seg.predict.cli import preprocess, segment
    from seg.predict.model import resolve_model

    model = resolve_model(run_id, torch.device("cpu"), uri)
    _, x = preprocess(model, pixels)
    return segment(model, x, pixels.shape[1:], torch.device("cpu"))


@pytest.mark.slow
def test_logged_model_predicts_as_seg_predict(sweep):
    import mlflow

    mlflow.set_tracking_uri(sweep["uri"])
    run = sweep["children"][0]
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 40, 48)).astype(np.float32)
    got = model.predict(pixels)
    assert got.dtype == np.uint8 and got.shape == (2, 40, 48)
    np.testing.assert_array_equal(got, _seg_predict(run.info.run_id, sweep["uri"], pixels))


@pytest.mark.slow
def test_pyfunc_of_a_checkpoint_that_segments_something_matches_seg_predict(sweep, tmp_path):
    """The tiny sweep's models predict background everywhere; a checkpoint whose output bias favours the
    structure in part of the image makes the comparison one that can fail."""
    import mlflow
    from mlflow import MlflowClient

    from seg.engine import checkpoint
    from seg.tracking import log_pyfunc_model

    uri, run = sweep["uri"], sweep["children"][0]
    best = Path(MlflowClient(uri).download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path)))
    from seg.predict.cli import preprocess
    from seg.predict.model import model_from_checkpoint

    ckpt = checkpoint.load(best)
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 36, 30)).astype(np.float32)
    head = model_from_checkpoint(ckpt, str(best), torch.device("cpu"))
    with torch.no_grad():       # the head's bias at the median logit: about half the pixels are foreground
        logits = head.net(torch.from_numpy(preprocess(head, pixels)[1]))
    ckpt["state_dict"]["head.bias"] = ckpt["state_dict"]["head.bias"] - logits.median()
    noisy = tmp_path / "checkpoints" / "best.pt"
    noisy.parent.mkdir(exist_ok=True)
    torch.save(ckpt, noisy)
    new = MlflowClient(uri).create_run(sweep["exp"].experiment_id, run_name="noisy")
    MlflowClient(uri).log_artifact(new.info.run_id, str(noisy), "checkpoints")
    example = np.linspace(0, 255, 32 * 32, dtype=np.float32).reshape(1, 32, 32)
    model_uri = log_pyfunc_model(uri, new.info.run_id, noisy, example)
    got = mlflow.pyfunc.load_model(model_uri).predict(pixels)
    want = _seg_predict(new.info.run_id, uri, pixels)
    assert len(np.unique(want)) == 2            # both background and the structure
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------------
# portable stores

def test_copied_project_fails_before_writing_then_relocates_and_writes_only_its_own_folder(tmp_path):
    import shutil

    from seg.tracking import Tracker, TrackingStoreError

    old, new = tmp_path / "old" / "mlruns", tmp_path / "new" / "mlruns"
    with Tracker(f"sqlite:///{old}/mlflow.db", "copied", "first", {}) as t:
        t.log_text("x", "a.txt")
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    before = sorted(p for p in (tmp_path / "old").rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in before}
    uri = f"sqlite:///{new}/mlflow.db"
    with pytest.raises(TrackingStoreError, match=r"keeps its artifacts in file://.*/old/mlruns/artifacts, outside "
                                                 r"this store's folder .*/new/mlruns .*python -m seg.tracking relocate"):
        Tracker(uri, "copied", "second", {})
    proc = subprocess.run([sys.executable, "-m", "seg.tracking", "relocate", "--tracking-uri", uri], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "1 artifact location(s) rewritten" in proc.stdout, proc.stdout + proc.stderr
    with Tracker(uri, "copied", "second", {}) as t:
        t.log_text("y", "b.txt")
    assert sorted(p for p in (tmp_path / "old").rglob("*")) == before
    assert {p: p.stat().st_mtime_ns for p in before} == stamps
    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(t.run_id)
    assert run.info.artifact_uri.startswith(new.resolve().as_uri())
    assert (Path(run.info.artifact_uri.removeprefix("file://")) / "b.txt").read_text() == "y"
    first = MlflowClient(uri).search_runs([run.info.experiment_id], "attributes.run_name = 'first'")[0]
    assert (Path(first.info.artifact_uri.removeprefix("file://")) / "a.txt").read_text() == "x"   # the copy's own


@pytest.mark.slow
def test_register_puts_the_validation_selected_run_in_the_registry(sweep):
    import mlflow
    from mlflow import MlflowClient

    from seg.report.runs import best_by_validation

    uri = sweep["uri"]
    proc = subprocess.run([sys.executable, "-m", "seg.tracking", "register", "--experiment", "phantom_xray",
                           "--tracking-uri", uri], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    chosen, config = best_by_validation(uri, "phantom_xray")
    version = MlflowClient(uri, registry_uri=uri).get_model_version("segsweep-phantom_xray", "1")
    assert version.run_id == chosen.run_id and version.tags["configuration"] == config.label
    assert f"registered segsweep-phantom_xray version 1 from run {chosen.run_id}" in proc.stdout
    mlflow.set_registry_uri(uri)
    pixels = np.random.default_rng(2).uniform(0, 255, (1, 32, 32)).astype(np.float32)
    got = mlflow.pyfunc.load_model("models:/segsweep-phantom_xray/1").predict(pixels)
    np.testing.assert_array_equal(got, _seg_predict(chosen.run_id, uri, pixels))


# ----------------------------------------------------------------------------------------------------
# the MLflow UI in a browser

@pytest.mark.slow
def test_browser_finds_the_parents_logged_figure(sweep, tmp_path):
    """Headless Chromium (Debian package `chromium`; .ci/run installs it when it can) on `mlflow ui`
    bound to 127.0.0.1: the parent run's artifact page shows the comparison heatmap."""
    import shutil
    import socket
    import time
    import urllib.request

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the MLflow UI browser test needs it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", sweep["uri"], "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as reply:
                    if reply.read(2) == b"OK":
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"mlflow ui did not answer on 127.0.0.1:{port}")
                time.sleep(1)
        page = (f"http://127.0.0.1:{port}/#/experiments/{sweep['exp'].experiment_id}/runs/"
                f"{sweep['parent'].info.run_id}/artifacts/comparison/heatmaps.png")
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                              "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
        assert '<img alt="comparison/heatmaps.png" src="blob:' in dom, dom[-2000:]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
