"""TransUNet (R50-ViT-B/16 hybrid encoder + cascaded upsampler).

Reference: J. Chen, Y. Lu, Q. Yu, X. Luo, E. Adeli, Y. Wang, L. Lu, A. L. Yuille, Y. Zhou,
"TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation", arXiv:2102.04306,
2021; official code github.com/Beckschen/TransUNet (networks/vit_seg_modeling*.py).

Layout, following the official implementation module for module (so parameter counts agree):
- CNN encoder: the official "ResNetV2" -- weight-standardised convs (StdConv2d, no bias) with
  GroupNorm, a 7x7 stride-2 stem of `base_width` channels, 3x3 stride-2 max-pool, and three
  stages of bottleneck units (`resnet_layers`, R50's first three: 3, 4, 9) with base*4, base*8,
  base*16 output channels, the last two stages down-sampling by 2: output at 1/16 resolution.
  StdConv + GroupNorm (not BN) keeps the layout of the ImageNet-21k R50+ViT-B/16 release and
  is independent of the batch size.
- ViT over the 1/16 map with patch size 1: 1x1 conv patch embedding to hidden_size, learned
  position embedding, pre-norm blocks (LN -> multi-head self-attention scaled by 1/sqrt(d_head)
  -> residual, LN -> MLP with GELU -> residual), final LN.
- CUP decoder: conv_more 3x3 to 512, four blocks (bilinear x2, concat skip, two 3x3 conv-BN-ReLU)
  with `decoder_channels`; skips at 1/8, 1/4, 1/2 from the CNN (the first `n_skip` used); 3x3 head.

Deliberate differences from the official code, none of which changes the parameter count:
- the max-pool has padding 1, so every stage is exactly 1/4, 1/8, 1/16 of the input (the official
  padding 0 gives 55 for 112 and zero-pads the skip back to 56);
- in_channels is used by the stem conv directly (official: grey images are repeated to 3
  channels); the `paper` preset uses 3 input channels, like the official count;
- GroupNorm uses gcd(32, channels) groups, which is 32 for every official width and keeps small
  widths (base_width 16) valid;
- q/k/v are one fused Linear (same parameters as three), and attention runs through
  torch.nn.functional.scaled_dot_product_attention;
- the position embedding starts as trunc-normal(std 0.02) instead of zeros (the official code
  always loads it from the pretrained release); it is interpolated (bicubic) when the token grid
  of the input differs from img_size // 16.

Count: in_channels=3, img_size=224 and the defaults give exactly the official R50-ViT-B_16
model's 105,276,066 parameters for num_classes=2 (the official config's default `n_classes`,
which is where the published figure comes from), and 105,277,081 for the Synapse setting of 9
classes (+7 x 145 head parameters): both within 0.01% of 105.3 M (tests pin both).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seg.models.blocks import (ConvBNReLU, DoubleConv, check_divisible, check_positive_int,
                               check_probability)

log = logging.getLogger(__name__)

HEAD_CHANNELS = 512  # conv_more output width, fixed in the official DecoderCup

# ---------------------------------------------------------------------------------------------
# CNN encoder (official "ResNetV2": StdConv2d + GroupNorm bottlenecks)
# ---------------------------------------------------------------------------------------------


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (per output channel: zero mean, unit variance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, m = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (self.weight - m) / torch.sqrt(v + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with gcd(32, channels) groups (32 for every width of the official R50)."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=eps)


class Bottleneck(nn.Module):
    """(B, cin, H, W) -> (B, cout, H/s, W/s): 1x1 -> 3x3 (stride s) -> 1x1, GN, residual, ReLU.

    The official `PreActBottleneck` (despite its name the activation comes after the sum); the
    shortcut is a 1x1 StdConv + GroupNorm(cout, cout) when the shape changes.
    """

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1):
        super().__init__()
        self.gn1 = group_norm(cmid)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = group_norm(cmid)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = group_norm(cout)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))      # (B, cmid, H, W)
        y = self.relu(self.gn2(self.conv2(y)))      # (B, cmid, H/s, W/s)
        y = self.gn3(self.conv3(y))                 # (B, cout, H/s, W/s)
        return self.relu(residual + y)              # (B, cout, H/s, W/s)


def _stage(cin: int, cout: int, cmid: int, units: int, stride: int) -> nn.Sequential:
    blocks = [("unit1", Bottleneck(cin, cout, cmid, stride))]
    blocks += [(f"unit{i}", Bottleneck(cout, cout, cmid)) for i in range(2, units + 1)]
    return nn.Sequential(OrderedDict(blocks))


class ResNetEncoder(nn.Module):
    """(B, in_channels, H, W) -> (B, 16w, H/16, W/16) and skips [(B, 8w, H/8, W/8),
    (B, 4w, H/4, W/4), (B, w, H/2, W/2)], w = base_width."""

    def __init__(self, in_channels: int, base_width: int, layers: Sequence[int]):
        super().__init__()
        w = base_width
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(in_channels, w, 7, stride=2, padding=3, bias=False)),
            ("gn", group_norm(w)),
            ("relu", nn.ReLU(inplace=True)),
        ]))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.body = nn.Sequential(OrderedDict([
            ("block1", _stage(w, 4 * w, w, layers[0], stride=1)),
            ("block2", _stage(4 * w, 8 * w, 2 * w, layers[1], stride=2)),
            ("block3", _stage(8 * w, 16 * w, 4 * w, layers[2], stride=2)),
        ]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s2 = self.root(x)                           # (B, w, H/2, W/2)
        s4 = self.body.block1(self.pool(s2))        # (B, 4w, H/4, W/4)
        s8 = self.body.block2(s4)                   # (B, 8w, H/8, W/8)
        s16 = self.body.block3(s8)                  # (B, 16w, H/16, W/16)
        return s16, [s8, s4, s2]


# ---------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention: (B, N, D) -> (B, N, D).

    softmax(Q K^T / sqrt(d_head)) V per head via F.scaled_dot_product_attention (its default
    scale is 1/sqrt(d_head)), then an output projection. As in the official code, dropout on the
    attention probabilities and on the output projection both use `attention_dropout`.
    """

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_drop = nn.Dropout(attention_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                     # 3 x (B, h, N, d)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attention_dropout if self.training else 0.0)  # (B, h, N, d)
        y = y.transpose(1, 2).reshape(B, N, D)                             # (B, N, D)
        return self.proj_drop(self.proj(y))                               # (B, N, D)


class Mlp(nn.Module):
    """(B, N, D) -> (B, N, D): Linear -> GELU -> dropout -> Linear -> dropout (official init)."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden_size)
        self.drop = nn.Dropout(dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.gelu(self.fc1(x)))          # (B, N, mlp_dim)
        return self.drop(self.fc2(x))               # (B, N, D)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: (B, N, D) -> (B, N, D)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_dim: int, dropout: float,
                 attention_dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, attention_dropout)
        self.mlp_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))        # (B, N, D)
        return x + self.mlp(self.mlp_norm(x))       # (B, N, D)


def resize_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int],
                     new_grid: tuple[int, int]) -> torch.Tensor:
    """(1, gh*gw, D) -> (1, h*w, D): bicubic interpolation of a position-embedding grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    D = pos.shape[-1]
    grid = pos.reshape(1, *old_grid, D).permute(0, 3, 1, 2)                 # (1, D, gh, gw)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)  # (1, h*w, D)


# ---------------------------------------------------------------------------------------------
# CUP decoder
# ---------------------------------------------------------------------------------------------


class DecoderBlock(nn.Module):
    """(B, cin, h, w) [+ skip (B, cskip, 2h, 2w)] -> (B, cout, 2h, 2w).

    Bilinear x2 (align_corners=True, as the official UpsamplingBilinear2d), concat the skip if
    any, two 3x3 conv-BN-ReLU without bias.
    """

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0):
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)  # (B, cin, 2h, 2w)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)         # (B, cin + cskip, 2h, 2w)
        return self.conv(x)                         # (B, cout, 2h, 2w)


# ---------------------------------------------------------------------------------------------
# TransUNet
# ---------------------------------------------------------------------------------------------


class TransUNet(nn.Module):
    """TransUNet: x float (B, in_channels, H, W) -> logits (B, num_classes, H, W), no activation.

    H and W must be divisible by 16 (the ViT runs on the 1/16 feature map); any such size works,
    the position embedding (learned for the img_size // 16 grid) is interpolated to other grids.

    Args:
        in_channels: image channels (>= 1).
        num_classes: output channels (>= 1; 1 = binary logits for a sigmoid).
        img_size: training image side (divisible by 16); sets the position-embedding grid.
        base_width: stem channels of the CNN (64 = R50); stages have 4x, 8x, 16x this.
        resnet_layers: bottleneck units of the three CNN stages (3 entries >= 1; R50: 3, 4, 9).
        hidden_size: token width D (ViT-B: 768); divisible by num_heads.
        num_layers: transformer blocks (ViT-B: 12).
        num_heads: attention heads (ViT-B: 12).
        mlp_dim: MLP hidden width (ViT-B: 3072).
        dropout: dropout on embeddings and in the MLP, in [0, 1).
        attention_dropout: dropout on attention probabilities and projection, in [0, 1).
        decoder_channels: output channels of the 4 CUP blocks.
        n_skip: CNN skips used, 0..3 (1/8, then 1/4, then 1/2 resolution).
        pretrained_path: optional local torch file holding a state_dict of this class (or a dict
            with it under "state_dict" / "model"); keys must match exactly (a ValueError lists the
            missing and unexpected ones); a position embedding of another grid is interpolated.
            The official JAX .npz release is not read: convert it to a state_dict first.
    """

    # memory_format=auto keeps it contiguous: GroupNorm and the ViT's token reshapes are slower in NHWC
    # (H100, paper preset: fp16 AMP 167 -> 116 img/s channels_last; benchmarks/RESULTS.md, GPU section)
    prefers_channels_last = False
    # ... but its CNN decoder runs faster NHWC on the CPU: with these parts' weights channels_last (the encoder
    # and ViT contiguous) an eval forward of the cpu preset took 164 instead of 178 ms per batch of 24 and
    # 11.8 instead of 13.9 ms per image (2 cores, 6 interleaved rounds, medians; a 16 -> 16 3 x 3 conv at 96 px:
    # 27 ms NCHW, 6 ms NHWC). memory_format=auto uses it for CPU inference (seg.runtime.to_layout).
    channels_last_parts = ("conv_more", "decoder", "head")

    def __init__(self, in_channels: int = 1, num_classes: int = 1, img_size: int = 224,
                 base_width: int = 64, resnet_layers: Sequence[int] = (3, 4, 9),
                 hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12,
                 mlp_dim: int = 3072, dropout: float = 0.1, attention_dropout: float = 0.0,
                 decoder_channels: Sequence[int] = (256, 128, 64, 16), n_skip: int = 3,
                 pretrained_path: str | None = None):
        super().__init__()
        for name, value in [("in_channels", in_channels), ("num_classes", num_classes),
                            ("img_size", img_size), ("base_width", base_width),
                            ("hidden_size", hidden_size), ("num_layers", num_layers),
                            ("num_heads", num_heads), ("mlp_dim", mlp_dim)]:
            check_positive_int(name, value)
        if img_size % 16:
            raise ValueError(f"img_size must be divisible by 16 (the ViT runs on the 1/16 "
                             f"feature map), got {img_size}")
        resnet_layers, decoder_channels = tuple(resnet_layers), tuple(decoder_channels)
        if len(resnet_layers) != 3:
            raise ValueError(f"resnet_layers must have 3 entries (units per CNN stage), "
                             f"got {resnet_layers!r}")
        for i, n in enumerate(resnet_layers):
            check_positive_int(f"resnet_layers[{i}]", n)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size must be divisible by num_heads, got hidden_size="
                             f"{hidden_size}, num_heads={num_heads}")
        check_probability("dropout", dropout)
        check_probability("attention_dropout", attention_dropout)
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels must have 4 entries (CUP blocks), "
                             f"got {decoder_channels!r}")
        for i, c in enumerate(decoder_channels):
            check_positive_int(f"decoder_channels[{i}]", c)
        if isinstance(n_skip, bool) or n_skip not in (0, 1, 2, 3):
            raise ValueError(f"n_skip must be one of 0, 1, 2, 3, got {n_skip!r}")
        if pretrained_path is not None and not Path(pretrained_path).is_file():
            raise FileNotFoundError(f"TransUNet pretrained_path not found: {pretrained_path}")
        self.n_skip = n_skip
        self.grid = (img_size // 16, img_size // 16)

        w = base_width
        self.encoder = ResNetEncoder(in_channels, w, resnet_layers)
        self.patch_embed = nn.Conv2d(16 * w, hidden_size, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], hidden_size))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.embed_drop = nn.Dropout(dropout)
        self.transformer = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, mlp_dim, dropout, attention_dropout)
            for _ in range(num_layers))
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)

        self.conv_more = ConvBNReLU(hidden_size, HEAD_CHANNELS, bias=False)
        skip_channels = [8 * w, 4 * w, w, 0]
        skip_channels = [c if i < n_skip else 0 for i, c in enumerate(skip_channels)]
        ins = [HEAD_CHANNELS, *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            DecoderBlock(cin, cout, cskip)
            for cin, cout, cskip in zip(ins, decoder_channels, skip_channels))
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=3, padding=1)

        if pretrained_path is not None:
            self.load_pretrained(pretrained_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, 16, "TransUNet", "the ViT runs on the 1/16 feature map")
        B = x.shape[0]
        x, skips = self.encoder(x)              # (B, 16w, H/16, W/16), skips at 1/8, 1/4, 1/2
        x = self.patch_embed(x)                 # (B, D, h, w), h = H/16, w = W/16
        D, h, w = x.shape[1:]
        x = x.flatten(2).transpose(1, 2)        # (B, h*w, D)
        x = self.embed_drop(x + resize_pos_embed(self.pos_embed, self.grid, (h, w)))
        for block in self.transformer:
            x = block(x)                        # (B, h*w, D)
        x = self.encoder_norm(x)                # (B, h*w, D)
        x = x.transpose(1, 2).reshape(B, D, h, w)  # (B, D, h, w)
        x = self.conv_more(x)                   # (B, 512, h, w)
        for i, block in enumerate(self.decoder):
            x = block(x, skips[i] if i < self.n_skip else None)  # (B, dec[i], H/2**(3-i), ...)
        return self.head(x)                     # (B, num_classes, H, W)

    def load_pretrained(self, path: str | Path) -> None:
        """Load a torch state_dict of this class from `path` (strict; see the class docstring)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TransUNet pretrained_path not found: {path}")
        if path.suffix == ".npz":
            raise ValueError(f"TransUNet pretrained_path {path}: .npz (JAX) weights are not read; "
                             "save a torch state_dict of TransUNet with torch.save instead")
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = _find_state_dict(obj)
        if state is None:
            raise ValueError(f"TransUNet pretrained_path {path}: no state_dict found (expected a "
                             "dict of tensors, or one under 'state_dict' or 'model')")
        state = dict(state)
        pos = state.get("pos_embed")
        if (pos is not None and pos.ndim == 3 and pos.shape != self.pos_embed.shape
                and pos.shape[-1] == self.pos_embed.shape[-1]
                and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]):
            g = math.isqrt(pos.shape[1])
            log.info("TransUNet: position embedding resized from %dx%d to %dx%d", g, g, *self.grid)
            state["pos_embed"] = resize_pos_embed(pos, (g, g), self.grid)
        own = self.state_dict()
        missing = sorted(own.keys() - state.keys())
        unexpected = sorted(state.keys() - own.keys())
        if missing or unexpected:
            raise ValueError(f"TransUNet pretrained_path {path}: keys do not match this model: "
                             f"{len(missing)} missing {_preview(missing)}, "
                             f"{len(unexpected)} unexpected {_preview(unexpected)}")
        self.load_state_dict(state, strict=True)
        log.info("TransUNet: loaded %d tensors from %s", len(state), path)


def _find_state_dict(obj: object) -> dict | None:
    """obj itself if it is a dict of tensors, else such a dict under 'state_dict' or 'model'."""
    def is_state(d: object) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor)
                                                       for v in d.values())
    if is_state(obj):
        return obj  # type: ignore[return-value]
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if is_state(obj.get(key)):
                return obj[key]
    return None


def _preview(keys: list[str], n: int = 8) -> str:
    return "[" + ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") + "]"
