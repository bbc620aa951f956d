"""The seg.predict command: segment every input into --out (labels, overlays, predictions.csv)."""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from seg.data.transforms import apply_image
from seg.engine.inference import predict_images
from seg.predict.cardiac import add_ejection_fractions
from seg.predict.inputs import expand_inputs, load_job
from seg.predict.model import Model, ModelError, resolve_model
from seg.predict.outputs import CSV_FIELDS, structure_rows, write_label, write_overlay
from seg.runtime import retain_freed_memory, select_device, set_threads

log = logging.getLogger("seg.predict")


def preprocess(model: Model, pixels: np.ndarray, transform=None) -> tuple[np.ndarray, np.ndarray]:
    """raw (D, H, W) -> (scaled (D, H, W) as the reader produces it, x float32 (D, 1, S, S) as at evaluation)."""
    transform = transform or model.transform
    scaled = model.reader.scale(pixels)
    x = np.stack([apply_image(transform, s) for s in scaled])[:, None]
    return scaled, x


def segment(model: Model, x: np.ndarray, out_size: tuple[int, int], device: torch.device,
            batch_size: int = 16, tta: bool = False) -> np.ndarray:
    """x float32 (D, 1, S, S) -> label map uint8 (D, H0, W0), through seg.engine.inference.predict_images
    (the path of validation and the test pass) with the run's own autocast dtype (model.dtype)."""
    return predict_images(model.net, x, out_size, device, model.dtype, model.num_classes, batch_size, tta)


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
            overlay_file = write_overlay(out, job, scaled, labels, len(model.class_names))
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


def check_out(out: Path) -> str | None:
    """Why `--out` cannot be the output folder (one line), or None: it is created if missing and must be a
    writable folder; checked before the model is loaded."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is an existing file, not a folder; give a folder (it is created if missing)"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"--out {out}: cannot create the folder ({err.strerror or type(err).__name__}); give a writable folder"
    probe = out / f".write-test-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        return f"--out {out} is not writable ({err.strerror or type(err).__name__}); give a writable folder"
    return None


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
    set_threads(args.threads)
    retain_freed_memory()
    problem = check_out(args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        device = select_device(args.device)
        model = resolve_model(args.model, device, args.tracking_uri)
    except (ModelError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = model.config
    log.info("model %s: %s (%s, %d classes: %s), dataset %s, input %d px, device %s, amp %s%s", model.source,
             cfg["model"].get("name", cfg["model"].get("_target_")), cfg.get("loss", {}).get("name", "?"),
             model.num_classes, ", ".join(model.class_names), cfg["dataset"].get("name"), model.image_size,
             device, model.amp, ", TTA (h-flip)" if args.tta else "")
    summary = predict_inputs(model, args.inputs, args.out, device, args.batch_size, args.tta)
    log.info("%d input(s) segmented (%d slices) in %.1f s -> %s; %d failed", len(summary.done), summary.slices,
             summary.seconds, args.out, len(summary.failed))
    if summary.failed:
        print(f"{len(summary.failed)} input(s) failed:", file=sys.stderr)
        for item, reason in summary.failed:
            print(f"  {_describe(item, reason)}", file=sys.stderr)
        return 1
    return 0
