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
    HU from RescaleSlope / Intercept, `seg.data.io.dicom`), a lone file one 2D image.

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

The package: model.py (MODEL -> network + preprocessing; `reader_for`, `best_run`), inputs.py
(INPUT -> jobs -> pixels), outputs.py (labels, overlays through seg.viz, CSV rows), cardiac.py
(ACDC phases, EDV / ESV / EF), cli.py (predict_inputs, main). Segmentation itself is
seg.engine.inference.predict_images, the path validation and the test pass use
(docs/design.md, "Inference"), under the run's own amp setting.
"""
from seg.predict.cardiac import add_ejection_fractions
from seg.predict.cli import Summary, main, parse_args, predict_inputs, preprocess, segment
from seg.predict.inputs import Job, Loaded, expand_inputs, load_job
from seg.predict.model import (Model, ModelError, Reader, best_run, load_checkpoint, model_from_checkpoint,
                               reader_for, resolve_model)
from seg.predict.outputs import overlay_image, structure_rows, write_label

__all__ = ["Job", "Loaded", "Model", "ModelError", "Reader", "Summary", "add_ejection_fractions", "best_run",
           "expand_inputs", "load_checkpoint", "load_job", "main", "model_from_checkpoint", "overlay_image",
           "parse_args", "predict_inputs", "preprocess", "reader_for", "resolve_model", "segment",
           "structure_rows", "write_label"]
