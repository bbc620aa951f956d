"""Deep Residual U-Net (ResUNet).

Reference: Z. Zhang, Q. Liu, Y. Wang, "Road Extraction by Deep Residual U-Net", IEEE Geoscience
and Remote Sensing Letters 15(5), 2018, arXiv:1711.10684.

Encoder: a first unit (conv-BN-ReLU-conv + projected shortcut, no pre-activation on the raw
image) at widths[0], then one pre-activation residual unit per further width, each down-sampling
with a stride-2 first conv; the last of them is the bridge. Decoder: x2 up-sampling, concat with
the encoder feature of that resolution, a residual unit; a 1x1 head. widths (64, 128, 256, 512)
is the paper's network: 8,222,529 parameters for 1 input channel / 1 class, of which the 1x1
shortcut projections and the BN layers are 440,768; the other 7.78 M are the paper's "7.8 M".
The up-sampling is bilinear (the paper says "up-sampling" without the kind).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from seg.models.blocks import (PreActResidualUnit, check_divisible, check_positive_int,
                               check_probability)

# Blocks: `PreActResidualUnit` (BN-ReLU-Conv x2 + projected shortcut) lives in seg.models.blocks.


class FirstUnit(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H, W): conv-BN-ReLU-conv + 1x1 conv-BN shortcut.

    The paper's first unit: the raw image is not batch-normalised/activated before the first conv.
    """

    fold_pairs = (("conv1", "bn"),)      # forward applies bn to conv1's output alone (inference folds it)

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1),
                                      nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.drop(self.relu(self.bn(self.conv1(x)))))  # (B, out, H, W)
        return y + self.shortcut(x)                                   # (B, out, H, W)


class UpResidual(nn.Module):
    """(B, c_low, h, w) + skip (B, c_skip, 2h, 2w) -> (B, out_channels, 2h, 2w).

    Bilinear x2 up-sampling, concat with the skip, pre-activation residual unit.
    """

    def __init__(self, low_channels: int, skip_channels: int, out_channels: int,
                 dropout: float = 0.0):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.unit = PreActResidualUnit(low_channels + skip_channels, out_channels,
                                       dropout=dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), skip], dim=1)   # (B, c_low + c_skip, 2h, 2w)
        return self.unit(x)                        # (B, out, 2h, 2w)


class ResUNet(nn.Module):
    """ResU-Net: x float (B, in_channels, H, W) -> logits (B, num_classes, H, W), no activation.

    len(widths) - 1 stride-2 down-sampling steps, so H and W must be divisible by
    2**(len(widths) - 1) (8 for the paper's four widths).

    Args:
        in_channels: image channels (>= 1).
        num_classes: output channels (>= 1; 1 = binary logits for a sigmoid).
        widths: channels per resolution level, fine to coarse (>= 2 entries, each >= 1); the
            last is the bridge. (64, 128, 256, 512) in the paper.
        dropout: Dropout2d probability between the two convs of every unit, in [0, 1).
    """

    # memory_format=auto: channels_last on CUDA (H100, paper preset: fp16 AMP 246 -> 381 img/s)
    prefers_channels_last = True

    def __init__(self, in_channels: int = 1, num_classes: int = 1,
                 widths: Sequence[int] = (64, 128, 256, 512), dropout: float = 0.0):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        widths = tuple(widths)
        if len(widths) < 2:
            raise ValueError(f"widths must have at least 2 entries (levels), got {widths!r}")
        for i, w in enumerate(widths):
            check_positive_int(f"widths[{i}]", w)
        check_probability("dropout", dropout)
        self.factor = 2 ** (len(widths) - 1)

        self.first = FirstUnit(in_channels, widths[0], dropout=dropout)
        self.down = nn.ModuleList(
            PreActResidualUnit(c_in, c_out, stride=2, dropout=dropout)
            for c_in, c_out in zip(widths[:-1], widths[1:]))        # last one is the bridge
        self.up = nn.ModuleList(
            UpResidual(c_low, c_skip, c_skip, dropout=dropout)
            for c_low, c_skip in zip(reversed(widths[1:]), reversed(widths[:-1])))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.factor, "ResUNet", f"2**(len(widths)-1), {len(self.down)} "
                        "stride-2 down-sampling steps")
        x = self.first(x)                      # (B, widths[0], H, W)
        skips = [x]
        for down in self.down:
            x = down(x)                        # (B, widths[i+1], H/2**(i+1), W/2**(i+1))
            skips.append(x)
        skips.pop()                            # the bridge output is not a skip
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)                    # (B, widths[i], H/2**i, W/2**i)
        return self.head(x)                    # (B, num_classes, H, W)
