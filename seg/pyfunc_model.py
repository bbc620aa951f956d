"""The MLflow pyfunc flavour of a trained run (issue 15, "Models in MLflow's own terms").

Logged by seg.tracking.log_pyfunc_model as "models from code": MLflow keeps this file (and the `seg`
package, as code_paths) beside the checkpoint, never a pickled object. At load, `load_context` reads the
checkpoint with `torch.load(weights_only=True)` through seg.predict.model (seg.engine.checkpoint) and
`predict` runs seg.predict's own path (reader scaling, the run's evaluation transform, predict_images):

    input  float32 (D, H, W): D raw grayscale slices as the dataset's reader reads them (pixel values);
    output uint8   (D, H, W): the label map (0 = background, k = k-th structure) at the input size.

    mlflow models predict -m runs:/<run_id>/model -i input.json -t json --env-manager local
"""
from __future__ import annotations

import numpy as np
import mlflow.pyfunc
from mlflow.models import set_model

CHECKPOINT = "checkpoint"       # the artifact key of best.pt


class SegModel(mlflow.pyfunc.PythonModel):
    """A run's best checkpoint as an MLflow pyfunc: raw slices (D, H, W) -> labels uint8 (D, H, W)."""

    def load_context(self, context) -> None:
        import torch

        from seg.predict.model import load_checkpoint, model_from_checkpoint

        path = context.artifacts[CHECKPOINT]
        self.device = torch.device("cpu")
        self.model = model_from_checkpoint(load_checkpoint(path), str(path), self.device)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        from seg.predict.cli import preprocess, segment

        if isinstance(model_input, dict):            # a named input ({"inputs": ...} of a serving payload)
            model_input = next(iter(model_input.values()))
        if hasattr(model_input, "to_numpy"):          # a pandas DataFrame: one slice, rows x columns
            model_input = model_input.to_numpy()
        pixels = np.asarray(model_input, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[None]
        if pixels.ndim != 3:
            raise ValueError(f"expected raw slices float32 (D, H, W) or one slice (H, W), got shape {pixels.shape}")
        _, x = preprocess(self.model, pixels)
        return segment(self.model, x, pixels.shape[1:], self.device)


set_model(SegModel())
