"""seg.runtime: the one device picker and the amp rule shared by training and seg.predict, the memory layout,
threads, and the allocator policy."""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from seg import PROJECT_ROOT
from seg.runtime import (amp_dtype, memory_format, retain_freed_memory, seed_everything, select_device, set_threads,
                         stored_layout)


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


@pytest.mark.parametrize("model,prefers,cpu_inference", [("unet", True, True), ("resunet", True, True),
                                                         ("transunet", False, True), (None, False, False)])
def test_memory_format_rule(model, prefers, cpu_inference):
    """auto: channels_last only for the models that say they run faster so (the H100 and CPU measurements):
    on CUDA for training and inference, on the CPU for inference only (the CPU training step is slower NHWC),
    never on MPS (unmeasured); TransUNet (channels_last_parts) on the CPU for inference only; an explicit
    layout wins everywhere, for both."""
    from seg.models import ResUNet, TransUNet, UNet

    net = {"unet": UNet, "resunet": ResUNet, "transunet": TransUNet, None: None}[model]   # the class says it
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    preferred = torch.channels_last if prefers else torch.contiguous_format
    assert memory_format("auto", cuda, net) is preferred
    assert memory_format("auto", cuda, net, inference=True) is preferred
    assert memory_format("auto", cpu, net) is torch.contiguous_format
    assert memory_format("auto", cpu, net, inference=True) is (torch.channels_last if cpu_inference
                                                               else torch.contiguous_format)
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


def test_transunet_infers_with_its_decoder_channels_last_and_the_rest_contiguous():
    """to_layout / weights_layout convert only TransUNet's channels_last_parts (its CNN decoder and head), give
    every weight back contiguous after, and the forward computes what the contiguous one does; seg.predict loads
    it that way."""
    from seg.config import build
    from seg.runtime import to_layout, weights_layout
    from tests.conftest import compose_cfg

    torch.manual_seed(0)
    net = build(compose_cfg(["model=transunet", "profile=cpu", "profile.image_size=32"]).model).eval()
    assert memory_format("auto", torch.device("cpu"), net, inference=True) is torch.channels_last

    def layouts():     # per part: are its kernels channels_last? (1 x 1 or 1-input-channel ones cannot tell)
        out = {}
        for name, p in net.named_parameters():
            if p.dim() == 4 and p.shape[-1] > 1 and p.shape[1] > 1:
                out.setdefault(name.split(".")[0], set()).add(not p.is_contiguous())
        return out

    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = net(x)
        with weights_layout(net, torch.channels_last):
            seen = layouts()
            got = net(x)
        assert seen == {"encoder": {False}, "conv_more": {True}, "decoder": {True}, "head": {True}}
        assert layouts() == {"encoder": {False}, "conv_more": {False}, "decoder": {False}, "head": {False}}
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert to_layout(net, torch.contiguous_format) is net and stored_layout(net) is torch.contiguous_format
        net.to(memory_format=torch.channels_last)                          # an explicit channels_last: all of it
        assert stored_layout(net) is torch.channels_last and layouts()["encoder"] == {True}


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


# Training steps of a small U-Net in a fresh process: minor page faults per step under glibc's own policy, then
# under retain_freed_memory (same process, after warm-up steps).
_FAULTS = textwrap.dedent("""
    import json, os, resource, torch, torch.nn.functional as F
    from seg.models import UNet
    from seg.runtime import retain_freed_memory
    torch.manual_seed(0)
    net = UNet(in_channels=1, num_classes=1, base_width=12, depth=4)
    opt = torch.optim.Adam(net.parameters())
    x, y = torch.randn(8, 1, 96, 96), torch.rand(8, 1, 96, 96).round()
    def faults_per_step(warmup=3, steps=5):
        # the median of single steps after a warm-up: one step meeting a stray burst of faults on a shared machine
        # does not decide it (one run saw 1,386 per retained step in the mean of two)
        def step():
            loss = F.binary_cross_entropy_with_logits(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        for _ in range(warmup):
            step()
        counts = []
        for _ in range(steps):
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
        return sorted(counts)[len(counts) // 2]
    system = faults_per_step()
    os.environ["SEGSWEEP_MALLOC"] = "retain"
    print(json.dumps({"system": system, "applied": retain_freed_memory(), "retain": faults_per_step()}))
""")


GLIBC = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc's mallopt only")


@GLIBC
def test_retained_freed_memory_takes_the_page_faults_out_of_training_steps():
    """Under glibc's default policy each training step faults in thousands of fresh pages (the freed activations
    went back to the OS); with retain_freed_memory the steps reuse the heap and fault a small fraction of that."""
    env = {**os.environ, "SEGSWEEP_MALLOC": "system"}
    proc = subprocess.run([sys.executable, "-c", _FAULTS], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["applied"] is True
    assert out["system"] > 500, out                   # the default policy: fresh pages every step
    assert out["retain"] < out["system"] / 3, out     # medians here: 0-126 against 9,000-12,000 per step


@GLIBC
def test_retained_freed_memory_from_a_fresh_process_serves_big_blocks_from_the_heap():
    """Set at a process's start (as seg.train.run does), both settings matter: 8 MiB blocks allocated and freed
    again come from the heap without a fault. With the trim threshold alone the mmap threshold stays at glibc's
    128 KiB and every such block is mapped afresh (about 500 faults each, measured); glibc's own policy: ~50."""
    code = textwrap.dedent("""
        import resource
        import numpy as np
        from seg.runtime import retain_freed_memory
        assert retain_freed_memory()
        def churn():
            for _ in range(20):
                block = np.ones(1 << 20)          # 8 MiB, freed when the name is bound again
        churn()
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        churn()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 20)
    """)
    env = {k: v for k, v in os.environ.items() if k != "SEGSWEEP_MALLOC"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) < 5      # faults per block


def test_malloc_policy_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("SEGSWEEP_MALLOC", "system")
    assert retain_freed_memory() is False             # leaves glibc's policy as it is
    monkeypatch.setenv("SEGSWEEP_MALLOC", "keep")
    with pytest.raises(ValueError, match=r"\$SEGSWEEP_MALLOC='keep'; expected one of retain, system"):
        retain_freed_memory()
    monkeypatch.delenv("SEGSWEEP_MALLOC")
    monkeypatch.setattr("seg.runtime.platform.libc_ver", lambda: ("musl", ""))
    assert retain_freed_memory() is False             # not glibc: nothing to set
