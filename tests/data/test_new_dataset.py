"""Adding a dataset is one module + one yaml: the generic `png_pairs` dataset (seg/data/datasets/png_pairs.py
+ conf/dataset/png_pairs.yaml) on a small PNG-pair task written here, end to end through the four
user commands: train (run.py), check-data, predict, report.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg import PROJECT_ROOT
from seg.data.check import check
from seg.data.datasets.png_pairs import png_pairs
from seg.tracking import search_runs

N_IMAGES = 15


def _write_task(root: Path, n: int = N_IMAGES, size: int = 40) -> Path:
    """<root>/images/case_NN.png (grayscale, a bright disk on noise) + masks/case_NN.png (the disk, 0/255)."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.integers(12, size - 12), rng.integers(12, size - 12), rng.integers(5, 10)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        image = np.clip(60 + 120 * disk + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)
        assert cv2.imwrite(str(root / "images" / f"case_{i:02d}.png"), image)
        assert cv2.imwrite(str(root / "masks" / f"case_{i:02d}.png"), disk.astype(np.uint8) * 255)
    return root


def test_png_pairs_reads_splits_and_names_its_classes(tmp_path):
    root = _write_task(tmp_path / "task")
    data = png_pairs(str(root), 32, seed=0, class_names=["disk"], val_fraction=0.2, test_fraction=0.2)
    assert [len(data.split[k]) for k in ("train", "val", "test")] == [9, 3, 3]
    assert sorted(sum(data.split.values(), [])) == [f"case_{i:02d}.png" for i in range(N_IMAGES)]
    case = data.test[0]
    assert case.image.shape == (1, 1, 32, 32) and case.label.shape == (1, 40, 40)
    assert set(np.unique(case.label)) == {0, 1} and case.spacing == (1.0, 1.0)
    assert data.class_names == ["disk"]
    x, y = data.train[0]
    assert tuple(x.shape) == (1, 32, 32) and tuple(y.shape) == (32, 32)


def test_png_pairs_multiclass_masks_hold_class_indices(tmp_path):
    root = _write_task(tmp_path / "task", n=6)
    mask = cv2.imread(str(root / "masks" / "case_03.png"), cv2.IMREAD_GRAYSCALE)
    for i in range(6):                                 # 0 background, 1 disk, 2 a corner square
        m = (cv2.imread(str(root / "masks" / f"case_{i:02d}.png"), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
        m[:4, :4] = 2
        cv2.imwrite(str(root / "masks" / f"case_{i:02d}.png"), m)
    data = png_pairs(str(root), 32, class_names=["disk", "corner"], val_fraction=0.2, test_fraction=0.2)
    assert set(np.unique(data.val[0].label)) == {0, 1, 2}
    mask[:4, :4] = 3                                   # a value with no class
    cv2.imwrite(str(root / "masks" / "case_03.png"), (mask > 0).astype(np.uint8) * 3)
    data = png_pairs(str(root), 32, class_names=["disk", "corner"], val_fraction=0.2, test_fraction=0.2)
    split = next(k for k in ("train", "val", "test") if "case_03.png" in data.split[k])
    with pytest.raises(ValueError, match=r"case_03\.png holds label values \[3\] outside 0\.\.2"):
        if split == "train":
            data.train.load(data.split["train"].index("case_03.png"))
        else:
            getattr(data, split)[data.split[split].index("case_03.png")]
    report = check("png_pairs", root, ("dataset.source.class_names=[disk,corner]", "dataset.num_classes=3"))
    assert report.problems == [f"mask {root / 'masks' / 'case_03.png'} holds label values [3] outside 0..2"]
    assert dict(report.labels) == {0: 6, 1: 5, 2: 5, 3: 1}


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "SEGSWEEP_CACHE": str(tmp_path / "cache")}


def _cmd(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_a_new_png_pair_task_trains_checks_predicts_and_reports(tmp_path, seeded_store):
    root = _write_task(tmp_path / "my_task")
    run_dir = tmp_path / "run"
    # train
    proc = _cmd(["run.py", "dataset=png_pairs", f"dataset.root={root}", "dataset.source.class_names=[disk]",
                 "model=unet", "loss=dice", "profile.image_size=32", "profile.epochs=1", "profile.batch_size=4",
                 "trainer.limit_train_batches=2", "tracking.overlays=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [r for r in search_runs(f"sqlite:///{tmp_path}/mlflow.db", "png_pairs")
              if r.data.tags.get("segsweep.parent") != "true"]
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "png_pairs"
    assert run.data.metrics["test_n/cases"] == 3 and "test/dice_disk" in run.data.metrics
    split = json.loads((run_dir / "split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [9, 3, 3]
    # check-data
    proc = _cmd(["-m", "seg.data.check", "png_pairs", str(root)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"all: {N_IMAGES}  (images {N_IMAGES})" in proc.stdout and "OK: no problems found" in proc.stdout
    # predict, with the run folder as the model
    image = root / "images" / split["test"][0]
    out = tmp_path / "predicted"
    proc = _cmd(["-m", "seg.predict", str(run_dir), str(image), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    label = cv2.imread(str(out / f"{image.stem}_label.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (40, 40) and set(np.unique(label)) <= {0, 1}
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [(r["input"], r["structure"]) for r in rows] == [(str(image), "disk")]
    # report
    proc = _cmd(["-m", "seg.report", "--experiment", "png_pairs", "--out", str(tmp_path / "report"),
                 "--include-smoke"], tmp_path)           # limit_train_batches made it a smoke run
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert [(r["task"], r["model"], r["loss"], r["dataset"]) for r in results] == [("png_pairs", "unet", "dice",
                                                                                    "png_pairs")]
    assert (tmp_path / "report" / "index.html").is_file()
