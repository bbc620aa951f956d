"""seg.predict: MODEL resolution (checkpoint / run id / best:), safety, every input format, and Dice
parity with the run's own test evaluation.

Fast tests use a checkpoint written in-process (a tiny U-Net whose output bias is centred on the
phantom data, so its predictions are non-trivial); the slow test trains on the phantom tasks with
run.py and checks that predicting the run's test cases reproduces its `test/dice`.
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import cv2
import nibabel as nib
import numpy as np
import pydicom.data
import pytest
import torch
from omegaconf import OmegaConf

from seg import PROJECT_ROOT
from seg.config import build
from seg.data import open_dataset
from seg.data.datasets.acdc import read_info
from seg.data.io.nifti import read_nifti
from seg.data.io.dicom import read_dicom, read_dicom_series, write_dicom_slice
from seg.data.phantoms import write_acdc, write_covid_qu_ex
from seg.metrics import structure_rows, summarize
from seg.predict import main, model_from_checkpoint, resolve_model
from tests.conftest import compose_cfg

CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
MR_SMALL = Path(pydicom.data.get_testdata_file("MR_small.dcm"))


# the phantom tasks by their MLflow experiment name -> the dataset config that runs them (root unset)
DATASET = {"phantom_xray": "covid_infection", "phantom_cardiac": "acdc", "phantom_ct_heart": "ct_heart",
           "phantom_lung": "covid_lung"}


def _checkpoint(task: str, path: Path, seed: int = 0, overrides: Sequence[str] = ()) -> Path:
    """A segsweep checkpoint (the format seg.train writes) of a tiny U-Net for a phantom task.

    The head's bias is shifted by the median logit per class on 8 training slices, so the random
    network predicts every structure somewhere (a zero-output model would make comparisons vacuous).
    """
    cfg = compose_cfg([f"dataset={DATASET[task]}", "profile.image_size=32", f"seed={seed}", *overrides])
    torch.manual_seed(seed)
    net = build(cfg.model).eval()
    k = int(cfg.dataset.num_classes)
    data = open_dataset(cfg.dataset, seed=0, cache_dir=cfg.paths.cache)
    x = torch.stack([data.train[i][0] for i in range(8)])
    head = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == k][-1]
    with torch.no_grad():
        head.bias -= net(x).transpose(0, 1).reshape(k, -1).median(1).values
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True),
                "epoch": 0, "monitor": "val/dice", "value": 0.0}, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Single-image forward passes are several times faster with one thread on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpts(phantom_cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    return {task: _checkpoint(task, tmp / f"{task}.pt") for task in ("phantom_xray", "phantom_cardiac", "phantom_ct_heart")}


@pytest.fixture(scope="module")
def acdc_root(phantom_cache) -> Path:
    return write_acdc(phantom_cache / "phantom")


@pytest.fixture(scope="module")
def covid_root(phantom_cache) -> Path:
    return write_covid_qu_ex(phantom_cache / "phantom")


def _rows(out: Path) -> list[dict]:
    with (out / "predictions.csv").open() as fh:
        return list(csv.DictReader(fh))


def _nifti_labels(path: Path) -> np.ndarray:
    """label NIfTI (x, y, z) -> (z, y, x)."""
    return np.asanyarray(nib.load(path).dataobj).transpose(2, 1, 0)


def _png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


# ---------------------------------------------------------------------------------------------
# inputs and outputs


def test_pydicom_ct_and_mr_small_give_labels_at_input_size_with_areas_in_mm2(ckpts, tmp_path):
    out = tmp_path / "out"
    assert main([str(ckpts["phantom_cardiac"]), str(CT_SMALL), str(MR_SMALL), "--out", str(out)]) == 0
    for src in (CT_SMALL, MR_SMALL):
        dcm = read_dicom(src)
        label = _png(out / f"{src.stem}_label.png")
        assert label.shape == dcm.pixels.shape and label.dtype == np.uint8 and label.max() <= 3
        overlay = _png(out / f"{src.stem}_overlay.png")
        assert overlay.shape == (*dcm.pixels.shape, 3)
        rows = [r for r in _rows(out) if r["input"] == str(src)]
        assert [r["structure"] for r in rows] == ["rv", "myo", "lv"]
        for r in rows:
            n = int((label == int(r["class_index"])).sum())
            assert int(r["pixels"]) == n
            assert float(r["area_mm2"]) == pytest.approx(n * dcm.spacing[0] * dcm.spacing[1], rel=1e-4)
            assert r["volume_ml"] == ""


def test_dicom_series_of_8_slices_is_one_volume_in_slice_order_with_its_affine(ckpts, tmp_path, acdc_root):
    # 8 slices of a phantom cardiac volume as CT-like int16, written so that file-name order,
    # instance order and position order all differ: the reader must sort by position
    vol = read_nifti(acdc_root / "testing" / "patient101" / "patient101_frame01.nii.gz").array
    stack = np.concatenate([vol, vol[:1, ::-1]])[:8].astype(np.int16)          # (8, y, x)
    series = tmp_path / "series"
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    for k in range(8):
        write_dicom_slice(series / f"img{order[k]}.dcm", stack[k], spacing=(1.4, 1.2),
                          position=(-60.0, -40.0, 12.0 + 6.5 * k), instance=(k * 3) % 8 + 1, intercept=0.0)
    out = tmp_path / "out"
    assert main([str(ckpts["phantom_cardiac"]), str(series), "--out", str(out), "--batch-size", "3"]) == 0
    expected = read_dicom_series(series)
    img = nib.load(out / "series_label.nii.gz")
    assert img.shape == (stack.shape[2], stack.shape[1], 8)                      # (x, y, z) = (col, row, slice)
    np.testing.assert_allclose(img.affine, expected.to_nifti().affine, atol=1e-5)
    assert img.affine[2, 3] == pytest.approx(12.0) and img.header.get_zooms() == pytest.approx((1.2, 1.4, 6.5))
    labels = _nifti_labels(out / "series_label.nii.gz")                         # (8, y, x)
    (row,) = [r for r in _rows(out) if r["structure"] == "lv"]
    assert row["kind"] == "dicom_series" and float(row["volume_ml"]) == pytest.approx(
        (labels == 3).sum() * 1.2 * 1.4 * 6.5 / 1000, rel=1e-3)
    # each slice of the volume is that file's own 2D prediction: slice k is the k-th position
    singles = tmp_path / "singles"
    assert main([str(ckpts["phantom_cardiac"]), *[str(series / f"img{order[k]}.dcm") for k in range(8)],
                 "--out", str(singles), "--batch-size", "3"]) == 0
    for k in range(8):
        single = _png(singles / f"img{order[k]}_label.png")
        assert (single == labels[k]).mean() > 0.999, k
    assert len(np.unique(labels)) > 1


def test_acdc_nifti_keeps_shape_and_affine_and_gives_volumes_and_ejection_fraction(ckpts, tmp_path, acdc_root):
    folder = acdc_root / "testing" / "patient102"
    info = read_info(folder / "Info.cfg")
    ed, es = (folder / f"patient102_frame{int(info[p]):02d}.nii.gz" for p in ("ED", "ES"))
    cine = folder / "patient102_4d.nii.gz"
    out = tmp_path / "out"
    assert main([str(ckpts["phantom_cardiac"]), str(ed), str(es), str(cine), "--out", str(out)]) == 0
    rows = _rows(out)
    for src in (ed, es, cine):
        stem = src.name[:-len(".nii.gz")]
        source, label = nib.load(src), nib.load(out / f"{stem}_label.nii.gz")
        assert label.shape == source.shape and np.allclose(label.affine, source.affine)
        assert label.header.get_zooms() == pytest.approx(source.header.get_zooms())
        data = np.asanyarray(label.dataobj)
        voxel_ml = float(np.prod(source.header.get_zooms()[:3])) / 1000
        for r in (r for r in rows if r["input"] == str(src)):
            frame = data if data.ndim == 3 else data[..., int(r["frame"]) - 1]
            assert float(r["volume_ml"]) == pytest.approx((frame == int(r["class_index"])).sum() * voxel_ml, abs=1e-3)
        assert (out / f"{stem}_overlay.png").is_file()
    # the cine file's ED and ES frames are the frame files: same predictions, same EF
    cine_labels = np.asanyarray(nib.load(out / "patient102_4d_label.nii.gz").dataobj)
    assert cine_labels.shape[3] == len({r["frame"] for r in rows if r["input"] == str(cine)})
    for phase, src in (("ED", ed), ("ES", es)):
        frame_labels = np.asanyarray(nib.load(out / f"{src.name[:-len('.nii.gz')]}_label.nii.gz").dataobj)
        np.testing.assert_array_equal(cine_labels[..., int(info[phase]) - 1], frame_labels)
    for structure in ("lv", "rv"):
        frames = {r["phase"]: r for r in rows if r["structure"] == structure and r["input"] != str(cine)}
        in_cine = {r["phase"]: r for r in rows if r["structure"] == structure and r["input"] == str(cine) and r["phase"]}
        edv, esv = float(frames["ED"]["volume_ml"]), float(frames["ES"]["volume_ml"])
        assert frames["ED"]["patient"] == "patient102" and edv > 0
        assert float(frames["ES"]["ef_percent"]) == pytest.approx(100 * (edv - esv) / edv, abs=0.01)
        assert float(in_cine["ED"]["ef_percent"]) == pytest.approx(float(frames["ED"]["ef_percent"]), abs=1e-6)
        assert in_cine["ES"]["frame"] == info["ES"]
    assert all(r["ef_percent"] == "" for r in rows if r["structure"] == "myo")


def test_png_folder_labels_at_original_size(ckpts, tmp_path, covid_root):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("covid_1.png", "covid_2.png"):
        (folder / name).write_bytes((covid_root / "Train" / "COVID-19" / "images" / name).read_bytes())
    small = cv2.resize(_png(folder / "covid_1.png"), (120, 90))                  # not square, not 256
    assert cv2.imwrite(str(folder / "sub.jpg"), small)
    (folder / "notes.txt").write_text("not an image")                         # in a folder: ignored, counted
    out = tmp_path / "out"
    assert main([str(ckpts["phantom_xray"]), str(folder), "--out", str(out)]) == 0
    assert _png(out / "covid_1_label.png").shape == (256, 256)
    label = _png(out / "sub_label.png")
    assert label.shape == (90, 120) and set(np.unique(label)) == {0, 1}
    rows = _rows(out)
    assert sorted(Path(r["input"]).name for r in rows) == ["covid_1.png", "covid_2.png", "sub.jpg"]
    assert all(r["structure"] == "infection" and r["area_mm2"] == "" for r in rows)   # no physical spacing


def test_tta_is_flip_equivariant(ckpts, tmp_path, covid_root):
    image = _png(covid_root / "Train" / "COVID-19" / "images" / "covid_3.png")
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), image)
    cv2.imwrite(str(folder / "b.png"), image[:, ::-1])
    plain, tta = tmp_path / "plain", tmp_path / "tta"
    assert main([str(ckpts["phantom_xray"]), str(folder), "--out", str(plain)]) == 0
    assert main([str(ckpts["phantom_xray"]), str(folder), "--out", str(tta), "--tta"]) == 0

    def agreement(out):   # prediction of the flipped image vs the flipped prediction
        return (_png(out / "b_label.png") == _png(out / "a_label.png")[:, ::-1]).mean()

    assert agreement(tta) > 0.999
    assert agreement(plain) < 0.99            # the network itself is not symmetric: TTA made it so


@pytest.mark.parametrize("task", ["phantom_xray", "phantom_cardiac", "phantom_ct_heart"])
def test_predict_and_the_loops_test_pass_give_identical_per_case_dice(task, ckpts, tmp_path, monkeypatch):
    """One inference path: `seg.predict` on a run's test files and the training loop's test pass
    (seg.train.test_pass) on the same checkpoint give the same per-case, per-structure Dice; both run the
    forward passes in the same layout, and the command sets the allocator policy a training run sets."""
    from types import SimpleNamespace

    from seg.runtime import amp_dtype, stored_layout
    from seg.train import test_pass

    ckpt = torch.load(ckpts[task], weights_only=True)
    model = model_from_checkpoint(ckpt, task, torch.device("cpu"))
    assert stored_layout(model.net) is torch.channels_last        # a U-Net predicts channels_last on the CPU
    data = open_dataset(ckpt["config"]["dataset"], seed=0, cache_dir=ckpt["config"]["paths"]["cache"])
    picks = [0, len(data.test) - 1]
    cases = [data.test[i] for i in picks]
    if task == "phantom_cardiac":    # AcdcCases: (patient, phase) -> the frame file
        inputs = [p.files(phase)[0] for p, phase in (data.test.entries[0], data.test.entries[-1])]
    else:                            # CovidCases (COVID-QU-Ex, CT heart PNG slices): the image file
        inputs = [data.test.items[0].image, data.test.items[-1].image]
        if inputs[0].name == inputs[1].name:
            inputs, cases = inputs[:1], cases[:1]
    dtype = amp_dtype(ckpt["config"]["amp"], torch.device("cpu"))
    loop_rows, _ = test_pass(model.net, SimpleNamespace(test=cases, class_names=data.class_names),
                             torch.device("cpu"), dtype, model.num_classes)
    out = tmp_path / "out"
    malloc_calls = []
    monkeypatch.setattr("seg.predict.cli.retain_freed_memory", lambda: malloc_calls.append(1) or True)
    assert main([str(ckpts[task]), *map(str, inputs), "--out", str(out)]) == 0
    assert malloc_calls == [1]
    predict_rows = []
    for case, src in zip(cases, inputs):
        if src.suffix == ".png":
            got = _png(out / f"{src.stem}_label.png")[None]
        else:
            got = _nifti_labels(out / f"{src.name[:-len('.nii.gz')]}_label.nii.gz")
        assert got.shape == case.label.shape
        assert len(np.unique(got)) > 1                     # the model predicts something: not a vacuous match
        predict_rows += structure_rows(case.case_id, got if case.is_3d else got[0],
                                       case.label if case.is_3d else case.label[0], data.class_names,
                                       case.spacing, distances=True)
    key = lambda r: (r["case_id"], r["structure"])     # noqa: E731
    assert sorted(map(key, predict_rows)) == sorted(map(key, loop_rows)) and len(loop_rows) >= len(cases)
    loop = {key(r): r for r in loop_rows}
    for r in predict_rows:
        for metric in ("dice", "iou", "hd95"):
            a, b = r[metric], loop[key(r)][metric]
            assert (a == b) or (np.isnan(a) and np.isnan(b)), (task, key(r), metric, a, b)


def test_ct_dicom_series_goes_through_the_runs_ct_window(ckpts, tmp_path, phantom_cache):
    """A CT model (trained on windowed PNG slices) sees a DICOM scan through its config's HU window."""
    from seg.data.base import Case
    from seg.data.datasets.ct_heart import dicom_input
    from seg.data.phantoms import write_ct_heart
    from seg.data.transforms import apply_image
    from seg.engine.inference import predict_case

    series = sorted((write_ct_heart(phantom_cache / "phantom") / "test").glob("*/series1"))[0]
    labels = {}
    for width, level in ((400, 40), (150, 120)):     # the config's default window, and another one
        path = ckpts["phantom_ct_heart"] if width == 400 else _checkpoint(
            "phantom_ct_heart", tmp_path / f"w{width}.pt",
            overrides=[f"dataset.source.window.width={width}", f"dataset.source.window.level={level}"])
        model = model_from_checkpoint(torch.load(path, weights_only=True), "ct", torch.device("cpu"))
        out = tmp_path / f"out{width}"
        assert main([str(path), str(series), "--out", str(out)]) == 0
        volume, windowed = dicom_input(series, width, level)
        x = np.stack([apply_image(model.transform, s) for s in windowed])[:, None]
        case = Case("ct", x, np.zeros(windowed.shape, np.uint8), volume.spacing, is_3d=True)
        expected = predict_case(model.net, case, torch.device("cpu"), None, 1)
        labels[width] = _nifti_labels(out / "series1_label.nii.gz")
        np.testing.assert_array_equal(labels[width], expected)
        assert np.allclose(nib.load(out / "series1_label.nii.gz").affine, volume.to_nifti().affine)
    assert not np.array_equal(labels[400], labels[150])     # the window matters, so the test can fail


# ---------------------------------------------------------------------------------------------
# failures and safety


def test_invalid_inputs_are_named_and_skipped_and_the_exit_status_is_1(ckpts, tmp_path, covid_root, capsys):
    bad_png = tmp_path / "broken.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    bad_dcm = tmp_path / "broken.dcm"
    bad_dcm.write_bytes(b"not a dicom file at all")
    bad_nii = tmp_path / "broken.nii.gz"
    bad_nii.write_bytes(b"\x1f\x8b garbage")
    other = tmp_path / "table.csv"
    other.write_text("a,b\n")
    good = sorted((covid_root / "Test" / "COVID-19" / "images").glob("*.png"))[0]
    out = tmp_path / "out"
    status = main([str(ckpts["phantom_xray"]), str(bad_png), str(good), str(bad_dcm), str(bad_nii), str(other),
                   str(tmp_path / "missing.png"), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 1, err[-3000:]
    assert "5 input(s) failed" in err
    failed = err.split("input(s) failed:", 1)[1].splitlines()
    for path, why in ((bad_png, "corrupt or unreadable PNG"), (bad_dcm, "not a DICOM file"),
                      (bad_nii, "corrupt or unreadable NIfTI"), (other, "unsupported input type"),
                      (tmp_path / "missing.png", "no such file")):
        assert any(str(path) in line and why in line for line in failed), (path, failed)
    assert (out / f"{good.stem}_label.png").is_file()                         # the good one is done
    assert [r["input"] for r in _rows(out)] == [str(good)]


def test_cli_entry_point_exit_status(tmp_path):
    """`python -m seg.predict` exits with main()'s status (2: a model that cannot be loaded)."""
    proc = subprocess.run([sys.executable, "-m", "seg.predict", str(tmp_path / "none.pt"), str(CT_SMALL), "--out",
                           str(tmp_path / "out")], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no such checkpoint file" in proc.stderr and "none.pt" in proc.stderr


class _RunsCode:
    """Unpickling this creates the marker file: what a malicious checkpoint would do."""

    marker: Path

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_checkpoint_is_refused_and_its_code_never_runs(ckpts, tmp_path, capsys):
    marker = tmp_path / "pwned"
    good = torch.load(ckpts["phantom_xray"], weights_only=True)
    zipped, raw = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({**good, "extra": _RunsCode(marker)}, zipped)                  # torch zip format
    raw.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}))           # a bare pickle
    pickle.loads(pickle.dumps(_RunsCode(tmp_path / "control")))               # the payload does work ...
    assert (tmp_path / "control").exists()
    for path in (zipped, raw):
        assert main([str(path), str(CT_SMALL), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"refusing checkpoint {path}" in err and "arbitrary pickled objects" in err
    assert not marker.exists()                                                 # ... but it never ran
    assert not (tmp_path / "out" / "CT_small_label.png").exists()


@pytest.mark.parametrize("model_node", [
    {"_target_": "seg.models.transunet.Path.touch", "self": "{marker}"},
    {"_target_": "seg.models.unet.Path.write_text", "self": "{marker}", "data": "x"},
    {"_target_": "seg.models.transunet.torch.load", "f": "{marker}", "weights_only": False},
    {"_target_": "os.system", "command": "touch {marker}"},
    {"_target_": "seg.models.unet.UNet.__init__", "self": "{marker}"},
    {"_target_": "seg.models.unet.UNet", "base_width": {"_target_": "os.system", "command": "touch {marker}"}},
    {"_target_": "seg.models.unet.UNet", "base_width": ["touch {marker}"]},
    {"_target_": "seg.models.unet.UNet", "depth": 2, "evil": "touch {marker}"},
    {"_target_": "seg.models.transunet.TransUNet", "pretrained_path": "{marker}"},
], ids=["Path.touch", "Path.write_text", "torch.load", "os.system", "method", "nested_target", "list_of_str",
        "unknown_argument", "file_argument"])
def test_checkpoint_config_naming_arbitrary_callables_is_refused(ckpts, tmp_path, capsys, model_node):
    """A checkpoint's stored model config is built only through the allowlist: nothing it names is called."""
    marker = tmp_path / "pwned"
    ckpt = torch.load(ckpts["phantom_xray"], weights_only=True)
    node = json.loads(json.dumps(model_node).replace("{marker}", str(marker)))
    ckpt["config"]["model"] = node
    torch.save(ckpt, tmp_path / "bad.pt")
    assert main([str(tmp_path / "bad.pt"), str(CT_SMALL), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"refusing the checkpoint {tmp_path / 'bad.pt'}" in err
    if model_node["_target_"] not in ("seg.models.unet.UNet", "seg.models.transunet.TransUNet"):
        assert f"model._target_={node['_target_']!r} is not an allowed model class" in err
    else:
        bad_key = next(k for k in node if k not in ("_target_", "depth"))
        assert f"model.{bad_key}" in err
    assert not marker.exists()
    assert not (tmp_path / "out" / "CT_small_label.png").exists()


def test_allowlisted_models_build_from_their_stored_configs():
    """Every model config in conf/ round-trips through build_model (the stored form of a run's model)."""
    from seg.models import MODELS, build_model

    for model in ("unet", "resunet", "transunet"):
        cfg = compose_cfg([f"model={model}", "profile.image_size=32"])
        node = OmegaConf.to_container(cfg.model, resolve=True)
        net = build_model(node)
        assert type(net) is MODELS[node["_target_"]]
        assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in build(cfg.model).parameters())


@pytest.mark.parametrize("content,message", [(b"", "corrupt or unreadable checkpoint"),
                                             (None, "not a segsweep checkpoint")])
def test_bad_checkpoint_files_are_reported(tmp_path, capsys, content, message):
    path = tmp_path / "model.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    assert main([str(path), str(CT_SMALL), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


# ---------------------------------------------------------------------------------------------
# MLflow: run id and best:<experiment>:<metric>


def test_run_id_and_best_of_experiment_resolve_to_the_logged_checkpoint(ckpts, tmp_path, seeded_store, monkeypatch, capsys):
    from seg.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = {}
    # best: selects on validation (best/val/dice; seg.report.runs.best_by_validation), never on test:
    # seed 1 has the worst test Dice and the best validation Dice; seed 3 is alone in sweep B
    for seed, val, dice, sweep in ((1, 0.80, 0.40, "A"), (2, 0.60, 0.70, "A"), (3, 0.50, 0.55, "B")):
        path = _checkpoint("phantom_xray", tmp_path / f"s{seed}" / "best.pt", seed=seed)
        tags = {"seed": seed, "model": "unet", "loss": f"dice{seed}", "sweep_id": sweep}
        with Tracker(uri, "phantom_xray", f"unet-dice-s{seed}", tags) as tracker:
            tracker.log_artifact(path, "checkpoints")
            tracker.log_metrics({"test/dice": dice, "test/hd95": 20.0, "best/val/dice": val})
        runs[seed] = (tracker.run_id, torch.load(path, weights_only=True)["state_dict"])
    with pytest.raises(RuntimeError), Tracker(uri, "phantom_xray", "failed-s9", {}) as tracker:
        tracker.log_metrics({"test/dice": 0.99, "best/val/dice": 0.99})   # best metrics, but FAILED: never chosen
        raise RuntimeError("this run failed")

    def weights_of(spec):
        model = resolve_model(spec, torch.device("cpu"))
        return model.net.state_dict()

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in b)

    assert same(weights_of(runs[1][0]), runs[1][1])                         # a run id
    assert same(weights_of("best:phantom_xray:dice"), runs[1][1])           # highest validation Dice
    assert same(weights_of("best:phantom_xray:val/dice@sweep_id=B"), runs[3][1])   # within sweep B
    assert same(weights_of("best:phantom_xray:dice@loss=dice2"), runs[2][1])       # a tag filter
    out = tmp_path / "out"
    assert main(["best:phantom_xray:dice", str(CT_SMALL), "--out", str(out)]) == 0
    assert (out / "CT_small_label.png").is_file()
    for spec, message in (("best:phantom_xray:nosuch", "has metric 'best/val/nosuch'; best/ metrics there: best/val/dice"),
                          ("best:phantom_xray:test/hd95", "selection uses validation metrics only"),
                          ("best:phantom_xray:dice@sweep_id=C", "no runs match (experiment=phantom_xray, sweep_id=C"),
                          ("best:nope:dice", "--experiment 'nope': no such experiment"),
                          ("0" * 32, "not found"),
                          ("no_such_file.pt", "no such checkpoint file")):
        assert main([spec, str(CT_SMALL), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err, spec


# ---------------------------------------------------------------------------------------------
# Dice parity with a trained run (slow: trains on two phantom tasks with run.py)

# 24 steps of 8 slices at 32 px: enough for BatchNorm's running statistics and a non-trivial Dice
TINY = ["profile.image_size=32", "profile.epochs=3", "trainer.limit_train_batches=8", "trainer.batch_size=8",
        "optimizer.lr=0.01", "tracking.overlays=0"]
# PNG (COVID-QU-Ex lung masks: learnt within a few steps, unlike the faint infection patches) and NIfTI
TRAINED = {"phantom_lung": "run_id", "phantom_cardiac": "best:phantom_cardiac:dice"}


@pytest.mark.slow
def test_predicting_a_runs_test_cases_reproduces_its_test_dice(tmp_path, seeded_store, phantom_cache):
    from seg.tracking import search_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SEGSWEEP_CACHE": str(phantom_cache)}
    for task in TRAINED:   # the phantoms first, so the two parallel runs do not both write them
        cfg = compose_cfg([f"dataset={DATASET[task]}", "profile.image_size=32"])
        open_dataset(cfg.dataset, seed=0, cache_dir=cfg.paths.cache)
    procs = [subprocess.Popen([sys.executable, "run.py", f"dataset={DATASET[task]}", *TINY, f"hydra.run.dir={tmp_path}/{task}"],
                              cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for task in TRAINED]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        for task, how in TRAINED.items():
            (run,) = search_runs(uri, task)
            artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
            config = torch.load(artifacts / "checkpoints" / "best.pt", weights_only=True)["config"]
            data = open_dataset(config["dataset"], seed=config["seed"], cache_dir=config["paths"]["cache"])
            assert data.split["test"] == json.loads((artifacts / "split.json").read_text())["test"]
            if task == "phantom_cardiac":        # the run's test cases: one per patient and phase
                inputs = [patient.files(phase)[0] for patient, phase in data.test.entries]
            else:
                inputs = [item.image for item in data.test.items]
            out = tmp_path / f"pred_{task}"
            spec = run.info.run_id if how == "run_id" else how
            assert main([spec, *map(str, inputs), "--out", str(out)]) == 0
            rows = []
            for i, src in enumerate(inputs):
                case = data.test[i]
                if src.suffix == ".png":
                    pred = _png(out / f"{src.stem}_label.png")[None]
                else:
                    pred = _nifti_labels(out / f"{src.name[:-len('.nii.gz')]}_label.nii.gz")
                assert pred.shape == case.label.shape
                rows += structure_rows(case.case_id, pred if case.is_3d else pred[0],
                                       case.label if case.is_3d else case.label[0], data.class_names,
                                       case.spacing, distances=False)
            dice = summarize(rows, data.class_names, metrics=("dice",))["dice"]
            reported = run.data.metrics["test/dice"]
            assert reported > 0.05, f"{task}: the tiny run learnt nothing; the comparison would be vacuous"
            assert dice == pytest.approx(reported, abs=0.02), task
            # and case by case, against the run's cases.csv
            with (artifacts / "cases.csv").open() as fh:
                logged = {(r["case_id"], r["structure"]): float(r["dice"]) for r in csv.DictReader(fh)}
            for r in rows:
                np.testing.assert_allclose(r["dice"], logged[(r["case_id"], r["structure"])], atol=1e-6,
                                           err_msg=f"{task} {r['case_id']} {r['structure']}")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_acdc_patient_folder_segments_the_frames_not_the_ground_truth(acdc_root):
    from seg.predict import expand_inputs

    folder = next(acdc_root.rglob("patient*/Info.cfg")).parent
    jobs, failures = expand_inputs([folder])
    names = sorted(job.name for job in jobs)
    assert not failures and names and not any(name.endswith("_gt") for name in names)
    assert any(name.endswith("_4d") for name in names) and sum("_frame" in name for name in names) == 2
