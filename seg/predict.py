"""Inference CLI: segment DICOM files / series, NIfTI volumes and PNG / JPEG images with a trained run.

    python -m seg.predict MODEL INPUT... --out DIR [--device auto] [--batch-size N] [--tta]

MODEL is one of
  - a checkpoint file (`checkpoints/best.pt` of a run: {"state_dict", "config", ...}), or a run's
    output folder holding it;
  - an MLflow run id (32 hex digits): its `checkpoints/best.pt` artifact is downloaded;
  - `best:<experiment>:<metric>[@KEY=VALUE...]`: chosen on validation only (seg.report.runs.best_by_validation):
    the configuration with the best mean `best/val/<metric>` over its seeds (`dice` means val/dice; test
    metrics are refused), then its seed with the best value; `@sweep_id=<ID>` keeps one sweep (default:
    every sweep), any other `@KEY=VALUE` keeps runs with that tag. Smoke runs (trainer.limit_train_batches
    or debug.* set) are chosen only when no other run matches.
  The tracking URI is `--tracking-uri`, else $MLFLOW_TRACKING_URI, else the project default
  (sqlite:///<project>/mlruns/mlflow.db).

Checkpoints load with `torch.load(weights_only=True)`: one that needs arbitrary pickled objects is
refused (and nothing in it runs), and the model is built only through `seg.models.build_model`: one of
the three architecture classes by exact name, with plain-value arguments (nothing else is called).
Preprocessing follows the checkpoint's resolved config: the dataset reader's intensity scaling
(8-bit images as they are, as the PNG readers read them; ACDC: per-slice min-max; CT heart: HU
through the run's `dataset.source.window`; other inputs of the PNG tasks: per-slice min-max), then
the run's evaluation transform (resize to `dataset.image_size`, the `transforms.normalize` step),
exactly as at training time.

INPUT: files or folders (walked recursively; mixed folders are fine):
  - `.png` / `.jpg` / `.jpeg`: one 2D image each (read as 8-bit grayscale);
  - `.nii` / `.nii.gz`: a 2D or 3D volume, segmented slice by slice (along the third file axis),
    or a 4D cine volume (x, y, z, t), every frame;
  - DICOM (`.dcm`, or no suffix with the DICM marker): the files of one folder are grouped by
    SeriesInstanceUID; a series of several slices is one volume (sorted along the slice normal,
    HU from RescaleSlope / Intercept, `seg.data.dicom`), a lone file one 2D image.

Outputs in --out, per input `<name>`:
  - `<name>_label.png` (2D inputs) or `<name>_label.nii.gz` (NIfTI and DICOM series, with the
    input's affine and array shape): the label map at the original size, values = class indices
    (0 background, 1.. structures; binary models 0 / 1);
  - `<name>_overlay.png`: contours of each structure (one colour each) on the image; volumes as a
    montage of slices;
  - `predictions.csv`: one row per input and structure (and frame of a cine file): pixels, area in
    mm^2 (2D inputs with a known pixel spacing), volume in mL (volumes); for ACDC models and a
    patient whose ED and ES frames are both given (files `patientNNN_frameNN` or the cine file
    `patientNNN_4d`, phases from the `Info.cfg` beside them), EDV / ESV / ejection fraction of LV and RV.

An input that cannot be read is reported by name and skipped; the exit status is 1 if any input
failed (2 for a bad command line or model).
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import pickle
import re
import sys
import tempfile
import time
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from seg.models import UnsafeModelConfig, build_model
from seg.data import acdc as acdc_reader
from seg.data.dicom import ct_window, read_dicom, read_dicom_series
from seg.data.layout import read_png
from seg.data.transforms import apply_image, transforms_pair

log = logging.getLogger("seg.predict")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
RUN_ID = re.compile(r"[0-9a-f]{32}")
LOWER_IS_BETTER = ("hd", "hd95", "assd", "fpr", "loss")
# BGR contour colours per structure (1, 2, 3, ...): red, green, blue, yellow, magenta, cyan, ...
COLOURS = [(0, 0, 255), (0, 200, 0), (255, 80, 0), (0, 220, 255), (255, 0, 255), (255, 255, 0),
           (0, 128, 255), (128, 0, 255)]
CSV_FIELDS = ["input", "kind", "frame", "label_file", "overlay_file", "shape", "spacing_mm", "patient", "phase",
              "structure", "class_index", "pixels", "area_mm2", "volume_ml", "edv_ml", "esv_ml", "ef_percent"]


class ModelError(ValueError):
    """MODEL cannot be resolved, loaded or trusted."""


# ---------------------------------------------------------------------------------------------
# the model: checkpoint file, MLflow run id, best:<experiment>:<metric>
# ---------------------------------------------------------------------------------------------

@dataclass
class Reader:
    """How a dataset reader scales intensities before the evaluation transform.

    scale: raw pixels (D, H, W) (uint8 for 8-bit images, float32 modality units otherwise) ->
           what the reader hands to the transform: (D, H, W) uint8, or float32 in [0, 1]
    """

    name: str
    scale: Callable[[np.ndarray], np.ndarray]
    class_names: list[str]


def _unit_or_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit images as they are (the PNG readers read 8-bit grayscale); anything else min-max scaled
    per slice to [0, 1], as the ACDC reader does."""
    return pixels if pixels.dtype == np.uint8 else acdc_reader._unit_slices(pixels)


def _window_or_uint8(width: float, level: float) -> Callable[[np.ndarray], np.ndarray]:
    """CT heart: 8-bit images (the windowed PNG export) as they are; modality values (HU) through the
    run's CT window to [0, 1] (`seg.data.dicom.ct_window`, as `seg.data.ct_heart.dicom_input`)."""
    return lambda pixels: pixels if pixels.dtype == np.uint8 else ct_window(pixels, width, level)


def _acdc_names(source: dict) -> list[str]:
    labels = source.get("labels") or sorted(acdc_reader.STRUCTURES)
    return [acdc_reader.STRUCTURES[int(v)] for v in labels]


# dataset reader (`dataset.source._target_`) -> (intensity scaling from the source config, structure names)
READERS: dict[str, Callable[[dict], Reader]] = {
    "seg.data.covid.covid_infection": lambda src: Reader("covid_infection", _unit_or_uint8, ["infection"]),
    "seg.data.covid.covid_lung": lambda src: Reader("covid_lung", _unit_or_uint8, ["lung"]),
    "seg.data.radiography.covid_radiography": lambda src: Reader("covid_radiography", _unit_or_uint8, ["lung"]),
    "seg.data.acdc.acdc": lambda src: Reader("acdc", acdc_reader._unit_slices, _acdc_names(src)),
    "seg.data.ct_heart.ct_heart": lambda src: Reader("ct_heart", _window_or_uint8(
        float((src.get("window") or {}).get("width", 400.0)), float((src.get("window") or {}).get("level", 40.0))),
        ["heart"]),
}


def reader_for(config: dict) -> Reader:
    """The intensity scaling and structure names of the checkpoint's dataset reader (by `_target_`)."""
    dataset = config.get("dataset") or {}
    source = dataset.get("source") or {}
    target = source.get("_target_", "")
    if target not in READERS:
        raise ModelError(f"the checkpoint's dataset reader {target!r} (dataset {dataset.get('name')!r}) is not "
                         f"known to seg.predict; known readers: {', '.join(READERS)}")
    return READERS[target](source)


@dataclass
class Model:
    """A trained network with the preprocessing of its run."""

    net: torch.nn.Module
    config: dict
    num_classes: int
    image_size: int
    class_names: list[str]
    reader: Reader
    source: str                 # where it came from (checkpoint path / run id), for the log
    transform: object           # the run's evaluation transform: resize + its `transforms` normalisation


def load_checkpoint(path: str | Path) -> dict:
    """torch.load(weights_only=True) with clear errors; ModelError naming the file.

    A checkpoint that needs arbitrary pickled objects (classes, functions: code that would run
    while unpickling) is refused without running it.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            what = f" (it references {found.group(1)})" if found else ""
            raise ModelError(f"refusing checkpoint {path}: it needs arbitrary pickled objects{what}, which could "
                             "run code when loaded; only weights-only checkpoints (tensors, dicts, lists, "
                             "numbers, strings) are accepted, as written by seg.train") from None
        raise ModelError(f"not a PyTorch checkpoint: {path} ({text.splitlines()[0] if text else 'unpickling failed'})") \
            from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ModelError(f"corrupt or unreadable checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) \
            or not isinstance(ckpt.get("config"), dict):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(f"{path} is not a segsweep checkpoint: expected a dict with 'state_dict' and 'config' "
                         f"(the resolved run config), got {keys}")
    for key in ("model", "dataset"):
        if not isinstance(ckpt["config"].get(key), dict):
            raise ModelError(f"{path}: the checkpoint's config has no '{key}' section")
    return ckpt


def model_from_checkpoint(ckpt: dict, source: str, device: torch.device) -> Model:
    """Checkpoint dict -> Model on device, in eval mode (the architecture from config.model)."""
    config = ckpt["config"]
    dataset = config["dataset"]
    num_classes, image_size = int(dataset["num_classes"]), int(dataset["image_size"])
    if int(dataset.get("in_channels", 1)) != 1:
        raise ModelError(f"{source}: the model takes {dataset['in_channels']} input channels; seg.predict "
                         "segments single-channel (grayscale) images")
    reader = reader_for(config)
    try:
        net = build_model(config["model"])
    except UnsafeModelConfig as err:
        raise ModelError(f"refusing the checkpoint {source}: {err}") from None
    try:
        net.load_state_dict(ckpt["state_dict"])
    except Exception as err:  # wrong keys / shapes, bad constructor arguments
        raise ModelError(f"{source}: the weights do not fit the architecture in its config "
                         f"({config['model'].get('_target_')}): {type(err).__name__}: {err}") from None
    try:
        transform = transforms_pair(image_size, False, 0, (dataset.get("source") or {}).get("transforms"))[1]
    except (ValueError, TypeError) as err:
        raise ModelError(f"{source}: the config's dataset.source.transforms are invalid: {err}") from None
    names = reader.class_names
    if len(names) != max(num_classes - 1, 1):
        raise ModelError(f"{source}: {num_classes} classes in the config but the {reader.name} reader names "
                         f"{len(names)} structure(s) ({', '.join(names)})")
    return Model(net.to(device).eval(), config, num_classes, image_size, names, reader, source, transform)


def _lower_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1].split("_")[0] in LOWER_IS_BETTER


def best_run(uri: str, experiment: str, metric: str):
    """The run `best:<experiment>:<metric>[@KEY=VALUE...]` names, chosen on validation only.

    metric: `dice` / `iou` (meaning val/dice, val/iou) or `val/<name>`; test metrics are refused. Each
    `@KEY=VALUE` keeps runs whose tag KEY equals VALUE (`@sweep_id=<ID>` one sweep; default: every sweep).
    The configuration (model x loss x settings) with the best mean best/<metric> over its seeds, then its
    seed with the best best/<metric>: seg.report.runs.best_by_validation (smoke runs only if nothing else).
    """
    from seg.report.runs import ReportError, best_by_validation

    metric, *filters = metric.split("@")
    tags = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ModelError(f"best:{experiment}:{metric}@{item}: expected @KEY=VALUE filters, e.g. "
                             f"best:{experiment}:dice@sweep_id=2026-11-26_13-46-28")
        tags[key] = value
    monitor = metric if "/" in metric else f"val/{metric}"
    sweep = tags.pop("sweep_id", None)
    try:
        run, config = best_by_validation(uri, experiment, monitor, sweep_id=sweep, tags=tags)
    except ReportError as err:
        raise ModelError(f"best:{experiment}:{metric}: {err}") from None
    log.info("best:%s:%s -> run %s (%s) of %s, best/%s = %.4f (mean over %d seed(s) %.4f)", experiment, metric,
             run.run_id, run.name, config.label, monitor, run.metrics[f"best/{monitor}"], len(config.runs),
             config.val(monitor))
    from seg.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri).get_run(run.run_id)


def resolve_model(spec: str, device: torch.device, uri: str | None = None) -> Model:
    """MODEL argument (checkpoint path | run id | best:<experiment>:<metric>) -> Model."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "checkpoints" / "best.pt").is_file():    # a run's output folder
        path = path / "checkpoints" / "best.pt"
    if path.exists():
        return model_from_checkpoint(load_checkpoint(path), str(path), device)
    from seg.tracking import resolve_uri

    uri = resolve_uri(uri)
    try:
        return _model_from_mlflow(spec, device, uri)
    except ModelError:
        raise
    except Exception as err:   # the store itself: unreachable server, unreadable database, ...
        raise ModelError(f"MODEL {spec!r}: MLflow tracking store {uri} failed: {type(err).__name__}: {err}") from None


def _model_from_mlflow(spec: str, device: torch.device, uri: str) -> Model:
    looks_like_run = spec.startswith("best:") or RUN_ID.fullmatch(spec)
    from seg.tracking import sqlite_path

    db = sqlite_path(uri)
    if looks_like_run and db is not None and not db.is_file():
        raise ModelError(f"MODEL {spec!r}: the MLflow store {uri} does not exist (no runs logged there yet?); "
                         "set MLFLOW_TRACKING_URI or --tracking-uri to the store of your runs")
    if spec.startswith("best:"):
        experiment, sep, metric = spec[len("best:"):].rpartition(":")
        if not sep or not experiment or not metric:
            raise ModelError(f"MODEL {spec!r}: expected best:<experiment>:<metric>, e.g. best:phantom_xray:dice")
        run_id = best_run(uri, experiment, metric).info.run_id
    elif RUN_ID.fullmatch(spec):
        run_id = spec
    else:
        raise ModelError(f"MODEL {spec!r}: no such checkpoint file, and not an MLflow run id (32 hex digits) "
                         "or best:<experiment>:<metric>")
    from seg.tracking import download_artifact

    with tempfile.TemporaryDirectory(prefix="segsweep-ckpt-") as tmp:
        try:
            local = download_artifact(uri, run_id, "checkpoints/best.pt", tmp)
        except (LookupError, FileNotFoundError) as err:
            raise ModelError(str(err)) from None
        return model_from_checkpoint(load_checkpoint(local), f"run {run_id}", device)


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One input to segment: a 2D image, a DICOM file or series, or a NIfTI volume (not read yet)."""

    kind: str                   # image | dicom | dicom_series | nifti
    name: str                   # output stem
    paths: list[Path]           # the file(s); a series: its files
    shown: str                  # how it is named in messages and the CSV


@dataclass
class Loaded:
    """An input read into memory.

    pixels:  (D, H, W) raw values: uint8 for 8-bit images, float32 modality units otherwise (the
             file's dtype for NIfTI); a 4D cine file: (T * Z, H, W)
    spacing: mm per axis of pixels' last two (2D) or three (3D) axes; None when unknown (PNG)
    nifti:   (affine, header, file shape) for NIfTI output, None for 2D outputs
    """

    pixels: np.ndarray
    spacing: tuple[float, ...] | None
    is_3d: bool
    nifti: tuple[np.ndarray, nib.Nifti1Header | None, tuple[int, ...]] | None = None
    frames: int = 1             # a 4D cine NIfTI: pixels holds frames x z slices, frame after frame
    meta: dict = field(default_factory=dict)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    suffix = _suffix(path)
    return path.name[:-len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.name


def _has_dicm_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _series_uid(path: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:   # unreadable: its own input, reported by read_dicom
        return f"<unreadable {path.name}>"
    return str(ds.get("SeriesInstanceUID", "<none>"))


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Job], list[tuple[str, str]]]:
    """INPUT arguments -> (jobs, failures [(input, reason)]). Folders are walked recursively; files
    in them that are no image are counted in the log, explicit ones of unknown type are failures."""
    jobs: list[Job] = []
    failures: list[tuple[str, str]] = []
    ignored: dict[str, int] = {}
    for arg in inputs:
        path = Path(arg).expanduser()
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files = sorted(f for f in files if not f.startswith("."))
                jobs += _folder_jobs(Path(folder), [Path(folder, f) for f in files], ignored)
        elif path.is_file():
            suffix = _suffix(path)
            if suffix in IMAGE_SUFFIXES:
                jobs.append(Job("image", _stem(path), [path], str(path)))
            elif suffix in NIFTI_SUFFIXES:
                jobs.append(Job("nifti", _stem(path), [path], str(path)))
            elif suffix in DICOM_SUFFIXES or _has_dicm_marker(path):
                jobs.append(Job("dicom", _stem(path), [path], str(path)))
            else:
                failures.append((str(path), "unsupported input type; expected .png / .jpg / .jpeg, .nii / "
                                            ".nii.gz, a DICOM file (.dcm or the DICM marker) or a folder"))
        else:
            failures.append((str(path), "no such file or folder"))
    if ignored:
        log.info("ignored %d file(s) in input folders that are not images: %s", sum(ignored.values()),
                 ", ".join(f"{n} {s or '(no suffix)'}" for s, n in sorted(ignored.items())))
    used: dict[str, int] = {}
    for job in jobs:   # unique output names
        n = used.get(job.name, 0)
        used[job.name] = n + 1
        if n:
            job.name = f"{job.name}_{n + 1}"
            while job.name in used:
                job.name += "_"
            used[job.name] = 1
    return jobs, failures


def _folder_jobs(folder: Path, files: list[Path], ignored: dict[str, int]) -> list[Job]:
    jobs, dicoms = [], []
    for f in files:
        suffix = _suffix(f)
        if suffix in IMAGE_SUFFIXES:
            jobs.append(Job("image", _stem(f), [f], str(f)))
        elif suffix in NIFTI_SUFFIXES and _stem(f).endswith("_gt"):
            ignored["_gt label maps"] = ignored.get("_gt label maps", 0) + 1   # ACDC ground truth, not images
        elif suffix in NIFTI_SUFFIXES:
            jobs.append(Job("nifti", _stem(f), [f], str(f)))
        elif suffix in DICOM_SUFFIXES or (suffix == "" and f.name.upper() != "DICOMDIR" and _has_dicm_marker(f)):
            dicoms.append(f)
        else:
            ignored[suffix] = ignored.get(suffix, 0) + 1
    groups: dict[str, list[Path]] = {}
    for f in dicoms:
        groups.setdefault(_series_uid(f), []).append(f)
    for i, (uid, members) in enumerate(groups.items()):
        if len(members) == 1 or uid.startswith("<unreadable"):
            jobs += [Job("dicom", _stem(f), [f], str(f)) for f in members]
        else:
            name = folder.name if len(groups) == 1 else f"{folder.name}_series{i + 1}"
            shown = f"{folder}/ ({len(members)} DICOM files, series {uid})"
            jobs.append(Job("dicom_series", name, members, shown))
    return jobs


_ACDC_NAME = re.compile(r"(patient\d+)_(?:frame(\d+)|4d)$")


def _acdc_phases(path: Path) -> dict:
    """ACDC naming with an Info.cfg beside the file -> {"patient", "phase"} for a frame file
    (patientNNN_frameNN, phase "ED" / "ES" / ""), {"patient", "frames": {"ED": n, "ES": m}} for a 4D
    cine file (patientNNN_4d); {} otherwise."""
    found = _ACDC_NAME.search(_stem(path))
    info = path.parent / "Info.cfg"
    if not found or not info.is_file():
        return {}
    try:
        frames = {ph: int(float(v)) for ph, v in acdc_reader.read_info(info).items() if ph in acdc_reader.PHASES}
    except ValueError as err:
        log.warning("%s", err)
        return {}
    if found.group(2) is None:
        return {"patient": found.group(1), "frames": frames}
    frame = int(found.group(2))
    return {"patient": found.group(1), "phase": next((ph for ph, f in frames.items() if f == frame), "")}


def load_job(job: Job) -> Loaded:
    """Read one input; errors name the file (ValueError / FileNotFoundError)."""
    if job.kind == "image":
        path = job.paths[0]
        try:
            image = read_png(path)       # OpenCV decodes PNG and JPEG alike, as 8-bit grayscale like the readers
        except ValueError:
            if _suffix(path) == ".png":
                raise
            raise ValueError(f"corrupt or unreadable JPEG file: {path}") from None
        return Loaded(image[None], None, False)
    if job.kind == "dicom":
        dcm = read_dicom(job.paths[0])
        return Loaded(dcm.pixels[None], tuple(dcm.spacing), False, meta={"modality": dcm.modality})
    if job.kind == "dicom_series":
        vol = read_dicom_series(job.paths)
        affine = vol.affine[:, [2, 1, 0, 3]]     # NIfTI order (x, y, z) = (col, row, slice), as vol.to_nifti()
        return Loaded(vol.pixels, tuple(vol.spacing), True, nifti=(affine, None, vol.pixels.shape[::-1]),
                      meta={"modality": vol.modality})
    path = job.paths[0]
    volume = acdc_reader.read_nifti(path)
    header = nib.load(path).header
    array, frames = volume.array, 1
    if array.ndim == 4:                          # cine (t, z, y, x): every frame, slice by slice
        frames = array.shape[0]
        array = array.reshape(-1, *array.shape[2:])
    return Loaded(array, tuple(volume.spacing), True, nifti=(volume.affine, header, tuple(header.get_data_shape())),
                  frames=frames, meta=_acdc_phases(path))


# ---------------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------------

def preprocess(model: Model, pixels: np.ndarray, transform=None) -> tuple[np.ndarray, np.ndarray]:
    """raw (D, H, W) -> (scaled (D, H, W) as the reader produces it, x float32 (D, 1, S, S) as at evaluation)."""
    transform = transform or model.transform
    scaled = model.reader.scale(pixels)
    x = np.stack([apply_image(transform, s) for s in scaled])[:, None]
    return scaled, x


@torch.no_grad()
def segment(model: Model, x: np.ndarray, out_size: tuple[int, int], device: torch.device,
            batch_size: int = 16, tta: bool = False) -> np.ndarray:
    """x float32 (D, 1, S, S) -> label map uint8 (D, H0, W0).

    Like seg.train.predict: logits resized back bilinearly, then threshold 0 (binary) / argmax.
    tta: the probabilities (sigmoid / softmax) of the image and its horizontal flip (the flip seen
    in training) are averaged, resized back, then thresholded at 0.5 / argmax.
    """
    dtype = torch.float16 if device.type == "cuda" else None      # as amp=auto at training time
    labels = []
    for i in range(0, x.shape[0], batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device)
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            logits = model.net(xb).float()                                        # (d, K, S, S)
            if tta:
                flipped = model.net(torch.flip(xb, dims=[-1])).float()
                flipped = torch.flip(flipped, dims=[-1])
        if tta:
            prob = (_probs(logits, model.num_classes) + _probs(flipped, model.num_classes)) / 2
            prob = F.interpolate(prob, size=out_size, mode="bilinear", align_corners=False)
            pred = (prob[:, 0] > 0.5) if model.num_classes == 1 else prob.argmax(1)
        else:
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
            pred = (logits[:, 0] > 0) if model.num_classes == 1 else logits.argmax(1)   # (d, H0, W0)
        labels.append(pred.to(torch.uint8).cpu().numpy())
    return np.concatenate(labels)


def _probs(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, dim=1)


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------

def _to_uint8(image: np.ndarray) -> np.ndarray:
    img = image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = np.zeros_like(img) if hi <= lo else (img - lo) / (hi - lo)
    return np.round(img * 255).astype(np.uint8)


def overlay_image(scaled: np.ndarray, labels: np.ndarray, num_structures: int, max_tiles: int = 24,
                  max_side: int = 384) -> np.ndarray:
    """scaled (D, H, W), labels (D, H, W) -> BGR uint8: each structure's contour in its colour.

    A volume becomes a montage of up to max_tiles slices (evenly spread), each at most max_side px.
    """
    depth = scaled.shape[0]
    picks = np.unique(np.linspace(0, depth - 1, min(depth, max_tiles)).round().astype(int))
    tiles = []
    for k in picks:
        canvas = cv2.cvtColor(_to_uint8(scaled[k]), cv2.COLOR_GRAY2BGR)
        for label in range(1, num_structures + 1):
            contours, _ = cv2.findContours((labels[k] == label).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(canvas, contours, -1, COLOURS[(label - 1) % len(COLOURS)], 1)
        h, w = canvas.shape[:2]
        if depth > 1 and max(h, w) > max_side:
            f = max_side / max(h, w)
            canvas = cv2.resize(canvas, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        tiles.append(canvas)
    if len(tiles) == 1:
        return tiles[0]
    cols = math.ceil(math.sqrt(len(tiles)))
    h, w = tiles[0].shape[:2]
    sheet = np.zeros((math.ceil(len(tiles) / cols) * h, cols * w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return sheet


def _imwrite(path: Path, image: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
    return path


def write_label(out: Path, job: Job, loaded: Loaded, labels: np.ndarray) -> Path:
    """Label map (D, H, W) -> <name>_label.png (2D) or <name>_label.nii.gz with the input's affine / shape."""
    if loaded.nifti is None:
        return _imwrite(out / f"{job.name}_label.png", labels[0])
    affine, header, shape = loaded.nifti
    if loaded.frames > 1:                                                     # (t*z, y, x) -> (x, y, z, t)
        data = np.ascontiguousarray(labels.reshape(loaded.frames, -1, *labels.shape[1:]).transpose(3, 2, 1, 0))
    else:                                                                     # (z, y, x) -> (x, y, z)
        data = np.ascontiguousarray(labels.transpose(2, 1, 0)).reshape(shape)
    image = nib.Nifti1Image(data, affine, header=header.copy() if header is not None else None)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    if header is None:
        spacing = loaded.spacing
        image.header.set_zooms((spacing[2], spacing[1], spacing[0]))
        image.header.set_xyzt_units("mm")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    path = out / f"{job.name}_label.nii.gz"
    nib.save(image, path)
    return path


def structure_rows(job: Job, loaded: Loaded, labels: np.ndarray, model: Model, label_file: Path,
                   overlay_file: Path) -> list[dict]:
    """One CSV row per structure (and frame of a cine file): pixels, area mm^2 (2D, known spacing) or
    volume mL (3D)."""
    spacing = loaded.spacing
    cell = float(np.prod(spacing)) if spacing is not None else None
    per_frame = labels.reshape(loaded.frames, -1)
    frames = loaded.meta.get("frames", {})
    shape = labels.shape if loaded.is_3d else labels.shape[1:]
    if loaded.frames > 1:
        shape = (loaded.frames, labels.shape[0] // loaded.frames, *labels.shape[1:])
    rows = []
    for t in range(loaded.frames):
        counts = np.bincount(per_frame[t], minlength=len(model.class_names) + 1)
        phase = loaded.meta.get("phase", "")
        if loaded.frames > 1:
            phase = next((ph for ph, f in frames.items() if f == t + 1), "")
        for index, structure in enumerate(model.class_names, start=1):
            n = int(counts[index])
            rows.append({
                "input": job.shown, "kind": job.kind, "frame": t + 1 if loaded.frames > 1 else "",
                "label_file": label_file.name, "overlay_file": overlay_file.name,
                "shape": "x".join(str(s) for s in shape),
                "spacing_mm": "" if spacing is None else "x".join(f"{s:.4g}" for s in spacing),
                "patient": loaded.meta.get("patient", ""), "phase": phase,
                "structure": structure, "class_index": index, "pixels": n,
                "area_mm2": "" if loaded.is_3d or cell is None else _num(n * cell),
                "volume_ml": _num(n * cell / 1000.0) if loaded.is_3d else "",
                "edv_ml": "", "esv_ml": "", "ef_percent": "",
            })
    return rows


def _num(value: float) -> float:
    """6 significant digits for the CSV."""
    return float(f"{value:.6g}")


def add_ejection_fractions(rows: list[dict]) -> list[tuple[str, str, float, float, float]]:
    """Fill edv/esv/ef of LV and RV rows for patients with both an ED and an ES volume (two frame files,
    or the ED and ES frames of one cine file); -> [(patient, structure, EDV, ESV, EF)]."""
    found = []
    volumes: dict[tuple[str, str, str], dict[str, list[dict]]] = {}
    for row in rows:
        if row["patient"] and row["phase"] in ("ED", "ES") and row["structure"] in ("lv", "rv"):
            source = row["input"] if row["frame"] != "" else "frames"     # a cine file, or separate frame files
            volumes.setdefault((row["patient"], row["structure"], source), {}) \
                .setdefault(row["phase"], []).append(row)
    for (patient, structure, _), phases in sorted(volumes.items()):
        if len(phases.get("ED", [])) != 1 or len(phases.get("ES", [])) != 1:
            continue
        edv, esv = float(phases["ED"][0]["volume_ml"]), float(phases["ES"][0]["volume_ml"])
        ef = 100.0 * (edv - esv) / edv if edv > 0 else float("nan")
        for row in phases["ED"] + phases["ES"]:
            row.update(edv_ml=_num(edv), esv_ml=_num(esv), ef_percent="" if math.isnan(ef) else _num(ef))
        found.append((patient, structure, edv, esv, ef))
    return found


# ---------------------------------------------------------------------------------------------
# the whole job
# ---------------------------------------------------------------------------------------------

def _describe(item: str, reason: str) -> str:
    """"<input>: <reason>", without repeating the input when the reason names it already."""
    return reason if item in reason else f"{item}: {reason}"


@dataclass
class Summary:
    done: list[dict] = field(default_factory=list)      # {"input", "label", "overlay", "seconds", "slices"}
    failed: list[tuple[str, str]] = field(default_factory=list)
    csv: Path | None = None
    seconds: float = 0.0

    @property
    def slices(self) -> int:
        return sum(d["slices"] for d in self.done)


def predict_inputs(model: Model, inputs: Sequence[str | Path], out: str | Path, device: torch.device,
                   batch_size: int = 16, tta: bool = False, progress: bool | None = None) -> Summary:
    """Segment every input into `out` (labels, overlays, predictions.csv); failures are collected, not raised."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected an integer >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs, failed = expand_inputs(inputs)
    summary = Summary(failed=failed)
    for item, reason in failed:
        log.error("%s (skipped)", _describe(item, reason))
    transform = model.transform
    rows: list[dict] = []
    bar = tqdm(jobs, desc="predict", unit="input", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    for job in bar:
        t0 = time.perf_counter()
        try:
            loaded = load_job(job)
            scaled, x = preprocess(model, loaded.pixels, transform)
            labels = segment(model, x, loaded.pixels.shape[-2:], device, batch_size, tta)
            label_file = write_label(out, job, loaded, labels)
            overlay_file = _imwrite(out / f"{job.name}_overlay.png",
                                    overlay_image(scaled, labels, len(model.class_names)))
        except Exception as err:   # one bad input must not stop the others; it is reported by name
            reason = str(err) if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {err}"
            summary.failed.append((job.shown, reason))
            log.error("%s (skipped)", _describe(job.shown, reason))
            log.debug("traceback", exc_info=True)
            continue
        rows += structure_rows(job, loaded, labels, model, label_file, overlay_file)
        summary.done.append({"input": job.shown, "kind": job.kind, "label": label_file, "overlay": overlay_file,
                             "seconds": time.perf_counter() - t0, "slices": int(labels.shape[0])})
    bar.close()
    for patient, structure, edv, esv, ef in add_ejection_fractions(rows):
        log.info("%s %s: EDV %.1f mL, ESV %.1f mL, EF %.1f %%", patient, structure.upper(), edv, esv, ef)
    summary.csv = out / "predictions.csv"
    with summary.csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    summary.seconds = time.perf_counter() - start
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m seg.predict",
        description="Segment DICOM files / series, NIfTI volumes and PNG / JPEG images with a trained run.",
        epilog="MODEL: checkpoint file | MLflow run id | best:<experiment>:<metric>[@KEY=VALUE...], chosen on "
               "validation (e.g. best:phantom_xray:dice@sweep_id=2026-11-26_13-46-28). "
               "Outputs per input in --out: <name>_label.png|.nii.gz, <name>_overlay.png; and predictions.csv.")
    parser.add_argument("model", metavar="MODEL", help="checkpoint path, MLflow run id or best:<experiment>:<val metric>[@sweep_id=ID]")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="DICOM file or series folder, .nii/.nii.gz, .png/.jpg, or a folder of them")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, else cpu) | cpu | cuda | cuda:N | mps")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    parser.add_argument("--tta", action="store_true", help="average the image and its horizontal flip")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads on CPU (default: torch's choice; 1 is often fastest for "
                             "2D images on a busy machine)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI for run ids / best:... (default $MLFLOW_TRACKING_URI, "
                             "else sqlite:///<project>/mlruns/mlflow.db)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: expected an integer >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: expected an integer >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point -> exit status: 0 all inputs done, 1 any input failed, 2 bad arguments / model."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from seg.train import select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = select_device(args.device)
        model = resolve_model(args.model, device, args.tracking_uri)
    except (ModelError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = model.config
    log.info("model %s: %s (%s, %d classes: %s), dataset %s, input %d px, device %s%s", model.source,
             cfg["model"].get("name", cfg["model"].get("_target_")), cfg.get("loss", {}).get("name", "?"),
             model.num_classes, ", ".join(model.class_names), cfg["dataset"].get("name"), model.image_size,
             device, ", TTA (h-flip)" if args.tta else "")
    summary = predict_inputs(model, args.inputs, args.out, device, args.batch_size, args.tta)
    log.info("%d input(s) segmented (%d slices) in %.1f s -> %s; %d failed", len(summary.done), summary.slices,
             summary.seconds, args.out, len(summary.failed))
    if summary.failed:
        print(f"{len(summary.failed)} input(s) failed:", file=sys.stderr)
        for item, reason in summary.failed:
            print(f"  {_describe(item, reason)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
