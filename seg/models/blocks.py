"""Building blocks shared by the segmentation architectures, and their argument checks.

- `ConvBNReLU`: k x k conv (same padding) -> BatchNorm -> ReLU. U-Net levels, TransUNet decoder.
- `DoubleConv`: two `ConvBNReLU` and optional channel dropout. U-Net levels, TransUNet decoder.
- `PreActResidualUnit`: BN-ReLU-Conv x2 plus a projected shortcut (He et al. 2016, "Identity
  Mappings in Deep Residual Networks"). ResU-Net encoder and decoder.
- `check_divisible`: the ValueError every model raises for an input it cannot downsample evenly.
"""
from __future__ import annotations

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# argument checks (messages name the argument and the allowed values)
# ---------------------------------------------------------------------------------------------


def check_positive_int(name: str, value: object) -> None:
    """Raise ValueError unless `value` is an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_probability(name: str, value: object) -> None:
    """Raise ValueError unless `value` is a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")


def check_divisible(x: torch.Tensor, factor: int, model: str, why: str = "") -> None:
    """Raise ValueError unless x (B, C, H, W) has H and W divisible by `factor`.

    The message names the constraint and the offending size, e.g.
    "UNet: input height and width must be divisible by 16 (2**depth, depth=4); got 72x72".
    """
    if x.ndim != 4:
        raise ValueError(f"{model}: input must be (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{model}: input height and width must be divisible by {factor}{reason}; "
                         f"got {h}x{w}")


# ---------------------------------------------------------------------------------------------
# plain convolutions
# ---------------------------------------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    """(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride): conv -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, bias: bool = True):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """(B, in_channels, H, W) -> (B, out_channels, H, W): two 3x3 conv-BN-ReLU, then Dropout2d.

    `bias=True` keeps the conv biases of the original U-Net (they are redundant before BN but
    count towards its published parameter total); the dropout layer exists only if dropout > 0.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0,
                 bias: bool = True):
        layers: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, bias=bias),
                                   ConvBNReLU(out_channels, out_channels, bias=bias)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


# ---------------------------------------------------------------------------------------------
# residual units
# ---------------------------------------------------------------------------------------------


class PreActResidualUnit(nn.Module):
    """Pre-activation residual unit: (B, in_channels, H, W) -> (B, out_channels, H/s, W/s).

        y = conv3x3(ReLU(BN(conv3x3_s(ReLU(BN(x)))))) + shortcut(x)

    The first conv carries the stride s. The shortcut is the identity when shape is kept, else a
    projection: 1x1 conv (stride s) + BN. Optional Dropout2d between the two convs.
    """

    fold_pairs = (("conv1", "bn2"),)     # forward applies bn2 to conv1's output alone (inference folds it)

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride),
                nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.relu(self.bn1(x)))           # (B, out, H/s, W/s)
        y = self.conv2(self.drop(self.relu(self.bn2(y))))  # (B, out, H/s, W/s)
        return y + self.shortcut(x)                       # (B, out, H/s, W/s)
