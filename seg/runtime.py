"""The process's run-time set-up, in one place: seeding, the device picker, the AMP dtype, the memory layout, threads,
and the C allocator's policy for freed memory.

Every command (training, seg.predict, seg.models.summary, the benchmarks) picks its device through
`select_device` and its autocast dtype through `amp_dtype` (docs/design.md, "Runtime").
"""
from __future__ import annotations

import ctypes
import os
import platform
import random
from contextlib import contextmanager

import numpy as np
import torch

AMP_MODES = ("auto", "fp16", "bf16", "off")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: numpy and `random` from the worker's torch seed (itself drawn from the
    loader's generator, so a run seeded the same way repeats)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def select_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if available, else mps, else cpu; anything else is passed to torch.device.

    Raises ValueError for a CUDA / MPS device that is not available, naming the alternatives.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device={name!r} is not a device name ({err}); use auto, cpu, cuda, cuda:N or mps") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device=auto or device=cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ValueError(f"device={name!r} but MPS is not available; use device=auto or device=cpu")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """amp: auto (fp16 on CUDA, off elsewhere) | fp16 | bf16 | off -> autocast dtype, or None for fp32.

    The same rule serves training and seg.predict (which reads `amp` from the checkpoint's config).
    """
    choices = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "off": None}
    if mode not in choices:
        raise ValueError(f"amp={mode!r}; allowed values: {', '.join(AMP_MODES)}")
    if mode == "auto":
        return torch.float16 if device.type == "cuda" else None
    return choices[mode]


def memory_format(mode: str, device: torch.device, model: torch.nn.Module | None = None,
                  inference: bool = False) -> torch.memory_format:
    """memory_format: auto | channels_last | contiguous -> the layout the network's weights are stored in,
    for training (`inference` False) or for the forward passes of validation, the test pass and seg.predict
    (`inference` True). An explicit channels_last / contiguous is used for both.

    auto: channels_last for a model whose class says `prefers_channels_last = True` (U-Net and ResU-Net:
    conv + BatchNorm have NHWC kernels) on CUDA, and on the CPU for inference only; for a model that names
    `channels_last_parts` (TransUNet's decoder), channels_last on the CPU for inference, which `to_layout` and
    `weights_layout` apply to those parts only; contiguous otherwise.
    Measured (benchmarks/RESULTS.md and docs/design.md, "Runtime"): H100 fp16 AMP U-Net paper training 401 ->
    648 img/s, TransUNet 167 -> 116 (GroupNorm and the ViT are slower in NHWC, so it stays contiguous); on 2 CPU
    cores the eval forward runs 1.2-1.4x faster channels_last (U-Net / ResU-Net, cpu and paper presets) while
    the training step runs slower (U-Net cpu 0.43 -> 0.49 s per batch of 16). With the weights channels_last,
    convolutions run NHWC from the first layer on, inputs included. A layout, not a setting of the result:
    not part of config_hash.
    """
    if mode not in MEMORY_FORMATS:
        raise ValueError(f"memory_format={mode!r}; allowed values: {', '.join(MEMORY_FORMATS)}")
    if mode == "auto":
        prefers = bool(getattr(model, "prefers_channels_last", False))
        fast = device.type == "cuda" or (inference and device.type == "cpu")
        parts = bool(getattr(model, "channels_last_parts", ())) and inference and device.type == "cpu"
        mode = "channels_last" if (prefers and fast) or parts else "contiguous"
    return torch.channels_last if mode == "channels_last" else torch.contiguous_format


def to_layout(net: torch.nn.Module, layout: torch.memory_format) -> torch.nn.Module:
    """net's 4D weights into `layout` -> net. channels_last for a model that names `channels_last_parts`
    (TransUNet: its CNN decoder) converts those submodules only, the rest stays as it is: the layout
    memory_format(auto, cpu, inference=True) picks for such a model."""
    parts = getattr(net, "channels_last_parts", ())
    if layout == torch.channels_last and parts:
        for name in parts:
            getattr(net, name).to(memory_format=layout)
        return net
    return net.to(memory_format=layout)


def stored_layout(model: torch.nn.Module) -> torch.memory_format:
    """The layout `model`'s 4D weights are stored in: channels_last if one of them is strided so (and not
    also contiguous, as a 1 x 1 kernel is in both), else contiguous."""
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


@contextmanager
def weights_layout(net: torch.nn.Module, layout: torch.memory_format | None):
    """The network's weights in `layout` for the block (through to_layout), back in the layout they were
    stored in after (also when the block raises). None, or the stored layout: nothing is converted. The
    parameters stay the same objects (an optimizer holding them is unaffected); only their storage's strides
    change."""
    stored = stored_layout(net)
    if layout is None or layout == stored:
        yield
        return
    to_layout(net, layout)
    try:
        yield
    finally:
        net.to(memory_format=stored)


def set_threads(threads: int | None) -> None:
    """torch intra-op threads; None or 0 leaves torch's default."""
    if threads:
        threads = int(threads)
        if threads < 1:
            raise ValueError(f"threads={threads}; expected an integer >= 1 or null")
        torch.set_num_threads(threads)


MALLOC_ENV = "SEGSWEEP_MALLOC"
MALLOC_MODES = ("retain", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3        # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20      # blocks below this come from the reusable heap: glibc's maximum on 64-bit
TRIM_THRESHOLD = 1 << 30       # free memory at the heap's top kept up to this much instead of returned to the OS


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (what a caching allocator does): True where applied.

    torch's CPU tensors come from malloc. By default glibc hands big freed blocks straight back to the OS
    (munmap, heap trimming), so the next step's activations fault in fresh zeroed pages: about a million
    page faults per 8 epochs of a cpu-preset run, 10-15 % of its wall time on this project's 2-core test
    machine (README, "Speed settings"; benchmarks/RESULTS.md, 3b). With blocks up to 32 MiB served from the
    heap and up to 1 GiB of free heap kept, the same run takes almost none, and its peak memory was -2 to +8 %
    of the default's. Call it once, early; it changes no result, only where memory comes from.
    $SEGSWEEP_MALLOC=system leaves malloc as it is; elsewhere than Linux with glibc nothing is done (False).
    Forked DataLoader workers inherit it. A value other than retain / system: ValueError naming the variable.
    """
    mode = os.environ.get(MALLOC_ENV, "retain").strip().lower() or "retain"
    if mode not in MALLOC_MODES:
        raise ValueError(f"${MALLOC_ENV}={os.environ[MALLOC_ENV]!r}; expected one of {', '.join(MALLOC_MODES)} "
                         "(retain: keep freed memory for reuse, the default; system: glibc's own policy)")
    if mode == "system" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)    # the C library this process runs on
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
