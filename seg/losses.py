"""Segmentation losses, binary or multiclass from `num_classes`.

All take logits (B, C, H, W) and an integer target (B, H, W) with values 0..K-1 and return a
scalar for reduction "mean"/"sum". `num_classes == 1` is the binary task: C == 1, sigmoid, target
0/1. `num_classes > 1`: C == num_classes, softmax, class 0 is background. So `loss=bce` on a
multiclass task is (weighted) cross-entropy and one sweep grid works on every task.

`ignore_index` marks target pixels that contribute to no term. Losses and metrics share the
reduction vocabulary none / mean / sum and raise on anything else.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; allowed values: {', '.join(REDUCTIONS)}")
    return reduction


def _check_num_classes(num_classes: int) -> int:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}; expected 1 (binary) or K >= 2 (multiclass)")
    return num_classes


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    if logits.ndim != 4 or target.ndim != 3:
        raise ValueError(f"expected logits (B, C, H, W) and target (B, H, W), got {tuple(logits.shape)} and {tuple(target.shape)}")
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} channels, loss was built for num_classes={num_classes}")
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in batch or spatial size")


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) -> float32; float32 / float64 stay as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _valid_mask(target: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (target with ignored pixels set to 0, float mask of valid pixels), both (B, H, W)."""
    if ignore_index is None:
        return target, torch.ones_like(target, dtype=torch.get_default_dtype())
    valid = target != ignore_index
    return torch.where(valid, target, torch.zeros_like(target)), valid.to(torch.get_default_dtype())


def _reduce(pixel_loss: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """pixel_loss (B, H, W), zero where invalid; mean is over valid pixels."""
    if reduction == "none":
        return pixel_loss
    if reduction == "sum":
        return pixel_loss.sum()
    return pixel_loss.sum() / valid.sum().clamp_min(1.0)


class CrossEntropyLoss(nn.Module):
    """Binary cross-entropy (num_classes 1) or cross-entropy (num_classes K).

    class_weights: binary -> [pos_weight]; multiclass -> K weights (mean is the weighted mean, as
    torch's cross_entropy). logits (B, C, H, W), target (B, H, W) -> scalar, or (B, H, W) for "none".
    """

    def __init__(self, num_classes: int, class_weights: Sequence[float] | None = None,
                 ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.reduction = _check_reduction(reduction)
        self.ignore_index = ignore_index
        expected = 1 if num_classes == 1 else num_classes
        if class_weights is not None and len(class_weights) != expected:
            raise ValueError(f"class_weights has {len(class_weights)} values; expected {expected} "
                             f"({'[pos_weight]' if num_classes == 1 else 'one per class'})")
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, target, self.num_classes)
        logits = _upcast(logits)
        if self.num_classes > 1:
            return F.cross_entropy(logits, target.long(), weight=self.weight, reduction=self.reduction,
                                   ignore_index=-100 if self.ignore_index is None else self.ignore_index)
        target, valid = _valid_mask(target, self.ignore_index)
        pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype), reduction="none",
                                                   pos_weight=self.weight) * valid  # (B, H, W)
        return _reduce(pixel, valid, self.reduction)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t per pixel.

    Binary: sigmoid, alpha in [0, 1] weighs the positive class (1 - alpha the negative).
    Multiclass: softmax, alpha is a list of K class weights. gamma=0 and alpha=None equal (B)CE.
    logits (B, C, H, W), target (B, H, W) -> scalar, or (B, H, W) for "none".
    """

    def __init__(self, num_classes: int, gamma: float = 2.0, alpha: float | Sequence[float] | None = None,
                 ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.reduction = _check_reduction(reduction)
        if gamma < 0:
            raise ValueError(f"gamma={gamma}; expected gamma >= 0")
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        if alpha is not None:
            if num_classes == 1 and not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
                raise ValueError(f"alpha={alpha!r}; binary focal loss expects a float in [0, 1] or None")
            if num_classes > 1 and (isinstance(alpha, (int, float)) or len(alpha) != num_classes):
                raise ValueError(f"alpha={alpha!r}; multiclass focal loss expects {num_classes} class weights or None")
            alpha = torch.tensor(alpha, dtype=torch.float32)
        self.register_buffer("alpha", alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, target, self.num_classes)
        logits = _upcast(logits)
        target, valid = _valid_mask(target, self.ignore_index)
        if self.num_classes == 1:
            x, t = logits[:, 0], target.to(logits.dtype)                              # (B, H, W)
            log_pt = -F.binary_cross_entropy_with_logits(x, t, reduction="none")
            alpha_t = None if self.alpha is None else self.alpha * t + (1 - self.alpha) * (1 - t)
        else:
            log_pt = F.log_softmax(logits, dim=1).gather(1, target.long()[:, None])[:, 0]  # (B, H, W)
            alpha_t = None if self.alpha is None else self.alpha[target.long()]
        pixel = -((1 - log_pt.exp()).clamp_min(0) ** self.gamma) * log_pt
        if alpha_t is not None:
            pixel = alpha_t * pixel
        return _reduce(pixel * valid, valid, self.reduction)


class DiceLoss(nn.Module):
    """Soft Dice loss 1 - (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth) per class.

    Binary: sigmoid of the single channel. Multiclass: softmax and one-hot target; background
    (class 0) is left out unless include_background. batch_dice sums over the batch before the
    ratio (one Dice per class); otherwise one Dice per image and class. squared uses p^2 and g^2 in
    the denominator (V-Net). An all-empty target with an all-empty prediction gives loss 0 (the
    smooth term), a non-empty prediction on it gives a loss > 0: defined, never NaN (smooth > 0).
    logits (B, C, H, W), target (B, H, W) -> scalar, or (C',) / (B, C') per class for "none".
    """

    def __init__(self, num_classes: int, smooth: float = 1.0, include_background: bool = False,
                 batch_dice: bool = True, squared: bool = False, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.reduction = _check_reduction(reduction)
        if not smooth > 0:
            raise ValueError(f"smooth={smooth}; expected smooth > 0 so an empty target has a defined loss")
        if include_background and num_classes == 1:
            raise ValueError("include_background=True needs num_classes > 1: the binary task has no background channel")
        self.smooth, self.include_background = float(smooth), include_background
        self.batch_dice, self.squared, self.ignore_index = batch_dice, squared, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, target, self.num_classes)
        logits = _upcast(logits)
        target, valid = _valid_mask(target, self.ignore_index)
        valid = valid[:, None]                                                  # (B, 1, H, W)
        if self.num_classes == 1:
            probs, onehot = torch.sigmoid(logits), target[:, None].to(logits.dtype)   # (B, 1, H, W)
        else:
            probs = torch.softmax(logits, dim=1)                               # (B, K, H, W)
            onehot = F.one_hot(target.long(), self.num_classes).permute(0, 3, 1, 2).to(logits.dtype)
            if not self.include_background:
                probs, onehot = probs[:, 1:], onehot[:, 1:]                    # (B, K-1, H, W)
        probs, onehot = probs * valid, onehot * valid
        dims = (0, 2, 3) if self.batch_dice else (2, 3)
        intersection = (probs * onehot).sum(dims)
        if self.squared:
            denominator = (probs ** 2).sum(dims) + (onehot ** 2).sum(dims)
        else:
            denominator = probs.sum(dims) + onehot.sum(dims)
        loss = 1 - (2 * intersection + self.smooth) / (denominator + self.smooth)  # (C',) or (B, C')
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()


class WeightedSum(nn.Module):
    """sum_k weights[k] * losses[k](logits, target); e.g. bce_dice, dice_focal. -> scalar."""

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None):
        super().__init__()
        if not losses:
            raise ValueError("losses is empty; expected a mapping name -> loss module")
        weights = dict(weights or {name: 1.0 for name in losses})
        if set(weights) != set(losses):
            raise ValueError(f"weights keys {sorted(weights)} must equal losses keys {sorted(losses)}")
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {name: float(w) for name, w in weights.items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())
