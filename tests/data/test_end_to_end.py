"""`python run.py dataset=<real dataset> dataset.root=<tree in the published layout>` trains end to end.

The slow test runs one Hydra multirun over acdc, covid_infection and ct_heart, all pointed at ONE
folder holding the three generated trees side by side (each reader accepts the parent of its
dataset folder). The fast test runs ct_heart alone (the smallest tree).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from seg.tracking import search_runs
from tests.test_train import TINY, _run


def _runs(uri: str, experiment: str) -> list:
    return [r for r in search_runs(uri, experiment) if r.data.tags.get("segsweep.parent") != "true"]


def _split(run) -> dict:
    return json.loads((Path(run.info.artifact_uri.removeprefix("file://")) / "split.json").read_text())


def _disjoint(split: dict) -> bool:
    parts = [set(split[k]) for k in ("train", "val", "test")]
    return all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


@pytest.mark.slow   # a full sweep of subprocess runs: make test-all
def test_ct_heart_config_trains_on_a_generated_tree(tmp_path, seeded_store, phantom_cache, ct_root):
    proc = _run(["dataset=ct_heart", f"dataset.root={ct_root}", "dataset.source.val_fraction=0.15",
                 "dataset.source.test_fraction=0.15", "dataset.source.pixel_spacing=0.7", *TINY,
                 "trainer.limit_train_batches=1"], tmp_path, phantom_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _runs(f"sqlite:///{tmp_path}/mlflow.db", "ct_heart")
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "ct_heart"
    assert run.data.params["dataset.root"] == str(ct_root)
    assert run.data.params["dataset.source.transforms.normalize"] == "window"
    assert "test/dice_heart" in run.data.metrics and run.data.metrics["test_n/cases"] == 20   # 1 patient x 20
    split = _split(run)
    assert _disjoint(split) and [len(split[k]) for k in ("train", "val", "test")] == [6, 1, 1]
    assert split["dicom_series"] == ["test/patient09/series1", "test/patient10/series1"]


@pytest.mark.slow
def test_real_dataset_configs_train_on_generated_trees(tmp_path, seeded_store, phantom_cache, acdc_root, covid_root, ct_root):
    data = tmp_path / "data"
    data.mkdir()
    (data / "database").symlink_to(acdc_root, target_is_directory=True)
    (data / "Infection Segmentation Data").symlink_to(covid_root, target_is_directory=True)
    for part in ("train", "test"):
        (data / part).symlink_to(ct_root / part, target_is_directory=True)
    proc = _run(["-m", "dataset=acdc,covid_infection,ct_heart", f"dataset.root={data}", "model=unet", "loss=dice",
                 *TINY, "trainer.limit_train_batches=1"], tmp_path, phantom_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    expected = {"acdc": ("rv", "myo", "lv"), "covid_infection": ("infection",), "ct_heart": ("heart",)}
    for name, structures in expected.items():
        (run,) = _runs(uri, name)
        assert run.info.status == "FINISHED" and run.data.tags["dataset"] == name
        assert run.data.params["dataset.root"] == str(data)
        for s in structures:
            assert f"test/dice_{s}" in run.data.metrics, (name, s)
        assert _disjoint(_split(run))
    (acdc_run,) = _runs(uri, "acdc")
    assert acdc_run.data.metrics["test_n/cases"] == 20          # 10 testing patients x (ED, ES), 3D
    assert _split(acdc_run)["test"] == [f"patient{i}" for i in range(101, 111)]
    (covid_run,) = _runs(uri, "covid_infection")
    assert covid_run.data.metrics["test_n/cases"] == 32         # the published Test split
