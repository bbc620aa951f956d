"""Tests for seg.models: published sizes, shapes on every size preset, input checks, attention
scaling, position-embedding interpolation, overfitting one batch, pretrained weights."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from seg.models import ResUNet, TransUNet, UNet
from seg.models.transunet import Attention, resize_pos_embed

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model_size"
CLASSES = {"unet": UNet, "resunet": ResUNet, "transunet": TransUNet}
ARCHS = sorted(CLASSES)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(arch: str, size: str = "cpu", in_channels: int = 1, num_classes: int = 1,
          img_size: int = 64) -> torch.nn.Module:
    """Instantiate `arch` from conf/model_size/<arch>_<size>.yaml, as the training run does."""
    kwargs = OmegaConf.to_container(OmegaConf.load(PRESETS / f"{arch}_{size}.yaml"))
    assert kwargs.pop("size") == size
    if arch == "transunet":
        kwargs["img_size"] = img_size
    return CLASSES[arch](in_channels=in_channels, num_classes=num_classes, **kwargs)


# --- size presets ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", ["cpu", "paper"])
def test_preset_file_is_a_model_package_of_constructor_kwargs(arch, size):
    path = PRESETS / f"{arch}_{size}.yaml"
    assert path.read_text().splitlines()[0] == "# @package model"
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg.pop("size") == size
    allowed = set(inspect.signature(CLASSES[arch]).parameters)
    assert set(cfg) <= allowed - {"in_channels", "num_classes", "img_size"}


# --- published parameter counts -------------------------------------------------------------


def test_unet_paper_parameter_count_is_exact():
    assert n_params(build("unet", "paper", in_channels=3)) == 31_043_521
    assert n_params(build("unet", "paper", in_channels=1)) == 31_042_369


def test_resunet_paper_parameter_count():
    model = build("resunet", "paper")
    assert n_params(model) == 8_222_529
    # the paper's 7.8 M leaves out the 1x1 shortcut projections and the BN layers
    extra = sum(p.numel() for name, p in model.named_parameters()
                if "shortcut" in name or "bn" in name)
    assert round((n_params(model) - extra) / 1e6, 1) == 7.8


@pytest.fixture(scope="module")
def transunet_paper():
    return build("transunet", "paper", in_channels=3, num_classes=9, img_size=224)


def test_transunet_paper_parameter_count(transunet_paper):
    n = n_params(transunet_paper)
    assert n == 105_277_081
    assert abs(n - 105.3e6) / 105.3e6 < 0.01
    # the official R50-ViT-B_16 count (105,276,066) is for its default n_classes=2
    head_9 = sum(p.numel() for p in transunet_paper.head.parameters())
    assert n - head_9 + (16 * 9 * 2 + 2) == 105_276_066


def test_paper_presets_forward_one_small_case(transunet_paper):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert transunet_paper.eval()(x).shape == (1, 9, 32, 32)
        for arch in ("unet", "resunet"):
            assert build(arch, "paper", in_channels=3, num_classes=9).eval()(x).shape == \
                (1, 9, 32, 32)


# --- shapes and input checks -----------------------------------------------------------------


# every model takes these: divisible by 16 (UNet depth 4, TransUNet's 1/16 ViT grid) and by 8
# (ResUNet's 3 down-sampling steps); 96 is the cpu profile's size, 256 the paper profile's,
# 224 TransUNet's published one.
SIZES = [64, 96, 224, 256]
# the divisor each architecture needs (cpu and paper presets alike) and how its message says why
CONSTRAINT = {"unet": (16, r"2\*\*depth, depth=4"),
              "resunet": (8, r"2\*\*\(len\(widths\)-1\), 3 stride-2 down-sampling steps"),
              "transunet": (16, "the ViT runs on the 1/16 feature map")}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [1, 4])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", SIZES)
def test_cpu_preset_output_shape(arch, num_classes, in_channels, size):
    assert size % CONSTRAINT[arch][0] == 0
    model = build(arch, "cpu", in_channels, num_classes, img_size=size)   # train mode: BN batch stats
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes, size, size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_preset_non_square_and_batch_one_in_eval(arch):
    model = build(arch, "cpu", 3, 4, img_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 4, 64, 96)


@pytest.mark.parametrize("arch, size", [
    ("unet", 72), ("unet", 100), ("unet", 8), ("transunet", 72), ("transunet", 100),
    ("resunet", 100), ("resunet", 60), ("resunet", 4),   # 3 down-sampling steps: 72 is fine
])
def test_size_not_divisible_raises_naming_the_constraint(arch, size):
    factor, why = CONSTRAINT[arch]
    model = build(arch, "cpu").eval()
    with pytest.raises(ValueError, match=f"divisible by {factor} \\({why}\\); got {size}x{size}"):
        model(torch.randn(1, 1, size, size))
    with pytest.raises(ValueError, match=f"divisible by {factor}.*got {4 * factor}x{size}"):
        model(torch.randn(1, 1, 4 * factor, size))       # one bad side is enough


@pytest.mark.parametrize("arch", ARCHS)
def test_paper_preset_has_the_same_constraint(arch):
    factor, why = CONSTRAINT[arch]
    if arch == "transunet":   # checked at construction: the position-embedding grid is img_size/16
        with pytest.raises(ValueError, match="img_size must be divisible by 16"):
            build(arch, "paper", img_size=72)
        return
    with torch.no_grad(), pytest.raises(ValueError, match=f"divisible by {factor} \\({why}\\)"):
        build(arch, "paper").eval()(torch.randn(1, 1, factor + 4, factor + 4))


def test_input_must_be_4d():
    with pytest.raises(ValueError, match=r"must be \(B, C, H, W\), got shape \(1, 64, 64\)"):
        build("unet", "cpu")(torch.randn(1, 64, 64))


def test_resunet_divisibility_follows_len_widths():
    model = ResUNet(widths=(8, 8, 8, 8, 8)).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="divisible by 16.*got 72x72"):
        model(torch.randn(1, 1, 72, 72))


@pytest.mark.parametrize("make, argument", [
    (lambda: UNet(depth=0), "depth"),
    (lambda: UNet(base_width=2.5), "base_width"),
    (lambda: UNet(dropout=1.0), "dropout"),
    (lambda: UNet(num_classes=0), "num_classes"),
    (lambda: ResUNet(widths=(8,)), "widths"),
    (lambda: ResUNet(widths=(8, 0)), r"widths\[1\]"),
    (lambda: TransUNet(img_size=100), "img_size"),
    (lambda: TransUNet(resnet_layers=(1, 1)), "resnet_layers"),
    (lambda: TransUNet(hidden_size=130, num_heads=4), "num_heads"),
    (lambda: TransUNet(decoder_channels=(64, 32, 16)), "decoder_channels"),
    (lambda: TransUNet(n_skip=4), "n_skip"),
    (lambda: TransUNet(attention_dropout=-0.1), "attention_dropout"),
])
def test_bad_constructor_arguments_are_named(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


# --- TransUNet specifics ---------------------------------------------------------------------


def test_transunet_interpolates_position_embedding():
    model = build("transunet", "cpu", img_size=64).eval()          # 4x4 learned grid
    with torch.no_grad():
        assert model(torch.randn(2, 1, 96, 96)).shape == (2, 1, 96, 96)   # 6x6 tokens
        assert model(torch.randn(1, 1, 64, 96)).shape == (1, 1, 64, 96)   # 4x6 tokens
    pos = model.pos_embed
    assert resize_pos_embed(pos, (4, 4), (4, 4)) is pos
    assert resize_pos_embed(pos, (4, 4), (6, 6)).shape == (1, 36, pos.shape[-1])
    # a constant embedding stays constant under interpolation
    flat = torch.ones(1, 16, 8)
    assert torch.allclose(resize_pos_embed(flat, (4, 4), (6, 3)), torch.ones(1, 18, 8))


def test_attention_is_softmax_qkt_over_sqrt_d_times_v():
    torch.manual_seed(0)
    B, N, D, heads = 2, 5, 16, 4
    d = D // heads
    attn = Attention(D, heads).eval()
    x = torch.randn(B, N, D)
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).split(D, dim=-1)
    split = lambda t: t.reshape(B, N, heads, d).transpose(1, 2)          # (B, h, N, d)
    q, k, v = split(q), split(k), split(v)

    def by_hand(scale):
        y = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v  # (B, h, N, d)
        return attn.proj(y.transpose(1, 2).reshape(B, N, D))
    with torch.no_grad():
        out = attn(x)
        assert torch.allclose(out, by_hand(1 / math.sqrt(d)), atol=1e-6)
        assert not torch.allclose(out, by_hand(math.sqrt(d)), atol=1e-3)  # the seed's bug


def test_transunet_pretrained_path_missing_names_the_path(tmp_path):
    path = tmp_path / "no_such_weights.pt"
    with pytest.raises(FileNotFoundError, match="no_such_weights.pt"):
        TransUNet(img_size=64, base_width=16, hidden_size=32, num_heads=4, mlp_dim=64,
                  pretrained_path=str(path))


def test_transunet_pretrained_state_dict_round_trip(tmp_path):
    kwargs = OmegaConf.to_container(OmegaConf.load(PRESETS / "transunet_cpu.yaml"))
    kwargs.pop("size")
    source = TransUNet(img_size=64, **kwargs)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": source.state_dict(), "config": {"img_size": 64}}, path)
    kwargs["pretrained_path"] = str(path)
    loaded = TransUNet(img_size=64, **kwargs)
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # another img_size: the 4x4 position embedding is resampled to 6x6, the rest is strict
    assert TransUNet(img_size=96, **kwargs).pos_embed.shape == (1, 36, kwargs["hidden_size"])

    state = source.state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"1 missing \[head.bias\].*1 unexpected \[extra.weight\]"):
        TransUNet(img_size=64, **kwargs)


# --- overfitting one phantom batch -----------------------------------------------------------


def phantom_batch(n: int = 4, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (n, 1, size, size): two bright disks each on Gaussian noise; masks 0/1 alike."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(2):
            cy, cx = (torch.rand(2, generator=g) * (size - 24) + 12).tolist()
            r = float(torch.rand(1, generator=g)) * 6 + 5
            disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).float()
            masks[i, 0] = torch.maximum(masks[i, 0], disk)
    images = masks + 0.5 * torch.randn(n, 1, size, size, generator=g)
    return images, masks


@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_preset_overfits_one_batch(arch):
    torch.manual_seed(0)
    x, y = phantom_batch()
    model = build(arch, "cpu", img_size=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    dice = 0.0
    for step in range(1, 301):
        model.train()
        logits = model(x)
        p = torch.sigmoid(logits)
        loss = F.binary_cross_entropy_with_logits(logits, y) \
            + 1 - 2 * (p * y).sum() / (p.sum() + y.sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            with torch.no_grad():
                pred = (model.eval()(x) > 0).float()      # eval mode: BN running stats
            dice = float(2 * (pred * y).sum() / (pred.sum() + y.sum()))
            if dice > 0.95:
                break
    assert dice > 0.95, f"{arch}: Dice {dice:.3f} after {step} steps"
