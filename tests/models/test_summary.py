"""Tests for seg.models.summary: the CLI on composed configs, FLOP counts checked by hand, size
errors, the layer table and the training benchmark."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from seg import PROJECT_ROOT
from seg.config import build
from seg.models import ResUNet, TransUNet, UNet
from seg.models.summary import bench_train, count_flops, layer_table, main, summarize_model
from seg.models.transunet import Attention
from tests.conftest import compose_cfg


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the CLI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["unet", "resunet", "transunet"])
def test_cli_prints_the_parameter_count_of_the_composed_model(capsys, model):
    overrides = [f"model={model}", "dataset=acdc"]
    code, out, err = run_cli(capsys, *overrides, "--size", "32")
    assert code == 0, err
    expected = n_params(build(compose_cfg([*overrides, "profile.image_size=32"]).model))
    total = re.search(r"^total params:\s+([\d,]+)", out, re.M)
    assert total and int(total.group(1).replace(",", "")) == expected
    assert re.search(rf"^trainable params:\s+{expected:,}$", out, re.M)
    assert "in_channels=1, num_classes=4, image 32x32" in out
    assert "input (1, 1, 32, 32) -> output (1, 4, 32, 32)" in out
    assert re.search(r"^forward FLOPs per image: \d+\.\d\d GFLOPs .*multiply-add = 2", out, re.M)
    assert re.search(r"^head\s+Conv2d\s+\(1, 4, 32, 32\)", out, re.M)


def test_cli_paper_preset_reports_the_published_size(capsys):
    code, out, _ = run_cli(capsys, "model=unet", "profile=paper", "--size", "32")
    assert code == 0
    assert "(paper preset)" in out and "total params:     31,042,369 (31.04 M)" in out


@pytest.mark.parametrize("model, size, constraint", [
    ("unet", 72, r"divisible by 16 \(2\*\*depth, depth=4\); got 72x72"),
    ("resunet", 60, r"divisible by 8 \(2\*\*\(len\(widths\)-1\), 3 stride-2 .*got 60x60"),
    ("transunet", 72, r"img_size must be divisible by 16 \(the ViT runs on the 1/16"),
])
def test_cli_bad_size_names_the_constraint(capsys, model, size, constraint):
    code, out, err = run_cli(capsys, f"model={model}", "--size", str(size))
    assert code == 2 and out == ""
    assert err.startswith(f"error: {model} cannot take {size}x{size} images:")
    assert re.search(constraint, err)


def test_cli_bad_override_is_reported(capsys):
    code, _, err = run_cli(capsys, "model=unetx")
    assert code == 2 and "Could not find 'model/unetx'" in err and "unet" in err


def test_cli_bench_reports_positive_throughput(capsys):
    threads = torch.get_num_threads()
    code, out, err = run_cli(capsys, "model=unet", "--size", "32", "--batch-size", "2",
                             "--bench", "--iters", "1", "--warmup", "1", "--threads", "1")
    assert code == 0, err
    assert torch.get_num_threads() == threads     # restored after the in-process run
    m = re.search(r"^train throughput: ([\d.]+) img/s on cpu \((\d+) threads\), batch 2, 32x32",
                  out, re.M)
    assert m and float(m.group(1)) > 0 and m.group(2) == "1"


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "seg.models.summary", "model=resunet",
                           "--size", "32", "--depth", "1"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "total params:" in proc.stdout and "down.0" not in proc.stdout


# --- FLOPs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("c_in, c_out, k, h, w, bias", [
    (3, 8, 3, 20, 20, True), (1, 16, 5, 12, 7, False), (4, 4, 1, 9, 9, True)])
def test_conv_flops_are_two_per_multiply_add(c_in, c_out, k, h, w, bias):
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)
    expected = 2 * c_in * c_out * k * k * h * w
    assert count_flops(conv, torch.randn(1, c_in, h, w)) == expected
    summary = summarize_model(conv, c_in, (h, w))
    assert summary["flops"] == expected and summary["gflops"] == pytest.approx(expected / 1e9)


def test_attention_flops_are_counted_on_cpu():
    # torch's FlopCounterMode registers only the CUDA attention kernels; the summary adds the CPU one
    n, d, heads = 10, 64, 4
    expected = (2 * n * d * 3 * d          # fused q/k/v projection
                + 2 * 2 * n * n * d        # q k^T and (softmax) v, over all heads
                + 2 * n * d * d)           # output projection
    assert count_flops(Attention(d, heads).eval(), torch.randn(1, n, d)) == expected


def test_unet_flops_scale_with_the_pixel_count():
    model = UNet(base_width=4, depth=2)
    assert count_flops(model, torch.randn(1, 1, 64, 64)) == 4 * count_flops(model, torch.randn(1, 1, 32, 32))


# --- layer table and summary -----------------------------------------------------------------


@pytest.mark.parametrize("model", [
    UNet(base_width=4, depth=2), ResUNet(widths=(4, 8, 16)),
    TransUNet(img_size=32, base_width=8, resnet_layers=(1, 1, 1), hidden_size=16, num_layers=2,
              num_heads=2, mlp_dim=32, decoder_channels=(16, 8, 8, 8))])
def test_top_level_rows_add_up_to_the_total(model):
    summary = summarize_model(model, 1, 32)
    top = [r for r in summary["layers"] if r["depth"] == 1]
    assert sum(r["params"] for r in top) == summary["params"] == n_params(model)
    assert summary["trainable"] == summary["params"]
    assert summary["output_shape"] == (1, 1, 32, 32)
    assert {r["depth"] for r in summary["layers"]} == {1, 2}
    assert model.training   # the summary ran in eval mode and restored the mode


def test_layer_table_shapes_and_call_counts():
    rows = {r["name"]: r for r in layer_table(UNet(base_width=4, depth=2).eval(),
                                              torch.randn(1, 1, 16, 16))}
    assert rows["down.0"]["shape"] == "(1, 4, 16, 16)" and rows["down.0"]["type"] == "DoubleConv"
    assert rows["down"]["shape"] == "-"                  # a ModuleList is never called itself
    assert rows["pool"]["calls"] == 2 and rows["pool"]["shape"] == "(1, 4, 8, 8)"
    assert rows["bottleneck"]["shape"] == "(1, 16, 4, 4)"
    assert rows["head"]["params"] == 4 + 1
    assert not any(name.count(".") > 1 for name in rows)


def test_frozen_parameters_are_not_trainable():
    model = UNet(base_width=4, depth=2)
    model.head.requires_grad_(False)
    summary = summarize_model(model, 1, 16)
    assert summary["params"] - summary["trainable"] == n_params(model.head)


def test_summarize_model_raises_the_models_size_error():
    with pytest.raises(ValueError, match="divisible by 4.*got 18x18"):
        summarize_model(UNet(base_width=4, depth=2), 1, 18)


# --- benchmark -------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 3])
def test_bench_train_returns_positive_images_per_second(num_classes):
    model = UNet(num_classes=num_classes, base_width=4, depth=2)
    before = model.head.weight.detach().clone()
    ips = bench_train(model, 1, num_classes, 16, batch_size=2, iters=2, warmup=1)
    assert isinstance(ips, float) and ips > 0
    assert not torch.equal(before, model.head.weight)      # Adam stepped


def test_bench_train_rejects_no_iterations():
    with pytest.raises(ValueError, match="iters >= 1"):
        bench_train(UNet(base_width=4, depth=2), 1, 1, 16, batch_size=2, iters=0)
