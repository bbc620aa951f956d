"""U-Net.

Reference: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI 2015, arXiv:1505.04597.

Differences from the paper, as in most modern implementations: "same" padding (output size =
input size, no cropping of skips) and BatchNorm after every conv. The convs keep their biases,
so base_width=64, depth=4 has exactly 31,043,521 parameters for 3 input channels / 1 class and
31,042,369 for 1 input channel (tests pin both).
"""
from __future__ import annotations

import torch
from torch import nn

from seg.models.blocks import DoubleConv, check_divisible, check_positive_int, check_probability

# Blocks: `DoubleConv` (two 3x3 conv-BN-ReLU) lives in seg.models.blocks; the up path is below.


class UpBlock(nn.Module):
    """(B, in_channels, h, w) + skip (B, in_channels/2, 2h, 2w) -> (B, in_channels/2, 2h, 2w).

    2x2 stride-2 transposed conv halving the channels, concat with the skip, `DoubleConv`.
    """

    def __init__(self, in_channels: int, dropout: float = 0.0):
        super().__init__()
        out_channels = in_channels // 2
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels, dropout=dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)                          # (B, in/2, 2h, 2w)
        x = torch.cat([skip, x], dim=1)         # (B, in, 2h, 2w)
        return self.conv(x)                     # (B, in/2, 2h, 2w)


class UNet(nn.Module):
    """U-Net: x float (B, in_channels, H, W) -> logits (B, num_classes, H, W), no activation.

    Encoder level i (i = 0..depth-1) has base_width * 2**i channels, the bottleneck
    base_width * 2**depth; 2x2 max-pool down, 2x2 transposed conv up, skip concatenation, 1x1
    head. H and W must be divisible by 2**depth.

    Args:
        in_channels: image channels (>= 1).
        num_classes: output channels (>= 1; 1 = binary logits for a sigmoid).
        base_width: channels of the first level (>= 1); 64 in the paper.
        depth: number of down-sampling steps (>= 1); 4 in the paper.
        dropout: Dropout2d probability after every double conv, in [0, 1); 0 disables.
    """

    # memory_format=auto stores it channels_last on CUDA: conv + BatchNorm have NHWC kernels (H100, paper
    # preset: fp16 AMP 401 -> 648 img/s; benchmarks/RESULTS.md, GPU section)
    prefers_channels_last = True

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_width: int = 64,
                 depth: int = 4, dropout: float = 0.0):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        check_positive_int("base_width", base_width)
        check_positive_int("depth", depth)
        check_probability("dropout", dropout)
        self.depth = depth

        widths = [base_width * 2**i for i in range(depth + 1)]   # 64, 128, 256, 512, 1024
        self.down = nn.ModuleList()
        c_in = in_channels
        for w in widths[:-1]:
            self.down.append(DoubleConv(c_in, w, dropout=dropout))
            c_in = w
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], dropout=dropout)
        self.up = nn.ModuleList(UpBlock(w, dropout=dropout) for w in reversed(widths[1:]))
        self.head = nn.Conv2d(base_width, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, 2**self.depth, "UNet", f"2**depth, depth={self.depth}")
        skips = []
        for down in self.down:
            x = down(x)                         # (B, base*2**i, H/2**i, W/2**i)
            skips.append(x)
            x = self.pool(x)                    # (B, base*2**i, H/2**(i+1), W/2**(i+1))
        x = self.bottleneck(x)                  # (B, base*2**depth, H/2**depth, W/2**depth)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)                     # (B, base*2**i, H/2**i, W/2**i)
        return self.head(x)                     # (B, num_classes, H, W)
