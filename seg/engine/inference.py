"""The one inference path: batched forward passes (+ flip TTA) under torch.inference_mode.

Validation, the test pass, seg.predict and the benchmarks all call `predict_images` (through
`evaluate` for scored cases), so a prediction never depends on which command made it
(docs/design.md, "Inference").

    predict_images(net, images (N, C, S, S), out_size (H0, W0), ...) -> labels uint8 (N, H0, W0)

Logits are resized back to the original size bilinearly, then thresholded at 0 (binary: one
logit) or argmax'ed (multiclass). With tta the probabilities (sigmoid / softmax) of the image and
of its horizontal flip (the flip seen in training) are averaged, resized back, then thresholded
at 0.5 / argmax'ed.

Every forward pass here runs with BatchNorm folded into the convolution before it (`folded_batchnorm`):
in eval mode a BatchNorm2d that follows a Conv2d (in an nn.Sequential, or named by its module's
`fold_pairs`) is an affine map per channel, so the convolution with scaled weights and a shifted bias
computes the same values (to float rounding) in one pass instead of two. On 2 CPU cores that makes a
cpu-preset forward pass 4-11 % faster (U-Net, ResU-Net's projection shortcuts, TransUNet's decoder;
measured before ResU-Net's units named their pairs; docs/design.md, "Inference").
"""
from __future__ import annotations

import functools
import time
import weakref
from contextlib import contextmanager, nullcontext
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from seg.data.base import Case
from seg.metrics import structure_rows
from seg.runtime import weights_layout

# (kind, start, end, info) for timing listeners (the benchmarks): kinds "forward" and "metrics"
Span = Callable[[str, float, float, object], None]


# the Conv2d modules whose forward is folded now (their BatchNorm2d's forward is the identity meanwhile)
_FOLDED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _neighbours(net: nn.Module):
    """(module, next module) pairs whose second one takes the first one's output: neighbours in an nn.Sequential,
    and the (conv, bn) attribute names a module lists in `fold_pairs` (its own forward applies bn to conv's output
    and nothing else: ResU-Net's units)."""
    for module in net.modules():
        if isinstance(module, nn.Sequential):
            children = list(module.children())
            yield from zip(children, children[1:])
        for conv, bn in getattr(module, "fold_pairs", ()):
            yield getattr(module, conv), getattr(module, bn)


def fold_batchnorm(net: nn.Module) -> Callable[[], None]:
    """Fold each eval-mode BatchNorm2d into the Conv2d just before it (in an nn.Sequential, or named by its
    module's `fold_pairs`); -> undo().

    For a pair (conv, bn) with running statistics: s = gamma / sqrt(running_var + eps) per output channel,
    conv's forward becomes the same convolution with weight W * s and bias (b - running_mean) * s + beta,
    and bn's forward the identity. Only forwards change: parameters, buffers, the module tree and the
    state_dict stay as they are, and undo() puts the two forwards back. The folded weights are computed
    from the parameters as they are now (they follow later in-place changes only after undo and a new
    fold), without autograd: for inference only. Pairs already folded (by an enclosing fold), BatchNorms
    in training mode or without running statistics, and subclasses of either module are left alone.
    """
    pairs = []
    with torch.no_grad():
        for conv, bn in _neighbours(net):
            if (type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or conv in _FOLDED
                    or bn.training or bn.running_mean is None or bn.running_var is None):
                continue
            scale = torch.rsqrt(bn.running_var + bn.eps)                                   # (C_out,)
            if bn.weight is not None:
                scale = scale * bn.weight
            weight = conv.weight * scale.reshape(-1, 1, 1, 1)      # (C_out, C_in / groups, k, k), its layout
            bias = -bn.running_mean * scale if conv.bias is None else (conv.bias - bn.running_mean) * scale
            if bn.bias is not None:
                bias = bias + bn.bias
            conv.forward = functools.partial(conv._conv_forward, weight=weight, bias=bias)
            bn.forward = _identity
            _FOLDED.add(conv)
            pairs.append((conv, bn))

    def undo() -> None:
        for conv, bn in pairs:
            del conv.forward, bn.forward          # the instance attributes: back to the class's forward
            _FOLDED.discard(conv)
        pairs.clear()

    return undo


@contextmanager
def folded_batchnorm(net: nn.Module):
    """fold_batchnorm(net) for the block, undone after it (also when the block raises). Nested blocks
    fold nothing again: the innermost leaves the outer fold in place."""
    undo = fold_batchnorm(net)
    try:
        yield
    finally:
        undo()


def _probs(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, dim=1)


def _forward(net: torch.nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
             num_classes: int, tta: bool) -> torch.Tensor:
    """x (d, C, S, S) -> logits (tta False) or flip-averaged probabilities (tta True), float32 (d, K, S, S)."""
    x = x.to(device)
    with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
        logits = net(x).float()                                                          # (d, K, S, S)
        if not tta:
            return logits
        flipped = torch.flip(net(torch.flip(x, dims=[-1])).float(), dims=[-1])
    return (_probs(logits, num_classes) + _probs(flipped, num_classes)) / 2


def _labels(out: torch.Tensor, out_size: tuple[int, int], num_classes: int, tta: bool) -> np.ndarray:
    """_forward's output (d, K, S, S) -> label maps uint8 (d, H0, W0): resized back bilinearly, then
    thresholded (logit 0 / probability 0.5) or argmax'ed."""
    out = F.interpolate(out, size=out_size, mode="bilinear", align_corners=False)
    cut = 0.5 if tta else 0.0
    pred = (out[:, 0] > cut) if num_classes == 1 else out.argmax(1)                    # (d, H0, W0)
    return pred.to(torch.uint8).cpu().numpy()


@contextmanager
def _eval_mode(net: torch.nn.Module):
    """The network in eval mode for the block, its training mode restored after (also when the block raises)."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


@contextmanager
def _inference(net: torch.nn.Module, span: Span | None, images: int):
    """The block of a prediction: the network in eval mode with its BatchNorms folded (`folded_batchnorm`)
    under torch.inference_mode, its training mode and own forwards restored after, and the block's time
    reported to `span` as "forward" for `images` images."""
    start = time.perf_counter()
    with _eval_mode(net), torch.inference_mode(), folded_batchnorm(net):
        yield
    if span is not None:
        span("forward", start, time.perf_counter(), images)


def predict_images(net: torch.nn.Module, images: np.ndarray, out_size: Sequence[int], device: torch.device,
                   dtype: torch.dtype | None, num_classes: int, batch_size: int = 16, tta: bool = False,
                   span: Span | None = None) -> np.ndarray:
    """images float32 (N, C, S, S) -> label maps uint8 (N, H0, W0), batch_size images per forward pass.

    Runs the network in eval mode under torch.inference_mode (no autograd graph); `dtype` is the
    autocast dtype (None: fp32), as training used it (seg.runtime.amp_dtype).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected an integer >= 1")
    out_size = (int(out_size[0]), int(out_size[1]))
    labels = []
    with _inference(net, span, int(images.shape[0])):
        for i in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))            # (d, C, S, S)
            labels.append(_labels(_forward(net, x, device, dtype, num_classes, tta), out_size, num_classes, tta))
    return np.concatenate(labels)


def predict_group(net: torch.nn.Module, images: Sequence[np.ndarray], out_sizes: Sequence[Sequence[int]],
                  device: torch.device, dtype: torch.dtype | None, num_classes: int, tta: bool = False,
                  span: Span | None = None) -> list[np.ndarray]:
    """Several cases in one forward pass: images[i] float32 (D_i, C, S, S) -> label maps uint8
    (D_i, H0_i, W0_i) at out_sizes[i]. Same arithmetic per image as predict_images (the network in
    eval mode under inference_mode, then each case's outputs resized to its own size)."""
    counts = [int(im.shape[0]) for im in images]
    with _inference(net, span, sum(counts)):
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)))                  # (sum D_i, C, S, S)
        out = _forward(net, x, device, dtype, num_classes, tta)
        labels = [_labels(part, (int(size[0]), int(size[1])), num_classes, tta)
                  for part, size in zip(torch.split(out, counts), out_sizes)]
    return labels


def predict_case(net: torch.nn.Module, case: Case, device: torch.device, dtype: torch.dtype | None,
                 num_classes: int, batch_size: int = 16, tta: bool = False) -> np.ndarray:
    """Case image (D, C, S, S) -> label map uint8 (D, H0, W0) at the size of case.label."""
    return predict_images(net, case.image, case.label.shape[-2:], device, dtype, num_classes, batch_size, tta)


def batches(cases: Sequence[Case], batch_size: int):
    """Cases -> lists of cases predicted together in one forward pass: consecutive cases (2D images or
    volumes, of any original size) while their images add up to at most batch_size; a case with more
    images than that alone (its slices are then batched batch_size at a time)."""
    group: list[Case] = []
    total = 0
    for case in cases:
        n = int(case.image.shape[0])
        if group and total + n > batch_size:
            yield group
            group, total = [], 0
        group.append(case)
        total += n
    if group:
        yield group


def evaluate(net: torch.nn.Module, cases: Sequence[Case], class_names: Sequence[str], device: torch.device,
             dtype: torch.dtype | None, num_classes: int, distances: bool = True, desc: str = "eval",
             keep: int = 0, batch_size: int = 32, tta: bool = False, span: Span | None = None,
             layout: torch.memory_format | None = None) -> tuple[list[dict], list[tuple]]:
    """Score every case per structure -> (rows of seg.metrics.structure_rows, up to `keep`
    (case, prediction (D, H0, W0)) pairs whose ground truth has foreground).

    Consecutive cases (2D images or volumes) are predicted together while their images add up to at most
    batch_size; a larger volume alone, batch_size slices at a time.
    layout: the memory format the forward passes run in (seg.runtime.memory_format(..., inference=True)); the
    weights are converted for the pass and back after. None: as they are stored. The BatchNorms are folded
    once for the whole evaluation (fold_batchnorm) and the network's training mode restored after.
    Metrics follow docs/metrics.md (seg.metrics).
    """
    rows, kept = [], []
    bar = tqdm(total=len(cases), desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    # eval mode first, so that the BatchNorms fold once for the whole evaluation
    with _eval_mode(net), weights_layout(net, layout), folded_batchnorm(net):
        for group in batches(cases, batch_size):
            if len(group) == 1:
                preds = [predict_images(net, group[0].image, group[0].label.shape[-2:], device, dtype, num_classes,
                                        batch_size, tta, span)]
            else:
                preds = predict_group(net, [c.image for c in group], [c.label.shape[-2:] for c in group], device,
                                      dtype, num_classes, tta, span)
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
