"""The one inference path: batched forward passes (+ flip TTA) under torch.inference_mode.

Validation, the test pass, seg.predict and the benchmarks all call `predict_images` (through
`evaluate` for scored cases), so a prediction never depends on which command made it
(docs/design.md, "Inference").

    predict_images(net, images (N, C, S, S), out_size (H0, W0), ...) -> labels uint8 (N, H0, W0)

Logits are resized back to the original size bilinearly, then thresholded at 0 (binary: one
logit) or argmax'ed (multiclass). With tta the probabilities (sigmoid / softmax) of the image and
of its horizontal flip (the flip seen in training) are averaged, resized back, then thresholded
at 0.5 / argmax'ed.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from seg.data.base import Case
from seg.metrics import structure_rows

# (kind, start, end, info) for timing listeners (the benchmarks): kinds "forward" and "metrics"
Span = Callable[[str, float, float, object], None]


def _probs(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, dim=1)


def predict_images(net: torch.nn.Module, images: np.ndarray, out_size: Sequence[int], device: torch.device,
                   dtype: torch.dtype | None, num_classes: int, batch_size: int = 16, tta: bool = False,
                   span: Span | None = None) -> np.ndarray:
    """images float32 (N, C, S, S) -> label maps uint8 (N, H0, W0), batch_size images per forward pass.

    Runs the network in eval mode under torch.inference_mode (no autograd graph); `dtype` is the
    autocast dtype (None: fp32), as training used it (seg.runtime.amp_dtype).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected an integer >= 1")
    start = time.perf_counter()
    was_training = net.training
    net.eval()
    out_size = tuple(int(s) for s in out_size)
    labels = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device)   # (d, C, S, S)
            with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
                logits = net(x).float()                                                      # (d, K, S, S)
                if tta:
                    flipped = torch.flip(net(torch.flip(x, dims=[-1])).float(), dims=[-1])
            if tta:
                prob = (_probs(logits, num_classes) + _probs(flipped, num_classes)) / 2
                prob = F.interpolate(prob, size=out_size, mode="bilinear", align_corners=False)
                pred = (prob[:, 0] > 0.5) if num_classes == 1 else prob.argmax(1)
            else:
                logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
                pred = (logits[:, 0] > 0) if num_classes == 1 else logits.argmax(1)         # (d, H0, W0)
            labels.append(pred.to(torch.uint8).cpu().numpy())
    if was_training:
        net.train()
    if span is not None:
        span("forward", start, time.perf_counter(), int(images.shape[0]))
    return np.concatenate(labels)


def predict_case(net: torch.nn.Module, case: Case, device: torch.device, dtype: torch.dtype | None,
                 num_classes: int, batch_size: int = 16, tta: bool = False) -> np.ndarray:
    """Case image (D, C, S, S) -> label map uint8 (D, H0, W0) at the size of case.label."""
    return predict_images(net, case.image, case.label.shape[-2:], device, dtype, num_classes, batch_size, tta)


def batches(cases: Sequence[Case], batch_size: int):
    """Cases -> lists of cases predicted together: consecutive single-image 2D cases with the same
    original size, up to batch_size of them (one forward pass); a 3D case alone (its slices are batched)."""
    group: list[Case] = []
    for case in cases:
        alone = case.is_3d or case.image.shape[0] != 1
        if group and (alone or len(group) == batch_size or case.label.shape != group[0].label.shape):
            yield group
            group = []
        if alone:
            yield [case]
        else:
            group.append(case)
    if group:
        yield group


def evaluate(net: torch.nn.Module, cases: Sequence[Case], class_names: Sequence[str], device: torch.device,
             dtype: torch.dtype | None, num_classes: int, distances: bool = True, desc: str = "eval",
             keep: int = 0, batch_size: int = 16, tta: bool = False,
             span: Span | None = None) -> tuple[list[dict], list[tuple]]:
    """Score every case per structure -> (rows of seg.metrics.structure_rows, up to `keep`
    (case, prediction (D, H0, W0)) pairs whose ground truth has foreground).

    2D cases of one size are predicted batch_size at a time; a volume's slices batch_size at a time.
    Metrics follow docs/metrics.md (seg.metrics).
    """
    rows, kept = [], []
    bar = tqdm(total=len(cases), desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    for group in batches(cases, batch_size):
        images = group[0].image if len(group) == 1 else np.concatenate([c.image for c in group])
        labels = predict_images(net, images, group[0].label.shape[-2:], device, dtype, num_classes, batch_size,
                                tta, span)
        preds = np.split(labels, np.cumsum([c.image.shape[0] for c in group])[:-1])
        start = time.perf_counter()
        for case, pred in zip(group, preds):
            pred_s, label_s = (pred, case.label) if case.is_3d else (pred[0], case.label[0])
            rows += structure_rows(case.case_id, pred_s, label_s, class_names, case.spacing, distances)
            if len(kept) < keep and case.label.any():
                kept.append((case, pred))
        if span is not None:
            span("metrics", start, time.perf_counter(), len(group))
        bar.update(len(group))
    bar.close()
    return rows, kept
