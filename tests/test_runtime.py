"""seg.runtime: the one device picker and the amp rule shared by training and seg.predict."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from seg.runtime import amp_dtype, memory_format, seed_everything, select_device, set_threads, stored_layout


def test_select_device_cpu_and_auto():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert select_device("auto").type == "cuda"
    else:
        assert select_device("auto").type in ("cpu", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_unavailable_cuda_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match=r"device='cuda:1' but CUDA is not available; use device=auto or device=cpu"):
        select_device("cuda:1")


def test_a_bad_device_name_is_named():
    with pytest.raises(ValueError, match=r"device='gpu0' is not a device name"):
        select_device("gpu0")


@pytest.mark.parametrize("mode,cpu,cuda", [("auto", None, torch.float16), ("off", None, None),
                                           ("fp16", torch.float16, torch.float16),
                                           ("bf16", torch.bfloat16, torch.bfloat16)])
def test_amp_dtype_rule(mode, cpu, cuda):
    assert amp_dtype(mode, torch.device("cpu")) is cpu
    assert amp_dtype(mode, torch.device("cuda")) is cuda


def test_amp_dtype_refuses_unknown_modes():
    with pytest.raises(ValueError, match=r"amp='fp8'; allowed values: auto, fp16, bf16, off"):
        amp_dtype("fp8", torch.device("cpu"))


@pytest.mark.parametrize("model,prefers", [("unet", True), ("resunet", True), ("transunet", False), (None, False)])
def test_memory_format_rule(model, prefers):
    """auto: channels_last only for the models that say they run faster so (the H100 and CPU measurements):
    on CUDA for training and inference, on the CPU for inference only (the CPU training step is slower NHWC),
    never on MPS (unmeasured); an explicit layout wins everywhere, for both."""
    from seg.models import ResUNet, TransUNet, UNet

    net = {"unet": UNet, "resunet": ResUNet, "transunet": TransUNet, None: None}[model]   # the class says it
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    preferred = torch.channels_last if prefers else torch.contiguous_format
    assert memory_format("auto", cuda, net) is preferred
    assert memory_format("auto", cuda, net, inference=True) is preferred
    assert memory_format("auto", cpu, net) is torch.contiguous_format
    assert memory_format("auto", cpu, net, inference=True) is preferred
    assert memory_format("auto", mps, net, inference=True) is torch.contiguous_format
    for device in (cpu, cuda):
        for inference in (False, True):
            assert memory_format("channels_last", device, net, inference) is torch.channels_last
            assert memory_format("contiguous", device, net, inference) is torch.contiguous_format


def test_stored_layout_reads_the_strides_of_the_4d_weights():
    """A 1 x 1 kernel is contiguous in both layouts, so the first 3 x 3 kernel decides; no 4D weight: contiguous."""
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.Conv2d(3, 4, 3))
    assert stored_layout(net) is torch.contiguous_format
    net.to(memory_format=torch.channels_last)
    assert net[0].weight.is_contiguous()                  # the 1 x 1 kernel cannot tell
    assert stored_layout(net) is torch.channels_last
    assert stored_layout(torch.nn.Linear(2, 2)) is torch.contiguous_format


def test_memory_format_refuses_unknown_modes():
    with pytest.raises(ValueError, match=r"memory_format='nhwc'; allowed values: auto, channels_last, contiguous"):
        memory_format("nhwc", torch.device("cpu"))


def test_seed_everything_repeats_every_stream_and_threads_are_set():
    seed_everything(7)
    a = (torch.rand(2), np.random.rand(2), random.random())
    seed_everything(7)
    b = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)
        assert torch.get_num_threads() == 1          # None leaves it as it is
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads=-2"):
        set_threads(-2)
