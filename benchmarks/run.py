"""`make bench`: measured speed against the machine's own matmul ceiling and against the peers.

    python -m benchmarks.run                      # from the repository root: every section, ~15 min on 2 shared cores
    python -m benchmarks.run --quick              # fewer repeats, no paper presets
    python -m benchmarks.run --sections roofline,step,data
    python -m benchmarks.run --threads 1          # on a machine loaded beyond its cores (thread barriers stall)
    python -m benchmarks.run --render outputs/bench/bench.json   # re-derive and print a saved run's tables

Writes outputs/bench/bench.json (everything measured) and outputs/bench/bench.md (the tables), and
prints bench.md. Every number is measured in this run; ratios are taken between numbers measured in
this same run on this same machine (absolute times on a shared machine are noise).

Sections, in order:
  roofline  dense fp32 matmul GFLOP/s (n = 1024 and 2048, median of timed windows), measured first
            and again after each section; the best of these is the ceiling (MFU is recomputed
            against it at the end).
  step      forward + loss + backward + Adam step on pre-loaded random tensors
            (seg.models.summary.bench_train) for every model's `cpu` preset at the cpu profile's
            size and batch, and its `paper` preset at batch 1; FLOPs per image of the forward pass
            (seg.models.summary.count_flops) and of the training step (forward + backward, counted
            with torch.utils.flop_counter); MFU = achieved training FLOP/s / matmul ceiling.
  loop      the real training loop (seg.train.run: DataLoader with augmentation, loss, grad clip,
            validation Dice/IoU, checkpoints, MLflow logging to a temporary sqlite store) for 8 epochs with
            trainer.val_every=2; epoch 1 warms up, 2..8 are measured. A hook on the engine's loop (LoopProbe, a
            seg.engine.loop.Hook) records where the time goes (on_span: DataLoader wait, training,
            validation forward / metrics, logging) and runs one bare step after every training step
            (left out of the epochs' time), so each loop step is compared with a bare step a fraction of a
            second away, by wall time and by process CPU time. loop / step for a
            val_every=2 cycle (the goal, >= 0.90) and for validation every epoch; shares data / step /
            val / checkpoint+log. The loop's code runs unchanged.
  malloc    benchmarks/bench_malloc.py (a U-Net cpu-preset training run) in fresh processes under
            $SEGSWEEP_MALLOC=system (glibc's own policy) and =retain (seg.runtime.retain_freed_memory,
            what every run and every other section uses), alternating, 2 rounds: wall and CPU time,
            minor page faults, peak memory.
  eval3d    the 3D evaluation's share (validation + test pass with HD / HD95 / ASSD) of a cpu-profile ACDC
            phantom run (the profile's 16 epochs), measured by the same hook, and projected to
            trainer.val_every=2.
  peers     MONAI BasicUNet and UNet (num_res_units=2) at the parameter count nearest to our U-Net
            `cpu` preset, and segmentation_models_pytorch's Unet with the encoder nearest in parameters
            (encoder_weights=None), same step benchmark, interleaved rounds with ours; img/s and per-GFLOP
            ratios; our `paper` U-Net against smp's Unet nearest to it at 256 px.
  data      reader, reader + augmentation, and DataLoader (default workers of the cpu profile)
            throughput per phantom dataset, against the fastest model's step throughput.
  metrics   benchmarks/bench_metrics.py (HD95 vs MONAI, Dice/IoU per 1000 images), run as a subprocess.
  predict   benchmarks/bench_predict.py (seg.predict img/s per preset), run as a subprocess if present.
  gpu       where CUDA is available: bf16 matmul ceiling, paper presets fp32 / fp16 / bf16 AMP,
            channels_last, torch.compile; else bench.md says that no GPU was available. The fuller GPU
            benchmark (MFU against the card's peak, fp16 training, predict on CUDA) is benchmarks/gpu.py
            (`make bench-gpu`).

After a full run (every CPU section, not --quick) bench.md is also written to benchmarks/RESULTS.md and
the README's generated performance table is replaced (--no-results: neither). bench.json's "keys"
holds the headline numbers under flat names (loop_efficiency_<model>_cpu, hd95_speedup, ...).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from seg import PROJECT_ROOT as ROOT
from seg.config import build, compose
from seg.data import open_dataset
from seg.engine.inference import folded_batchnorm
from seg.engine.loop import Hook
from seg.models.summary import _EXTRA_FLOPS, _sync, bench_train, count_flops, loss_for, n_params, random_batch
from seg.runtime import memory_format, retain_freed_memory, weights_layout

OUT = ROOT / "outputs" / "bench"
MODELS = ("unet", "resunet", "transunet")
DATASETS = ("covid_infection", "acdc")   # dataset.root unset: the embedded phantoms
SECTIONS = ("roofline", "step", "loop", "malloc", "eval3d", "peers", "data", "metrics", "predict", "gpu")
GOALS = {"loop": 0.90, "data": 3.0}
SMP_VERSION = "0.6.0"
# smp encoders tried for the parameter count nearest to our U-Net presets (no pretrained weights)
SMP_ENCODERS = ("timm-regnetx_002", "timm-regnety_002", "mit_b0", "efficientnet-b0", "mobilenet_v2", "resnet18",
                "resnet34", "vgg19_bn", "resnext50_32x4d", "resnet50")


# where the loop's time goes when it is slower than the bare step, and what would fix it
FIXES = {
    "data": "the wait for the next batch: without loader workers (the cpu profile's num_workers=0) a nice-19 "
            "thread augments it while the step runs (seg.background.prefetched; decoding is cached: "
            "seg.data.cache), about 1 ms of albumentations per 96 px image, mostly the per-call overhead of seven "
            "transforms; what is left is the first batch of each epoch and batches the thread could not finish "
            "while both cores ran the step",
    "step_extra": "the loop's steps cost more than the bare step: fresh augmented batches, and the background "
                  "work sharing the CPU with the steps (the batch read ahead and the checkpoint write, both at "
                  "nice 19: 60-100 ms of CPU per write of TransUNet's 25 MB last.pt, at most every "
                  "trainer.checkpoint_every_s; the MLflow metrics, about 12 ms per epoch); the dice loss, grad "
                  "clipping and the per-step isfinite check and loss.item() measured under 3 ms per step together",
    "val_network": "validation's own forward passes (network work the bare step does not include; up to 32 "
                   "images per forward pass): validate every N epochs (trainer.val_every)",
    "val_forward": "validation forward beyond the bare network (logits resized back to the original size, "
                   "threshold, copy to numpy): resize the predicted labels instead of the logits",
    "val_metrics": "validation Dice/IoU per case and structure: vectorise over the val cases",
    "val_read": "reading and resizing the val cases from disk every epoch: cache the decoded, resized val "
                "images in memory after the first epoch",
    "log": "the epoch-end hooks; the MLflow metrics write itself runs in a background thread (it took 14-38 ms "
           "per epoch in the loop thread before)",
    "other": "the epoch end outside the spans: the weights check, the checkpoint snapshot (10-25 ms) and scheduler "
             "step; a full garbage collection there took 0.55-0.66 s before fit froze the set-up's objects",
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, flush=True)


def machine_info() -> dict:
    """CPU model, cores, torch and Python versions, load average and the UTC date."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    info.update(git_info())
    return info


def git_info() -> dict:
    """{"commit": HEAD's hash, "dirty": uncommitted changes to tracked files?} (empty outside a checkout)."""
    from seg.tracking import git_output

    commit = git_output("rev-parse", "HEAD")
    if commit is None:
        return {}
    return {"commit": commit, "dirty": bool(git_output("status", "--porcelain", "--untracked-files=no"))}


# ---------------------------------------------------------------------------------------------
# FLOPs of a training step
# ---------------------------------------------------------------------------------------------


def _sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# summary's CPU forward-attention formulas, plus the CPU attention backward (torch registers CUDA's only)
TRAIN_FLOPS = {**_EXTRA_FLOPS, **{getattr(torch.ops.aten, name): _sdpa_backward_flop
                                  for name in ("_scaled_dot_product_flash_attention_for_cpu_backward",)
                                  if hasattr(torch.ops.aten, name)}}


def train_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> int:
    """FLOPs of forward + loss + backward of (x, y) (multiply-add = 2; convs, matmuls, attention).

    Train mode; the gradients are dropped afterwards (the optimizer step is elementwise, not counted).
    """
    model.train()
    with FlopCounterMode(display=False, custom_mapping=TRAIN_FLOPS) as counter:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# 1. roofline
# ---------------------------------------------------------------------------------------------


def matmul_gflops(n: int = 1024, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  repeats: int = 5, window: float = 0.2) -> float:
    """Dense (n x n) @ (n x n) throughput in GFLOP/s (2 n^3 FLOPs per product).

    One untimed product, then `repeats` windows of at least `window` seconds each; the median
    window rate is returned.
    """
    if n < 1 or repeats < 1 or window <= 0:
        raise ValueError(f"need n >= 1, repeats >= 1, window > 0; got n={n}, repeats={repeats}, window={window}")
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    c = a @ b
    _sync(device)
    rates = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=c)
            _sync(device)
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= window:
                break
        rates.append(2.0 * n ** 3 * count / elapsed / 1e9)
    return statistics.median(rates)


def section_roofline(quick: bool) -> dict:
    sizes = (512, 1024) if quick else (1024, 2048)
    rates = {str(n): matmul_gflops(n, repeats=3 if quick else 5, window=0.1 if quick else 0.25) for n in sizes}
    ceiling = max(rates.values())
    log("  fp32 matmul: " + ", ".join(f"n={n} {r:.1f} GFLOP/s" for n, r in rates.items())
        + f" -> ceiling {ceiling:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    return {"gflops_by_n": rates, "ceiling_gflops": ceiling, "threads": torch.get_num_threads(), "dtype": "float32"}


# ---------------------------------------------------------------------------------------------
# 2. model step
# ---------------------------------------------------------------------------------------------


def step_row(label: str, model: nn.Module, in_channels: int, num_classes: int, size: int, batch: int,
             iters: int, warmup: int, ceiling: float | None) -> dict:
    """Params, forward and training FLOPs per image, training img/s (bench_train), MFU of one model."""
    fwd = count_flops(model.eval(), torch.randn(1, in_channels, size, size))
    x, y = random_batch(1, in_channels, num_classes, size)
    train = train_flops(model, x, y, loss_for(num_classes))
    ips = bench_train(model, in_channels, num_classes, size, batch, iters=iters, warmup=warmup)
    achieved = ips * train / 1e9
    return {"model": label, "params": n_params(model), "size": size, "batch": batch,
            "fwd_gflops_per_img": fwd / 1e9, "train_gflops_per_img": train / 1e9, "img_per_s": ips,
            "achieved_gflops": achieved, "mfu": achieved / ceiling if ceiling else None,
            "iters": iters, "warmup": warmup}


def preset(model: str, profile: str, dataset: str = "covid_infection", extra: Sequence[str] = ()):
    """The composed run config of a model preset (as run.py would see it)."""
    return compose([f"model={model}", f"profile={profile}", f"dataset={dataset}", *extra])


def section_step(quick: bool, ceiling: float | None) -> dict:
    rows = []
    plan = [(m, "cpu", None) for m in MODELS] + ([] if quick else [(m, "paper", 1) for m in MODELS])
    for model_name, profile, batch in plan:
        cfg = preset(model_name, profile)
        size = int(cfg.dataset.image_size)
        batch = batch or int(cfg.trainer.batch_size)
        iters, warmup = ((3, 1) if quick else (8, 2)) if profile == "cpu" else (2, 0)  # paper: FLOP count warms up
        torch.manual_seed(0)
        row = step_row(f"{model_name} {profile}", build(cfg.model), int(cfg.dataset.in_channels),
                       int(cfg.dataset.num_classes), size, batch, iters, warmup, ceiling)
        row.update(name=model_name, profile=profile)
        rows.append(row)
        log(f"  {row['model']:16s} {size}px batch {batch:2d}: {row['img_per_s']:8.2f} img/s, "
            f"{row['train_gflops_per_img']:.2f} train GFLOP/img, {row['achieved_gflops']:.1f} GFLOP/s, "
            f"MFU {_pct(row['mfu'])}")
    return {"rows": rows, "loss": "BCE-with-logits (1 class)", "optimizer": "Adam", "dtype": "float32"}


# ---------------------------------------------------------------------------------------------
# 3. loop efficiency
# ---------------------------------------------------------------------------------------------


class LoopProbe(Hook):
    """A hook on the engine's loop (seg.engine.loop.Hook.on_span): records the timed phases it reports,
    in order, as (kind, start, end, info) spans: "train" (info: images seen, seconds waiting for the
    DataLoader), "eval" (info "val" / "test"), "forward" (images predicted) and "metrics" inside an
    evaluation, "log" (the epoch-end hooks: MLflow). The loop's code runs unchanged.

    bare: optional BareStep (one bare training step of another copy of the model per call -> (wall s, CPU s)).
    It runs twice at fit start (warm-up) and then once after every optimizer step of the loop (after_step), so
    each training step is paired with a bare step a fraction of a second away: on a shared machine whose speed
    drifts from second to second (bare-step rates 29-47 img/s within one run), both sides see the same
    machine. Each such call is a "probe" span (info: images, wall s, CPU s of the bare step, CPU s of the whole
    call) and is left out of the epoch's wall, train and CPU time.
    """

    def __init__(self, bare: "BareStep | None" = None):
        self.spans: list[tuple[str, float, float, Any]] = []
        self.bare = bare
        self.marks: list[tuple[str, float, float]] = []      # ("open" / "close" / "end", wall, process CPU time)

    def on_span(self, kind: str, start: float, end: float, info: Any) -> None:
        self.spans.append((kind, start, end, info))

    def _mark(self, what: str) -> None:
        self.marks.append((what, time.perf_counter(), time.process_time()))

    def _probe(self) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        wall_s, cpu_s = self.bare()
        self.spans.append(("probe", start, time.perf_counter(),
                           {"images": self.bare.batch, "wall_s": wall_s, "cpu_s": cpu_s,
                            "call_cpu_s": time.process_time() - cpu}))

    def on_fit_start(self, ctx) -> None:
        if self.bare is not None:
            self.bare()                         # warm-up: allocations, Adam's state, oneDNN primitives
            self.bare()

    def after_step(self, ctx, loss: float, images: int) -> None:
        if self.bare is not None:
            self._probe()

    def on_epoch_start(self, ctx) -> None:
        self._mark("close")                     # the previous epoch's process CPU time ends here
        self._mark("open")

    def on_epoch_end(self, ctx, metrics) -> None:
        self._mark("end")                       # the last hook: after MLflow logging and the checkpoint hand-off

    def on_fit_end(self, ctx) -> None:
        self._mark("close")

    def epochs(self) -> list[dict]:
        """Per epoch: wall (train start to the next epoch's train start; the last epoch to the end of its
        epoch-end hooks, or without that mark to the test evaluation), train, data wait, val, log and other
        seconds, process CPU seconds, the images seen, whether it was validated, and the bare step's img/s over
        the probes inside the epoch (images / summed seconds, by wall and by CPU time; None without probes).
        Probe spans are left out of the wall, train and CPU times.

        The last epoch stops at its epoch-end mark because what follows it happens once per run, not once
        per epoch: fit's end waits for the last background checkpoint write (every other epoch pays for its
        predecessor's write by sharing the CPU with it), and the best weights are reloaded for the test pass."""
        trains = [i for i, s in enumerate(self.spans) if s[0] == "train"]
        out = []
        for k, i in enumerate(trains):
            start = self.spans[i][1]
            last_end = None
            if k + 1 < len(trains):
                stop = self.spans[trains[k + 1]][1]
            else:
                last_end = next((m for m in self.marks if m[0] == "end" and m[1] > start), None)
                tests = [s[1] for s in self.spans[i:] if s[0] == "eval" and s[3] == "test"]
                stop = last_end[1] if last_end else tests[0] if tests else max(s[2] for s in self.spans[i:])
            inside = [s for s in self.spans if start <= s[1] < stop]
            span = lambda kind: sum(s[2] - s[1] for s in inside if s[0] == kind)  # noqa: E731
            info = self.spans[i][3]
            probes = [s for s in inside if s[0] == "probe"]
            in_train = sum(s[2] - s[1] for s in probes if s[1] < self.spans[i][2])
            train = self.spans[i][2] - self.spans[i][1] - in_train
            val, logging_, probe = span("eval"), span("log"), span("probe")
            forward, metrics = span("forward"), span("metrics")
            val_cases = sum(s[3] for s in inside if s[0] == "forward")      # images predicted
            wall = stop - start - probe
            opened = [m for m in self.marks if m[0] == "open" and m[1] <= start]
            closed = [last_end] if last_end else [m for m in self.marks if m[0] == "close" and m[1] > start]
            cpu = (closed[0][2] - opened[-1][2] - sum(s[3]["call_cpu_s"] for s in probes)
                   if opened and closed else None)
            images = sum(s[3]["images"] for s in probes)
            out.append({"wall_s": wall, "train_s": train, "data_s": info["data_wait"],
                        "compute_s": train - info["data_wait"], "val_s": val, "val_forward_s": forward,
                        "val_metrics_s": metrics, "val_read_s": val - forward - metrics, "log_s": logging_,
                        "other_s": wall - train - val - logging_, "seen": info["seen"],
                        "val_cases": val_cases, "validated": any(s[0] == "eval" and s[3] == "val" for s in inside),
                        "cpu_s": cpu, "bare_images": images, "bare_wall_s": [s[3]["wall_s"] for s in probes],
                        "bare_cpu_s": [s[3]["cpu_s"] for s in probes],
                        "bare": _rate(images, [s[3]["wall_s"] for s in probes]),
                        "bare_cpu": _rate(images, [s[3]["cpu_s"] for s in probes])})
        return out


def _rate(images: int, seconds: Sequence[float]) -> float | None:
    """images / the summed seconds; None without a positive total."""
    total = sum(seconds)
    return images / total if total > 0 else None


class BareStep:
    """The bare training step of seg.models.summary.bench_train, one per call: a fixed random batch, BCE / CE,
    backward, Adam, fp32, CPU -> (wall s, process CPU s) of the step."""

    def __init__(self, model: nn.Module, in_channels: int, num_classes: int, size: int, batch: int, seed: int = 0):
        self.model, self.batch = model.train(), batch
        self.x, self.y = random_batch(batch, in_channels, num_classes, size, seed)
        self.loss_fn = loss_for(num_classes)
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def __call__(self) -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        loss = self.loss_fn(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - w0, time.process_time() - c0


def sum_epochs(epochs: Sequence[dict]) -> dict:
    """The epochs' seconds and counts added up (one "epoch" dict for loop_breakdown)."""
    keys = ("wall_s", "train_s", "data_s", "compute_s", "val_s", "val_forward_s", "val_metrics_s", "val_read_s",
            "log_s", "other_s", "seen", "val_cases")
    out = {k: sum(e[k] for e in epochs) for k in keys}
    out["cpu_s"] = None if any(e.get("cpu_s") is None for e in epochs) else sum(e["cpu_s"] for e in epochs)
    return out


def cycle_efficiency(epochs: Sequence[dict], val_every: int, step_ips: float, key: str = "wall_s") -> float | None:
    """Loop / bare step of a long run validating every `val_every` epochs, from measured epochs: per
    cycle, val_every epochs' images / (one validated epoch's wall + val_every - 1 unvalidated epochs'
    walls), with the mean validated and unvalidated epoch of the measurement. None if a kind is missing."""
    done = [e for e in epochs if e["validated"]]
    skipped = [e for e in epochs if not e["validated"]]
    if not done or (val_every > 1 and not skipped):
        return None
    seen = statistics.mean(e["seen"] for e in epochs)
    if any(e.get(key) is None for e in epochs):
        return None
    wall = statistics.mean(e[key] for e in done)
    if val_every > 1:
        wall += (val_every - 1) * statistics.mean(e[key] for e in skipped)
    return val_every * seen / wall / step_ips


def loop_breakdown(epoch: dict, step_ips: float, forward_ips: float | None = None,
                   loop_step_ips: float | None = None) -> dict:
    """Where the epoch's wall time goes beyond the bare training steps, per cause, and the largest.

    network_s: the bare training steps for the epoch's images (seen / step_ips). With forward_ips
    (bare forward img/s at evaluate's batch of 16), validation's own forward passes count as network work too
    ("val_network"), and "suite" is the ratio of all bare network work to the wall time: what the
    suite adds on top of the network. Parts: data (DataLoader wait), step_extra (the loop's steps
    beyond the bare ones), val_network, val_forward (beyond bare: resize back, threshold), val_metrics,
    val_read, log, other. bottleneck: the largest part; suite_bottleneck: the largest part that is
    not network work. With loop_step_ips (train_epoch's img/s on pre-loaded tensors), loop_step_s says
    how much of step_extra train_epoch's own step accounts for (informative: the split of step_extra
    between the two is noisier than step_extra itself).
    """
    network = epoch["seen"] / step_ips
    val_network = epoch["val_cases"] / forward_ips if forward_ips else 0.0
    parts = {"data": epoch["data_s"], "step_extra": epoch["compute_s"] - network, "val_network": val_network,
             "val_forward": epoch["val_forward_s"] - val_network, "val_metrics": epoch["val_metrics_s"],
             "val_read": epoch["val_read_s"], "log": epoch["log_s"], "other": epoch["other_s"]}
    overhead = {k: v for k, v in parts.items() if k != "val_network"}
    loop_step = epoch["seen"] / loop_step_ips - network if loop_step_ips else None
    return {"network_s": network, "val_network_s": val_network, "overhead_s": parts, "loop_step_s": loop_step,
            "loop_step_share": loop_step / epoch["wall_s"] if loop_step is not None else None,
            "bottleneck": max(parts, key=parts.get), "suite_bottleneck": max(overhead, key=overhead.get),
            "suite": (network + val_network) / epoch["wall_s"] if forward_ips else None,
            "share_of_wall": {k: v / epoch["wall_s"] for k, v in parts.items()}}


def bench_loop_step(cfg, model: nn.Module, batches: int = 5, seed: int = 0) -> float:
    """img/s of seg.engine.loop.train_epoch itself on pre-loaded random batches shaped as the loader yields
    them (x (B, C, S, S), y (B, S, S) int64), with the run's loss, optimizer, accumulation and grad
    clipping: the loop's step without data loading. One untimed call, then `batches` calls of one
    batch each; batch size / the median call time (as bench_train times the bare step)."""
    from seg.engine.loop import train_epoch

    size, batch = int(cfg.dataset.image_size), int(cfg.trainer.batch_size)
    in_ch, n_cls = int(cfg.dataset.in_channels), int(cfg.dataset.num_classes)
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(batch, in_ch, size, size, generator=g),
             torch.randint(0, max(n_cls, 2), (batch, size, size), generator=g)) for _ in range(batches)]
    loss_fn = build(cfg.loss)
    optimizer = build(cfg.optimizer, params=model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    args = (loss_fn, optimizer, scaler, torch.device("cpu"), None, int(cfg.trainer.accumulate), cfg.trainer.grad_clip)
    train_epoch(model, data[:1], *args, desc="warm-up")
    times = []
    for i in range(batches):
        start = time.perf_counter()
        train_epoch(model, data[i:i + 1], *args, desc="pre-loaded")
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def bench_forward(model: nn.Module, in_channels: int, size: int, batch: int = 1, window: float = 0.3,
                  repeats: int = 3, layout: torch.memory_format | None = None) -> float:
    """Inference img/s of model on pre-loaded (batch, in_channels, size, size) noise: eval, no_grad,
    one untimed call, then the median of `repeats` timed windows; with the weights in `layout` (validation's:
    seg.runtime.memory_format(..., inference=True)) and the BatchNorms folded for the measurement, as
    seg.engine.inference.evaluate runs."""
    x = torch.randn(batch, in_channels, size, size)
    model.eval()
    with weights_layout(model, layout), folded_batchnorm(model), torch.no_grad():
        model(x)
        ips = rate(lambda: (model(x), batch)[1], window, repeats)
    model.train()
    return ips


LOOP_EPOCHS = 8            # epoch 1 warms up; 2..8 are measured (validated: 2, 4, 6, 8; not: 3, 5, 7). An epoch of
                           # the phantom is 6 steps (2-4 s): with 5 epochs one unvalidated epoch stood for half
                           # of the val_every=2 cycle
LOOP_VAL_EVERY = 2         # the setting the loop-efficiency goal is measured with (trainer.val_every)


def loop_row(model_name: str, dataset: str, workdir: Path, quick: bool, threads: int | None = None) -> dict:
    from seg.train import run

    epochs = 3 if quick else LOOP_EPOCHS
    overrides = ["profile=cpu", "device=cpu", f"trainer.epochs={epochs}", "trainer.early_stopping=0",
                 f"trainer.val_every={LOOP_VAL_EVERY}", "tracking.overlays=0", "tracking.log_model=false",
                 f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"paths.output={workdir}/outputs",
                 f"threads={threads or 'null'}", "resume=false"]
    cfg = preset(model_name, "cpu", dataset, overrides)
    size, batch = int(cfg.dataset.image_size), int(cfg.trainer.batch_size)
    in_ch, n_cls = int(cfg.dataset.in_channels), int(cfg.dataset.num_classes)
    torch.manual_seed(0)
    bare = build(cfg.model)
    probe = LoopProbe(BareStep(bare, in_ch, n_cls, size, batch))
    start = time.perf_counter()
    run(cfg, hooks=[probe])
    run_s = time.perf_counter() - start
    # seg.engine.inference.evaluate predicts validation images up to the loop's val_batch_size per forward pass
    forward_ips = bench_forward(bare, in_ch, size, batch=24, window=0.2 if quick else 0.4,
                                layout=memory_format(str(cfg.memory_format), torch.device("cpu"), bare, inference=True))
    loop_step_ips = bench_loop_step(cfg, bare, batches=3 if quick else 6)
    all_epochs = probe.epochs()
    measured = all_epochs[1:]
    walls = [w for e in measured for w in e["bare_wall_s"]]
    cpus = [c for e in measured for c in e["bare_cpu_s"]]
    step_ips = _rate(sum(e["bare_images"] for e in measured), walls)   # the bare steps paired with the loop's
    step_median_ips = batch / statistics.median(walls)  # the median step, as bench_train reports it (section 2)
    total = sum_epochs(measured)
    loop_ips, train_ips = total["seen"] / total["wall_s"], total["seen"] / total["train_s"]
    efficiency = cycle_efficiency(measured, LOOP_VAL_EVERY, step_ips)
    every_epoch = cycle_efficiency(measured, 1, step_ips)
    step_cpu_ips = _rate(sum(e["bare_images"] for e in measured), cpus)
    cpu_ratio = cycle_efficiency(measured, LOOP_VAL_EVERY, step_cpu_ips, "cpu_s") if step_cpu_ips else None
    cpu_every_epoch = cycle_efficiency(measured, 1, step_cpu_ips, "cpu_s") if step_cpu_ips else None
    per_epoch = [e["seen"] / e["wall_s"] / e["bare"] if e["bare"] else None for e in measured]
    breakdown = loop_breakdown(total, step_ips, forward_ips, loop_step_ips)
    return {"model": f"{model_name} cpu", "name": model_name, "dataset": dataset, "size": size, "batch": batch,
            "workers": int(cfg.trainer.num_workers), "amp": str(cfg.amp), "loss": str(cfg.loss.name),
            "grad_clip": cfg.trainer.grad_clip, "val_every": LOOP_VAL_EVERY, "epochs_run": epochs,
            "step_img_per_s": step_ips, "step_probes_img_per_s": [e["bare"] for e in measured],
            "bare_steps": len(walls), "step_median_img_per_s": step_median_ips,
            "ratio_median_step": cycle_efficiency(measured, LOOP_VAL_EVERY, step_median_ips),
            "loop_img_per_s": loop_ips,
            "train_img_per_s": train_ips, "ratio": efficiency if efficiency is not None else loop_ips / step_ips,
            "ratio_val_every_1": every_epoch, "ratio_measured_epochs": loop_ips / step_ips,
            "ratio_per_epoch": per_epoch, "train_ratio": train_ips / step_ips,
            "step_cpu_img_per_s": step_cpu_ips, "cpu_ratio": cpu_ratio, "cpu_ratio_val_every_1": cpu_every_epoch,
            "cpu_threads": torch.get_num_threads(),
            "epochs": all_epochs, "measured": total, "measured_epochs": len(measured), "run_s": run_s,
            "forward_img_per_s": forward_ips, "loop_step_img_per_s": loop_step_ips,
            "breakdown": breakdown, "shares": loop_shares(breakdown)}


def loop_shares(breakdown: dict) -> dict:
    """Where the measured epochs' wall time went, in four shares that add up to 1: data (DataLoader wait),
    step (training steps), val (validation: forward, metrics, reading), checkpoint_log (MLflow logging,
    checkpoint, scheduler, the rest)."""
    share = breakdown["share_of_wall"]
    parts = {"data": share["data"],
             "val": share["val_network"] + share["val_forward"] + share["val_metrics"] + share["val_read"],
             "checkpoint_log": share["log"] + share["other"]}
    parts["step"] = 1.0 - sum(parts.values())
    return {k: parts[k] for k in ("data", "step", "val", "checkpoint_log")}


def section_loop(quick: bool, threads: int | None = None) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="segsweep-bench-") as tmp:
        for model_name in (MODELS[:1] if quick else MODELS):
            row = loop_row(model_name, "covid_infection", Path(tmp), quick, threads)
            rows.append(row)
            b = row["breakdown"]
            log(f"  {row['model']:16s} loop / step {row['ratio']:.2f} (val_every={row['val_every']}; every epoch "
                f"validated: {_num(row['ratio_val_every_1'])}); by CPU time {_num(row['cpu_ratio'])} (every epoch "
                f"{_num(row['cpu_ratio_val_every_1'])}); step {row['step_img_per_s']:.2f} img/s; shares "
                + ", ".join(f"{k} {v:.0%}" for k, v in row["shares"].items())
                + f"; largest overhead: {b['bottleneck']} ({b['share_of_wall'][b['bottleneck']]:.0%})")
    return {"rows": rows, "goal": GOALS["loop"], "dataset": "covid_infection", "val_every": LOOP_VAL_EVERY,
            "store": "MLflow sqlite store in a temporary directory"}


def section_malloc(quick: bool, threads: int | None = None) -> dict:
    """The allocator policy's effect on the training loop: benchmarks/bench_malloc.py (a U-Net cpu-preset run,
    the epochs after the first measured) in fresh processes with $SEGSWEEP_MALLOC=system (glibc's own policy)
    and =retain (seg.runtime.retain_freed_memory, what every run uses), alternating, `rounds` times each.
    speed-up = median wall time under system / median under retain."""
    rounds, epochs = (1, 3) if quick else (2, 5)
    runs: dict[str, list[dict]] = {"system": [], "retain": []}
    args = ["--model", "unet", "--epochs", str(epochs)] + (["--threads", str(threads)] if threads else [])
    for _ in range(rounds):
        for mode in runs:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_malloc", *args], cwd=ROOT, timeout=600,
                                  env={**os.environ, "SEGSWEEP_MALLOC": mode}, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"benchmarks/bench_malloc.py with SEGSWEEP_MALLOC={mode} exited "
                                   f"{proc.returncode}: {proc.stderr.strip()[-500:]}")
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    med = {mode: {k: statistics.median(r[k] for r in rs) if all(r.get(k) is not None for r in rs) else None
                  for k in ("wall_s", "user_s", "system_s", "minor_faults", "max_rss_mb")} for mode, rs in runs.items()}
    out = {"model": "unet cpu", "epochs": epochs, "measured_epochs": runs["retain"][0]["measured_epochs"],
           "rounds": rounds, "runs": runs, "median": med,
           "speedup": med["system"]["wall_s"] / med["retain"]["wall_s"],
           "cpu_speedup": (med["system"]["user_s"] + med["system"]["system_s"])
           / (med["retain"]["user_s"] + med["retain"]["system_s"])}
    log(f"  unet cpu, {out['measured_epochs']} epochs: wall {med['system']['wall_s']:.1f} s (system) vs "
        f"{med['retain']['wall_s']:.1f} s (retain), x{out['speedup']:.2f}; minor faults "
        f"{med['system']['minor_faults']:.0f} vs {med['retain']['minor_faults']:.0f}")
    return out


GOALS["eval3d"] = 0.10


def section_eval3d(quick: bool, threads: int | None = None) -> dict:
    """The 3D evaluation's share of a cpu-profile ACDC run (phantom): seg.train.run for the profile's epochs
    (--quick: 2) with the probe hook; validation (10 volumes) every epoch, the test pass (20 volumes,
    HD/HD95/ASSD) at the end. Measured: the share of evaluation in the run's training + evaluation time;
    projected: the same for the profile's epoch count (a --quick run) and with trainer.val_every=2, from the
    measured per-epoch times."""
    from seg.train import run

    profile_epochs = int(preset("unet", "cpu", "acdc").trainer.epochs)
    epochs = 2 if quick else profile_epochs
    with tempfile.TemporaryDirectory(prefix="segsweep-bench-") as tmp:
        overrides = ["profile=cpu", "device=cpu", f"trainer.epochs={epochs}", "trainer.early_stopping=0",
                     "tracking.overlays=0", "tracking.log_model=false", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                     f"paths.output={tmp}/outputs", f"threads={threads or 'null'}", "resume=false"]
        cfg = preset("unet", "cpu", "acdc", overrides)
        layout = memory_format(str(cfg.memory_format), torch.device("cpu"), build(cfg.model), inference=True)
        probe = LoopProbe()
        start = time.perf_counter()
        run(cfg, hooks=[probe])
        run_s = time.perf_counter() - start
    spans = probe.spans
    first = min(s[1] for s in spans if s[0] == "train")
    test = [s for s in spans if s[0] == "eval" and s[3] == "test"][0]
    test_s = test[2] - test[1]
    test_forward = sum(s[2] - s[1] for s in spans if s[0] == "forward" and s[1] >= test[1])
    test_metrics = sum(s[2] - s[1] for s in spans if s[0] == "metrics" and s[1] >= test[1])
    fit_s = test[1] - first
    total = test[2] - first
    epochs_sum = sum_epochs(probe.epochs())      # validation, training steps (without the DataLoader wait), forwards
    val_s = epochs_sum["val_s"]
    train_images, train_s = epochs_sum["seen"], epochs_sum["compute_s"]
    val_images, val_forward_s = epochs_sum["val_cases"], epochs_sum["val_forward_s"]
    per_epoch, val_per_epoch = fit_s / epochs, val_s / epochs
    projected = (profile_epochs * val_per_epoch + test_s) / (profile_epochs * per_epoch + test_s)
    half = math.ceil(profile_epochs / 2)          # trainer.val_every=2: half the epochs validated
    projected_2 = (half * val_per_epoch + test_s) / (profile_epochs * (per_epoch - val_per_epoch) + half * val_per_epoch
                                                     + test_s)
    out = {"dataset": "acdc (phantom)", "model": "unet cpu", "epochs": epochs, "profile_epochs": profile_epochs,
           "run_s": run_s, "train_and_eval_s": total, "fit_s": fit_s, "val_s": val_s, "test_s": test_s,
           "test_forward_s": test_forward, "test_metrics_s": test_metrics,
           "test_read_s": test_s - test_forward - test_metrics,
           "share_measured": (val_s + test_s) / total, "share_projected": projected,
           "share_projected_val_every_2": projected_2, "goal": GOALS["eval3d"],
           "train_images_per_epoch": train_images / epochs, "val_images_per_epoch": val_images / epochs,
           "forward_vs_step": (val_forward_s / val_images) / (train_s / train_images) if val_images else None,
           "val_forward_share_of_network": val_forward_s / (val_forward_s + train_s),
           "eval_layout": "channels_last" if layout == torch.channels_last else "contiguous",
           "memory_format": str(cfg.memory_format)}
    log(f"  ACDC unet cpu, {epochs} epochs: evaluation {val_s + test_s:.1f} s of {total:.1f} s "
        f"({out['share_measured']:.0%}); test pass {test_s:.1f} s (forward {test_forward:.1f} s, metrics "
        f"{test_metrics:.1f} s); projected for the profile's {profile_epochs} epochs: {projected:.0%} "
        f"(with trainer.val_every=2: {projected_2:.0%})")
    return out


# ---------------------------------------------------------------------------------------------
# 4. peers
# ---------------------------------------------------------------------------------------------


def nearest_width(make: Callable[[int], nn.Module], target: int, widths: Sequence[int]) -> tuple[int, int]:
    """(width, params) of make(width) with the parameter count nearest to target."""
    counts = {w: n_params(make(w)) for w in widths}
    best = min(counts, key=lambda w: abs(counts[w] - target))
    return best, counts[best]


def _peer_ratios(rows: dict, ours: str, ceiling: float | None) -> None:
    """Per peer row (in place): median img/s over its rounds, achieved GFLOP/s, MFU against `ceiling`, and
    our U-Net (row `ours`) over it, per image and per GFLOP; one log line each."""
    for row in rows.values():
        row["img_per_s"] = statistics.median(row["rounds"])
        row["achieved_gflops"] = row["img_per_s"] * row["train_gflops_per_img"]
        row["mfu"] = row["achieved_gflops"] / ceiling if ceiling else None
    ref = rows[ours]
    for row in rows.values():
        row["ours_over_theirs"] = ref["img_per_s"] / row["img_per_s"]
        row["ours_over_theirs_per_gflop"] = ref["achieved_gflops"] / row["achieved_gflops"]
        log(f"  {row['model']:32s} {row['params']:>11,} params {row['train_gflops_per_img']:.2f} GFLOP/img "
            f"{row['img_per_s']:7.3f} img/s  ours/theirs {row['ours_over_theirs']:.2f} "
            f"(per GFLOP {row['ours_over_theirs_per_gflop']:.2f})")


def section_peers(quick: bool, ceiling: float | None) -> dict:
    warnings.simplefilter("ignore")
    import monai
    from monai.networks.nets import BasicUNet
    from monai.networks.nets import UNet as MonaiUNet

    cfg = preset("unet", "cpu")
    size, batch = int(cfg.dataset.image_size), int(cfg.trainer.batch_size)
    in_ch, n_cls = int(cfg.dataset.in_channels), int(cfg.dataset.num_classes)
    torch.manual_seed(0)
    ours = build(cfg.model)
    target = n_params(ours)

    def basic(b):
        return BasicUNet(spatial_dims=2, in_channels=in_ch, out_channels=n_cls, features=(b, b, 2 * b, 4 * b, 8 * b, b))

    def unet(b):
        return MonaiUNet(spatial_dims=2, in_channels=in_ch, out_channels=n_cls, channels=(b, 2 * b, 4 * b, 8 * b, 16 * b),
                         strides=(2, 2, 2, 2), num_res_units=2)

    wb, _ = nearest_width(basic, target, range(8, 41))
    wu, _ = nearest_width(unet, target, range(6, 33))
    models = {"ours: U-Net cpu preset": (ours, "seg.models.UNet(base_width=12, depth=4)"),
              "MONAI BasicUNet": (basic(wb), f"features=({wb}, {wb}, {2 * wb}, {4 * wb}, {8 * wb}, {wb})"),
              "MONAI UNet": (unet(wu), f"channels=({wu}, {2 * wu}, {4 * wu}, {8 * wu}, {16 * wu}), "
                                       "strides 2, num_res_units=2")}
    smp, smp_note = import_smp()
    if smp is not None:
        encoder, count = nearest_smp_encoder(smp, in_ch, n_cls, target)
        models[f"smp Unet ({encoder})"] = (smp.Unet(encoder, encoder_weights=None, in_channels=in_ch, classes=n_cls),
                                           f"smp.Unet('{encoder}', encoder_weights=None), default decoder")
        smp_note = (f"segmentation_models_pytorch {smp.__version__}: Unet with the encoder (of {', '.join(SMP_ENCODERS)}) "
                    f"nearest in parameters to our preset, {encoder} ({count:,} parameters; smp's smallest "
                    "Unet is several times our cpu preset: its decoder alone has ~2-3 M), encoder_weights=None "
                    "(nothing downloaded). " + smp_note)
    rows = {}
    for name, (model, spec) in models.items():
        fwd = count_flops(model.eval(), torch.randn(1, in_ch, size, size))
        x, y = random_batch(1, in_ch, n_cls, size)
        rows[name] = {"model": name, "spec": spec, "params": n_params(model), "fwd_gflops_per_img": fwd / 1e9,
                      "train_gflops_per_img": train_flops(model, x, y, loss_for(n_cls)) / 1e9, "rounds": []}
    rounds, iters = (2, 2) if quick else (3, 4)
    for r in range(rounds):                       # interleaved, so load on the machine hits all alike
        for name, (model, _) in models.items():
            rows[name]["rounds"].append(bench_train(model, in_ch, n_cls, size, batch, iters=iters,
                                                    warmup=2 if r == 0 else 1))
    _peer_ratios(rows, "ours: U-Net cpu preset", ceiling)
    paper = section_peers_paper(quick, ceiling, smp) if smp is not None else None
    return {"rows": list(rows.values()), "target_params": target, "size": size, "batch": batch,
            "monai": monai.__version__, "smp_note": smp_note, "rounds": rounds, "iters": iters, "paper": paper}


def import_smp():
    """(segmentation_models_pytorch or None, a note). Hugging Face Hub is put offline first (smp / timm
    must not download anything here: every model is built with encoder_weights=None). The torchvision
    wheel on the package index is the CUDA build; against the CPU torch its C extension (_C.so, linked to
    libtorch_cuda) does not load, and torchvision's import then fails registering fake kernels for
    torchvision::nms / qnms: the two operator schemas are declared first (a shim; smp's Unet uses neither)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    note = ""
    try:
        import segmentation_models_pytorch as smp
        return smp, note
    except ModuleNotFoundError as err:
        return None, (f"segmentation_models_pytorch is not installed ({err}): `pip install -r requirements-dev.txt` "
                      f"(segmentation-models-pytorch=={SMP_VERSION}) to measure it.")
    except Exception:
        pass
    try:
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_smp._lib = lib                                   # keep the library (and its definitions) alive
        for name in [m for m in sys.modules if m.startswith(("torchvision", "timm", "segmentation_models_pytorch"))]:
            del sys.modules[name]
        import segmentation_models_pytorch as smp
        note = ("torchvision's C extension did not load (the index's wheel is the CUDA build; torch here is the CPU "
                "build): torchvision::nms / qnms were declared as stubs so that it imports; smp's Unet uses neither.")
        return smp, note
    except Exception as err:
        return None, f"segmentation_models_pytorch could not be imported: {type(err).__name__}: {err}"


def nearest_smp_encoder(smp, in_ch: int, n_cls: int, target: int) -> tuple[str, int]:
    """(encoder, params) of the smp.Unet (encoder_weights=None) among SMP_ENCODERS nearest to target params."""
    counts = {}
    for name in SMP_ENCODERS:
        try:
            counts[name] = n_params(smp.Unet(name, encoder_weights=None, in_channels=in_ch, classes=n_cls))
        except Exception:                       # an encoder missing from this smp version
            continue
    best = min(counts, key=lambda k: abs(counts[k] - target))
    return best, counts[best]


def section_peers_paper(quick: bool, ceiling: float | None, smp) -> dict:
    """Our U-Net paper preset vs smp's Unet with the encoder nearest in parameters, 256 px, batch 1."""
    cfg = preset("unet", "paper")
    size, in_ch, n_cls = int(cfg.dataset.image_size), int(cfg.dataset.in_channels), int(cfg.dataset.num_classes)
    torch.manual_seed(0)
    ours = build(cfg.model)
    encoder, _ = nearest_smp_encoder(smp, in_ch, n_cls, n_params(ours))
    models = {"ours: U-Net paper preset": ours,
              f"smp Unet ({encoder})": smp.Unet(encoder, encoder_weights=None, in_channels=in_ch, classes=n_cls)}
    rows = {}
    for name, model in models.items():
        x, y = random_batch(1, in_ch, n_cls, size)
        rows[name] = {"model": name, "params": n_params(model), "size": size, "batch": 1,
                      "train_gflops_per_img": train_flops(model, x, y, loss_for(n_cls)) / 1e9, "rounds": []}
    for r in range(1 if quick else 2):
        for name, model in models.items():
            rows[name]["rounds"].append(bench_train(model, in_ch, n_cls, size, 1, iters=2, warmup=1 if r == 0 else 0))
    _peer_ratios(rows, "ours: U-Net paper preset", ceiling)
    return {"rows": list(rows.values()), "size": size, "batch": 1, "encoder": encoder}


# ---------------------------------------------------------------------------------------------
# 6. data
# ---------------------------------------------------------------------------------------------


def rate(fn: Callable[[], int], window: float, repeats: int) -> float:
    """Items per second of fn() (which returns the items it handled): median of `repeats` windows."""
    rates = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            count += fn()
            elapsed = time.perf_counter() - start
            if elapsed >= window:
                break
        rates.append(count / elapsed)
    return statistics.median(rates)


def data_row(dataset: str, step_ips: float | None, quick: bool) -> dict:
    from torch.utils.data import DataLoader

    cfg = preset("unet", "cpu", dataset)
    start = time.perf_counter()
    data = open_dataset(cfg.dataset, seed=int(cfg.seed), cache_dir=cfg.paths.cache)       # writes the phantom tree once if missing
    setup_s = time.perf_counter() - start
    ds, batch, workers = data.train, int(cfg.trainer.batch_size), int(cfg.trainer.num_workers)
    window, repeats = (0.5, 2) if quick else (1.0, 3)
    order = iter(())

    def next_index() -> int:
        nonlocal order
        try:
            return next(order)
        except StopIteration:
            order = iter(torch.randperm(len(ds)).tolist())
            return next(order)

    ds[0]                                                         # warm-up
    reader = rate(lambda: (ds.load(next_index()), 1)[1], window, repeats)
    augmented = rate(lambda: (ds[next_index()], 1)[1], window, repeats)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=len(ds) > batch,
                        persistent_workers=workers > 0)
    batches = iter(())

    def next_batch() -> int:
        nonlocal batches
        try:
            return len(next(batches)[0])
        except StopIteration:
            batches = iter(loader)
            return len(next(batches)[0])

    next_batch()                                                  # warm-up (starts the workers)
    loaded = rate(next_batch, window, repeats)
    row = {"dataset": dataset, "train_samples": len(ds), "size": int(cfg.dataset.image_size), "batch": batch,
           "workers": workers, "setup_s": setup_s, "reader_img_per_s": reader, "augmented_img_per_s": augmented,
           "loader_img_per_s": loaded, "step_img_per_s": step_ips,
           "ratio": loaded / step_ips if step_ips else None}
    log(f"  {dataset:16s} reader {reader:8.1f} img/s, + augmentation {augmented:7.1f}, DataLoader "
        f"({workers} workers) {loaded:7.1f} img/s" + (f"  / step {step_ips:.2f} = {row['ratio']:.1f}" if step_ips else ""))
    return row


def section_data(quick: bool, step: dict | None) -> dict:
    cpu_rows = [r for r in (step or {}).get("rows", []) if r.get("profile") == "cpu"]
    if cpu_rows:
        fastest = max(cpu_rows, key=lambda r: r["img_per_s"])
        step_ips, ref = fastest["img_per_s"], fastest["model"]
    else:
        cfg = preset("unet", "cpu")
        torch.manual_seed(0)
        step_ips = bench_train(build(cfg.model), 1, 1, int(cfg.dataset.image_size), int(cfg.trainer.batch_size),
                               iters=3, warmup=1)
        ref = "unet cpu"
    rows = [data_row(d, step_ips, quick) for d in DATASETS]
    return {"rows": rows, "goal": GOALS["data"], "step_reference": ref}


# ---------------------------------------------------------------------------------------------
# 5, 7: the sections in their own scripts
# ---------------------------------------------------------------------------------------------


def run_script(script: Path, result_json: Path, result_md: Path, timeout: float, args: Sequence[str] = ()) -> dict:
    """Run a benchmark module (benchmarks/<name>.py) as `python -m benchmarks.<name>` in a subprocess
    (output passed through); its JSON and Markdown."""
    if not script.is_file():
        return {"skipped": f"{script.relative_to(ROOT)} is not present"}
    for path in (result_json, result_md):
        path.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{script.stem}", *args], cwd=ROOT, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = f"timed out after {timeout:.0f} s"
    out = {"script": " ".join([str(script.relative_to(ROOT)), *args]), "returncode": rc,
           "seconds": time.perf_counter() - start}
    if result_json.is_file():
        out["result"] = json.loads(result_json.read_text())
    if result_md.is_file():
        out["markdown"] = result_md.read_text()
    return out


# ---------------------------------------------------------------------------------------------
# 8. GPU
# ---------------------------------------------------------------------------------------------


def gpu_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, dtype: torch.dtype | None,
             iters: int, warmup: int, fused: bool = False) -> float:
    """img/s of forward + loss + backward + Adam on CUDA, with autocast(dtype) (fp16: GradScaler); fused: Adam's
    single-kernel update (torch.optim.Adam(fused=True)) instead of the default multi-tensor (foreach) one."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True if fused else None)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    times = []
    for i in range(warmup + iters):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext():
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return x.shape[0] / statistics.median(times)


def results_text(md: str, old: str, gpu_measured: bool) -> str:
    """benchmarks/RESULTS.md for this run's bench.md: a run without CUDA keeps the GPU section of the old
    file (written by the last `make bench-gpu`, benchmarks/gpu.py), so a CPU run does not erase it."""
    from benchmarks.gpu import gpu_section, with_gpu_section

    text = "<!-- generated by `make bench` (python -m benchmarks.run): do not edit -->\n\n" + md
    kept = None if gpu_measured else gpu_section(old)
    return with_gpu_section(text, kept) if kept else text


def section_gpu(quick: bool) -> dict:
    """The paper presets on CUDA (fp32 / fp16 / bf16 AMP, channels_last, torch.compile): benchmarks/gpu.py's
    step part, the same rows `make bench-gpu` writes (MFU against the card's peak)."""
    if not torch.cuda.is_available():
        return {"available": False, "note": "No GPU on this machine (torch.cuda.is_available() is False): "
                                            "the GPU section (paper presets fp32 vs AMP, channels_last, "
                                            "torch.compile) was not run; `make bench-gpu` on a CUDA machine runs it "
                                            "(its last results: the GPU section at the end of benchmarks/RESULTS.md)."}
    from benchmarks.gpu import part_step

    return {"available": True, **part_step(quick)}


# ---------------------------------------------------------------------------------------------
# ratios and bench.md
# ---------------------------------------------------------------------------------------------


def _spread(values) -> str:
    """'min - max' of the numbers among `values` (None left out), '-' if there are none."""
    values = [v for v in values or () if v is not None]
    return f"{min(values):.2f} - {max(values):.2f}" if values else "-"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value, fmt: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def ratios(res: dict) -> list[dict]:
    """Every ratio of the run: {name, value, goal, met, note}; goal None = reported, no target."""
    out = []
    sec = res.get("sections", {})
    for row in sec.get("step", {}).get("rows", []):
        out.append({"name": f"MFU {row['model']} ({row['size']} px, batch {row['batch']})", "value": row["mfu"],
                    "goal": None, "met": None, "note": "achieved training FLOP/s / fp32 matmul ceiling"})
    for row in sec.get("loop", {}).get("rows", []):
        goal, b = GOALS["loop"], row["breakdown"]
        met = row["ratio"] >= goal
        shares = ", ".join(f"{k.replace('_', ' + ')} {100 * v:.0f}%" for k, v in row.get("shares", {}).items())
        note = (f"trainer.val_every={row.get('val_every', 1)}; shares of the epochs: {shares}" if shares else "") + (
            "" if met else f"; bottleneck: {b['bottleneck']} ({100 * b['share_of_wall'][b['bottleneck']]:.0f}% "
                           f"of the epoch); fix: {FIXES[b['bottleneck']]}")
        out.append({"name": f"loop / step, {row['model']}", "value": row["ratio"], "goal": goal, "met": met,
                    "note": note})
        if row.get("cpu_ratio") is not None:
            out.append({"name": f"loop / step by CPU time, {row['model']}", "value": row["cpu_ratio"], "goal": goal,
                        "met": row["cpu_ratio"] >= goal,
                        "note": f"trainer.val_every={row.get('val_every', 1)}; process CPU time of the epochs and of the "
                                f"bare step ({row.get('cpu_threads')} torch thread(s)); every epoch validated: "
                                f"{_num(row.get('cpu_ratio_val_every_1'))}"})
        if row.get("ratio_val_every_1") is not None:
            out.append({"name": f"loop / step, every epoch validated (val_every=1), {row['model']}",
                        "value": row["ratio_val_every_1"], "goal": None, "met": None,
                        "note": "from the validated epochs of the same run"})
    mal = sec.get("malloc", {})
    if "speedup" in mal:
        out.append({"name": f"training loop, glibc's policy / freed memory kept (wall time), {mal['model']}",
                    "value": mal["speedup"], "goal": None, "met": None,
                    "note": f"minor page faults over {mal['measured_epochs']} epochs: "
                            f"{mal['median']['system']['minor_faults']:,.0f} vs {mal['median']['retain']['minor_faults']:,.0f};"
                            f" by CPU time x{mal['cpu_speedup']:.2f}"})
    ev = sec.get("eval3d", {})
    if "share_measured" in ev:
        out.append({"name": f"3D evaluation share of an ACDC cpu-profile run ({ev['epochs']} epochs)",
                    "value": ev["share_measured"], "goal": ev["goal"], "met": ev["share_measured"] <= ev["goal"],
                    "note": f"goal: at most {100 * ev['goal']:.0f}%; "
                            + (f"projected for {ev['profile_epochs']} epochs: {100 * ev['share_projected']:.0f}% ("
                               if ev["epochs"] != ev["profile_epochs"] else "projected (")
                            + f"val_every=2: {100 * (ev.get('share_projected_val_every_2') or math.nan):.0f}%); "
                            f"test pass {ev['test_s']:.1f} s (forward "
                            f"{ev['test_forward_s']:.1f} s, metrics {ev['test_metrics_s']:.1f} s)"})
    peer_rows = list(sec.get("peers", {}).get("rows", [])) + list((sec.get("peers", {}).get("paper") or {}).get("rows", []))
    for row in peer_rows:
        if row["model"].startswith("ours"):
            continue
        out.append({"name": f"ours / {row['model']} img/s" + (" (paper, 256 px)" if row.get("size") == 256 else ""),
                    "value": row["ours_over_theirs"], "goal": None,
                    "met": None, "note": f"per GFLOP (achieved FLOP/s ratio): {row['ours_over_theirs_per_gflop']:.2f}"})
    metrics = sec.get("metrics", {}).get("result")
    if metrics:
        if "slowest_ratio" in metrics:
            goal = metrics.get("goal_ratio")
            out.append({"name": "HD95 MONAI time / ours (slowest case)", "value": metrics["slowest_ratio"],
                        "goal": goal, "met": None if goal is None else metrics["slowest_ratio"] >= goal,
                        "note": f"max abs difference {metrics.get('max_abs_diff_mm', float('nan')):.2g} mm"})
        for row in metrics.get("overlap", []):
            out.append({"name": f"{row['metric']} MONAI time / ours, per 1000 images", "value": row["ratio"],
                        "goal": None, "met": None, "note": f"max abs difference {row['max_abs_diff']:.2g}"})
    for row in sec.get("data", {}).get("rows", []):
        if row["ratio"] is None:
            continue
        goal, met = GOALS["data"], row["ratio"] >= GOALS["data"]
        note = "" if met else (f"reader {row['reader_img_per_s']:.0f} img/s, + augmentation "
                               f"{row['augmented_img_per_s']:.0f} img/s with {row['workers']} workers")
        out.append({"name": f"data loader / step, {row['dataset']}", "value": row["ratio"], "goal": goal,
                    "met": met, "note": note})
    return out


def summary_keys(res: dict) -> dict:
    """The headline numbers under flat names (bench.json "keys"): loop_efficiency_<model>_cpu (one per cpu
    preset, with its data / step / val / checkpoint_log shares as loop_shares_<model>_cpu),
    hd95_speedup (the slowest case) and hd95_speedup_<case>, eval3d_share_acdc_cpu, ..."""
    sec, keys = res.get("sections", {}), {}
    for row in sec.get("loop", {}).get("rows", []):
        name = row["model"].replace(" ", "_")
        keys[f"loop_efficiency_{name}"] = row["ratio"]
        keys[f"loop_val_every_1_ratio_{name}"] = row.get("ratio_val_every_1")
        keys[f"loop_cpu_time_ratio_{name}"] = row.get("cpu_ratio")
        keys[f"loop_shares_{name}"] = row.get("shares")
    metrics = sec.get("metrics", {}).get("result") or {}
    if "slowest_ratio" in metrics:
        keys["hd95_speedup"] = metrics["slowest_ratio"]
        keys["hd95_max_abs_diff_mm"] = metrics.get("max_abs_diff_mm")
        for r in metrics.get("results", []):
            slug = "".join(c if c.isalnum() else "_" for c in r["case"].lower()).strip("_")
            while "__" in slug:
                slug = slug.replace("__", "_")
            keys[f"hd95_speedup_{slug}"] = r["ratio"]
    if "speedup" in sec.get("malloc", {}):
        keys["malloc_retain_speedup_unet_cpu"] = sec["malloc"]["speedup"]
    ev = sec.get("eval3d", {})
    if "share_measured" in ev:
        keys["eval3d_share_acdc_cpu"] = ev["share_measured"]
        keys["eval3d_share_acdc_cpu_projected"] = ev["share_projected"]
        keys["eval3d_share_acdc_cpu_projected_val_every_2"] = ev.get("share_projected_val_every_2")
    for row in sec.get("step", {}).get("rows", []):
        keys[f"mfu_{row['model'].replace(' ', '_')}"] = row.get("mfu")
    for row in list(sec.get("peers", {}).get("rows", [])) + list((sec.get("peers", {}).get("paper") or {}).get("rows", [])):
        if not row["model"].startswith("ours"):
            slug = "".join(c if c.isalnum() else "_" for c in row["model"].lower()).strip("_")
            suffix = "_paper" if row.get("size") == 256 else ""
            keys[f"ours_over_{slug}{suffix}_per_gflop"] = row["ours_over_theirs_per_gflop"]
            keys[f"ours_over_{slug}{suffix}_img_per_s"] = row["ours_over_theirs"]
    return keys


def finalize_ceiling(sec: dict) -> float:
    """The run's ceiling = the best of the first roofline and its re-checks after each section (on a
    shared machine the first one may fall in a busy moment); MFU of every row is recomputed against it."""
    roof = sec["roofline"]
    ceiling = max([roof["first_gflops"], *(c["gflops"] for c in roof.get("checks", []))])
    roof["ceiling_gflops"] = ceiling
    for rows in (sec.get("step", {}).get("rows", []), sec.get("peers", {}).get("rows", []),
                 (sec.get("peers", {}).get("paper") or {}).get("rows", [])):
        for row in rows:
            row["mfu"] = row["achieved_gflops"] / ceiling
    return ceiling


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


def _malloc(mode: str | None) -> str:
    return {"retain": "freed memory kept for reuse (seg.runtime.retain_freed_memory)",
            "system": "the C library's own policy"}.get(mode, "not recorded")


def write_md(res: dict) -> str:
    """bench.md from bench.json's dict (sections may be missing or hold an "error")."""
    m, sec = res.get("machine", {}), res.get("sections", {})
    lines = ["# segsweep benchmarks", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores (torch threads: {m.get('torch_threads', '?')}"
             f"), torch {m.get('torch', '?')}, Python {m.get('python', '?')}, {m.get('platform', '?')}; "
             f"GPU: {m.get('cuda') or 'none'}; malloc: {_malloc(m.get('malloc'))}; run {m.get('date_utc', '?')}, {_num(res.get('total_s'), '.0f')} s"
             + (f"; commit {m['commit'][:12]}{' (with uncommitted changes)' if m.get('dirty') else ''}"
                if m.get("commit") else "") + ".",
             "", "The CPU is shared: absolute numbers are noisy (load average at start "
             f"{_loads(m.get('loadavg_start'))}, at the end {_loads(m.get('loadavg_end'))}); the ratios, "
             "taken between numbers measured in this same run, are what count."]
    loads = [v[0] for v in (m.get("loadavg_start"), m.get("loadavg_end")) if v]
    if loads and m.get("cores") and max(loads) > m["cores"]:
        threads = m.get("torch_threads") or 1
        lines += ["", f"**Oversubscribed**: a 1-minute load average of {max(loads):.1f} on {m['cores']} cores. " + (
            f"With {threads} torch threads, every parallel op waits on a thread barrier for threads that are "
            "descheduled, so small ops (batch-1 forwards, optimizer updates) slow down far more than large "
            "ones, and even same-run ratios are distorted. Re-run on an idle machine, or with `--threads 1` "
            "(`make bench ARGS='--threads 1'`)." if threads > 1 else
            "With 1 torch thread there are no thread barriers to stall on, but this process gets a share of "
            "a core that changes from moment to moment: ratios of numbers measured minutes apart carry that "
            "noise (a few tens of per cent).")]
    lines += ["", "## Ratios", ""]
    rows = [(r["name"], _num(r["value"], ".3f") if r["value"] is not None and r["value"] < 1 else _num(r["value"]),
             "-" if r["goal"] is None else (f"<= {r['goal']:g}" if r["name"].startswith("3D evaluation")
                                            else f">= {r['goal']:g}"),
             "-" if r["met"] is None else ("met" if r["met"] else "**missed**"), r["note"]) for r in ratios(res)]
    lines += _table(("ratio", "value", "goal", "", "note"), rows) if rows else ["(no ratios: no section ran)"]

    def error(name):
        s = sec.get(name)
        if s is None:
            return ["Not run (--sections)."]
        return [f"Failed: `{s['error']}`"] if "error" in s else None

    roof = sec.get("roofline", {})
    lines += ["", "## 1. Roofline", ""]
    lines += error("roofline") or [
        "Dense fp32 matmul, median of timed windows: " + ", ".join(
            f"n = {n}: {g:.1f} GFLOP/s" for n, g in roof["gflops_by_n"].items())
        + f" (torch threads: {roof['threads']})."
        + ("" if not roof.get("checks") else " Re-measured after each section: " + ", ".join(
            f"{c['after']} {c['gflops']:.1f}" for c in roof["checks"]) + " GFLOP/s.")
        + f" Ceiling (the best of these): **{roof['ceiling_gflops']:.1f} GFLOP/s**; every MFU is against it."]
    lines += ["", "## 2. Model step (forward + loss + backward + Adam, pre-loaded tensors, fp32)", ""]
    lines += error("step") or (
        _table(("model", "params", "image", "batch", "fwd GFLOP/img", "train GFLOP/img", "img/s", "GFLOP/s", "MFU"),
               [(r["model"], f"{r['params']:,}", r["size"], r["batch"], _num(r["fwd_gflops_per_img"]),
                 _num(r["train_gflops_per_img"]), _num(r["img_per_s"]), _num(r["achieved_gflops"], ".1f"),
                 _pct(r["mfu"])) for r in sec["step"]["rows"]])
        + ["", "FLOPs from torch.utils.flop_counter (multiply-add = 2; convolutions, matmuls, attention); train "
               "= forward + backward. Loss BCE-with-logits, Adam; img/s = batch / median step time "
               "(seg.models.summary.bench_train). MFU = img/s x train FLOP/img / the matmul ceiling."])
    lines += ["", "## 3. Loop efficiency (the real training loop vs the bare step)", ""]
    if not error("loop"):
        loop = sec["loop"]
        parts = ("data", "step_extra", "val_network", "val_forward", "val_metrics", "val_read", "log", "other")
        lines += _table(("model", f"loop / step (val_every={loop.get('val_every', 1)})", "every epoch validated",
                         "measured epochs", "single epochs (min - max)", "by CPU time",
                         "by CPU time, every epoch validated",
                         "loop img/s", "step img/s", "data", "step", "val", "checkpoint + log", "bottleneck"),
                        [(r["model"], f"**{r['ratio']:.2f}**", _num(r.get("ratio_val_every_1")),
                          _num(r.get("ratio_measured_epochs")), _spread(r.get("ratio_per_epoch")), _num(r.get("cpu_ratio")),
                          _num(r.get("cpu_ratio_val_every_1")), _num(r["loop_img_per_s"]), _num(r["step_img_per_s"]),
                          *(_pct(r.get("shares", {}).get(k)) for k in ("data", "step", "val", "checkpoint_log")),
                          r["breakdown"]["bottleneck"]) for r in loop["rows"]])
        lines += ["", "Where the time beyond the bare training steps goes (shares of the measured epochs' wall time):", ""]
        lines += _table(("model", "train part / step", "network / loop", *(p.replace("_", " ") for p in parts),
                         "step extra of train_epoch, pre-loaded"),
                        [(r["model"], _num(r["train_ratio"]), _num(r["breakdown"].get("suite")),
                          *(_pct(r["breakdown"]["share_of_wall"].get(k)) for k in parts),
                          _pct(r["breakdown"].get("loop_step_share"))) for r in loop["rows"]])
        r0 = loop["rows"][0] if loop["rows"] else {}
        lines += ["", f"seg.train.run on {loop['dataset']} (cpu profile: {r0.get('size')} px, batch {r0.get('batch')}, "
                      f"{r0.get('workers')} workers, amp={r0.get('amp')} (off on CPU), loss {r0.get('loss')}, "
                      f"grad_clip {r0.get('grad_clip')}, trainer.val_every={r0.get('val_every')}), "
                      f"{r0.get('epochs_run')} epochs, logging to a {loop['store']}; epoch 1 warms up (the decoded-"
                      "sample cache fills), the others are measured. Each epoch's wall time runs from its training "
                      "start to the next one's (training, validation if due, MLflow logging, checkpoint), the last "
                      "one's to the end of its epoch-end hooks (waiting for the last background checkpoint write "
                      "and reloading best.pt happen once per run, as the test pass does). The bare "
                      "step (seg.models.summary.bench_train's step: same model, batch and size, BCE, Adam, one fixed "
                      "batch) runs once after every training step of the loop, from the benchmark's hook "
                      "(after_step), on another copy of the model, and is left out of the epoch's time: each loop "
                      "step is paired with a bare step a fraction of a second away, so both see the same machine "
                      "speed, which drifts by up to a third within a run here; step img/s = all paired bare steps' "
                      "images / their summed seconds, as the loop's img/s is its images / its summed seconds"
                      + (" (with the median bare step instead, as section 2 reports it, loop / step would be "
                         + " / ".join(_num(r.get("ratio_median_step"), ".3f") for r in loop["rows"]) + ")"
                         if all(r.get("ratio_median_step") for r in loop["rows"]) else "")
                      + ". **loop / step** = a "
                      f"val_every={r0.get('val_every')} cycle (one validated + {max(0, (r0.get('val_every') or 1) - 1)} "
                      "unvalidated epoch(s), mean walls of the measured ones) / the bare step; \"every epoch "
                      "validated\" = the same for val_every=1 (the default: every epoch is like a validated one); "
                      "\"measured epochs\" = all measured images / all measured wall time; \"single epochs\" = "
                      "each measured epoch's img/s / the img/s of the bare steps paired with its steps, validated or "
                      "not. Shares: data = "
                      "waiting "
                      "for the DataLoader; step = the training steps; val = validation (forward passes, resizing "
                      "back, Dice/IoU, reading the cases); checkpoint + log = MLflow logging, best/last checkpoints, "
                      "scheduler. In the second table: step extra = the loop's steps beyond the bare step (loss, "
                      "grad clipping, isfinite check, loss.item(); negative = they ran faster than the bare step, "
                      "i.e. noise); val network = bare forward passes for the validation images (batch 24); "
                      "\"network / loop\" = bare network work (training steps + validation forwards) / wall "
                      "time. \"By CPU time\": the same ratios from this process's CPU time (time.process_time) "
                      "instead of wall time, for the loop's epochs and for the paired bare steps: with one torch "
                      "thread (--threads 1) they do not depend on how much of a core a shared machine gave the "
                      "process, but they leave out time spent waiting for the disk (checkpoint fsync, sqlite). "
                      "Last column: train_epoch on pre-loaded tensors (median of single-batch calls), a "
                      f"second, noisier estimate of the step's own overhead. Goal >= {loop['goal']:.2f}."]
    else:
        lines += error("loop")
    lines += ["", "## 3b. Freed memory kept for reuse vs glibc's own policy", ""]
    mal = sec.get("malloc")
    if not error("malloc"):
        lines += _table(("model", "$SEGSWEEP_MALLOC", "wall (s)", "user CPU (s)", "system CPU (s)", "minor page faults",
                         "peak RSS (MB)", "runs"),
                        [(mal["model"], mode, _num(m["wall_s"], ".1f"), _num(m["user_s"], ".1f"),
                          _num(m["system_s"], ".1f"), f"{m['minor_faults']:,.0f}", _num(m["max_rss_mb"], ".0f"),
                          ", ".join(f"{r['wall_s']:.1f} s" for r in mal["runs"][mode]))
                         for mode, m in mal["median"].items()])
        lines += ["", f"benchmarks/bench_malloc.py: seg.train.run on covid_infection (cpu profile, trainer.val_every=2), "
                      f"{mal['epochs']} epochs of which the last {mal['measured_epochs']} are measured (wall and process "
                      f"resources from each epoch's start to its end), in a fresh process per run, {mal['rounds']} "
                      "round(s) alternating the policy; medians. system = glibc's own policy (big freed blocks go back "
                      "to the OS and the next step faults in fresh zeroed pages); retain = seg.runtime.retain_freed_memory, "
                      "what training, seg.predict and the other sections here use. Wall time system / retain: "
                      f"**x{mal['speedup']:.2f}** (CPU time x{mal['cpu_speedup']:.2f})."]
    else:
        lines += error("malloc")
    lines += ["", "## 3c. 3D evaluation's share of a cpu-profile ACDC run", ""]
    ev = sec.get("eval3d")
    if not error("eval3d"):
        lines += _table(("run", "epochs", "training + evaluation (s)", "validation (s)", "test pass (s)",
                         "test forward (s)", "test metrics (s)", "test reading (s)", "evaluation share",
                         f"projected, {ev['profile_epochs']} epochs", "projected, val_every=2"),
                        [(f"{ev['model']} on {ev['dataset']}", ev["epochs"], _num(ev["train_and_eval_s"], ".1f"),
                          _num(ev["val_s"], ".1f"), _num(ev["test_s"], ".1f"), _num(ev["test_forward_s"], ".1f"),
                          _num(ev["test_metrics_s"], ".1f"), _num(ev["test_read_s"], ".1f"),
                          f"**{_pct(ev['share_measured'])}**",
                          _pct(ev["share_projected"]) if ev["epochs"] != ev["profile_epochs"] else "(measured)",
                          _pct(ev.get("share_projected_val_every_2")))])
        lines += ["", f"seg.train.run on the ACDC phantom (15 training patients; validation 10 volumes every epoch; "
                      f"test 20 volumes with HD / HD95 / ASSD), cpu profile, {ev['epochs']} epochs "
                      + ("(the profile's own count), " if ev["epochs"] == ev["profile_epochs"] else "")
                      + "timed by the same hook; evaluation share = (validation + test pass) / (first epoch start to "
                      "the end of the test pass). Projected = the same share from the measured per-epoch times"
                      + (f" for the profile's {ev['profile_epochs']} epochs" if ev["epochs"] != ev["profile_epochs"] else "")
                      + " with trainer.val_every=2 (half of the epochs validated)."]
        if ev.get("forward_vs_step") is not None:
            lines[-1] += (f" Validation's forward passes alone ({ev['val_images_per_epoch']:.0f} slices per epoch "
                          f"against {ev['train_images_per_epoch']:.0f} training slices, one slice's forward pass "
                          f"({ev.get('eval_layout')}, memory_format={ev.get('memory_format')}) costing "
                          f"{ev['forward_vs_step']:.2f} of its training "
                          f"step) are {_pct(ev['val_forward_share_of_network'])} of an epoch's network work: the "
                          "floor of the share at trainer.val_every=1.")
        lines[-1] += f" Goal <= {100 * ev['goal']:.0f}%."
    else:
        lines += error("eval3d")
    lines += ["", "## 4. Peers on the same work", ""]
    if not error("peers"):
        peers = sec["peers"]
        lines += _table(("model", "configuration", "params", "train GFLOP/img", "img/s", "MFU", "ours / theirs",
                         "ours / theirs per GFLOP"),
                        [(r["model"], r["spec"], f"{r['params']:,}", _num(r["train_gflops_per_img"]),
                          _num(r["img_per_s"]), _pct(r["mfu"]), _num(r["ours_over_theirs"]),
                          _num(r["ours_over_theirs_per_gflop"])) for r in peers["rows"]])
        lines += ["", f"{peers['size']} px, batch {peers['batch']}, fp32, same bench_train step (BCE, Adam), "
                      f"{peers['rounds']} interleaved rounds of {peers['iters']} timed steps each, median; MONAI "
                      f"{peers['monai']}, widths chosen for the parameter count nearest to ours "
                      f"({peers['target_params']:,}). \"per GFLOP\" compares achieved FLOP/s (img/s x train "
                      "FLOP/img): above 1 means our network uses the machine better, not just that it does less "
                      "work.", "", peers["smp_note"]]
        paper = peers.get("paper")
        if paper:
            lines += ["", f"Paper presets ({paper['size']} px, batch 1, same step, {len(paper['rows'][0]['rounds'])} "
                          "interleaved round(s) of 2 timed steps, median):", ""]
            lines += _table(("model", "params", "train GFLOP/img", "img/s", "MFU", "ours / theirs",
                             "ours / theirs per GFLOP"),
                            [(r["model"], f"{r['params']:,}", _num(r["train_gflops_per_img"]), _num(r["img_per_s"], ".3f"),
                              _pct(r["mfu"]), _num(r["ours_over_theirs"]), _num(r["ours_over_theirs_per_gflop"]))
                             for r in paper["rows"]])
    else:
        lines += error("peers")
    lines += ["", "## 5. Metrics", ""]
    metrics = sec.get("metrics")
    if metrics is None or "error" in metrics or "skipped" in metrics:
        lines += error("metrics") or [metrics.get("skipped", "")]
    else:
        lines += [metrics.get("markdown", "(bench_metrics.py wrote no metrics.md)").strip(),
                  "", f"(`{metrics['script']}`, exit status {metrics['returncode']}, {metrics['seconds']:.0f} s; "
                      "outputs/bench/metrics.{md,json})"]
    lines += ["", "## 6. Data: reader + augmentation vs the training step", ""]
    if not error("data"):
        data = sec["data"]
        lines += _table(("dataset", "train samples", "image", "reader set-up (s)", "reader img/s",
                         "+ augmentation img/s", "DataLoader img/s", "workers", "step img/s", "loader / step"),
                        [(r["dataset"], r["train_samples"], r["size"], _num(r["setup_s"], ".1f"),
                          _num(r["reader_img_per_s"], ".0f"),
                          _num(r["augmented_img_per_s"], ".0f"), _num(r["loader_img_per_s"], ".0f"), r["workers"],
                          _num(r["step_img_per_s"]), f"**{_num(r['ratio'], '.1f')}**") for r in data["rows"]])
        lines += ["", f"Training samples read from the phantom trees through the datasets' own readers; reader = "
                      "`load(i)` only, + augmentation = `dataset[i]` (the paired albumentations pipeline and "
                      "tensor conversion), DataLoader = batches with the cpu profile's default workers. Reader set-up = "
                      "building the dataset (listing and checking the files; the ACDC reader decodes every "
                      "training volume here, so its per-sample `load` is an in-memory lookup). Step = "
                      f"the fastest `cpu` preset ({data['step_reference']}) from section 2. Goal >= "
                      f"{data['goal']:g}."]
    else:
        lines += error("data")
    lines += ["", "## 7. Inference (seg.predict)", ""]
    pred = sec.get("predict")
    if pred is None or "error" in pred:
        lines += error("predict")
    elif "skipped" in pred:
        lines += [f"Not measured: {pred['skipped']}."]
    else:
        lines += [pred.get("markdown", "(bench_predict.py wrote no predict.md)").strip(),
                  "", f"(`{pred['script']}`, exit status {pred['returncode']}, {pred['seconds']:.0f} s; "
                      "outputs/bench/predict.{md,json})"]
    lines += ["", "## 8. GPU", ""]
    gpu = sec.get("gpu")
    if gpu is None or "error" in gpu:
        lines += error("gpu")
    elif not gpu.get("available"):
        lines += [gpu["note"]]
    else:
        lines += [f"{gpu['device']} ({gpu['card']}): measured matmul bf16 {_num(gpu['matmul_bf16_tflops'], '.0f')} "
                  f"TFLOP/s, fp32 {_num(gpu['matmul_fp32_tflops'], '.0f')} TFLOP/s; MFU against the card's peak "
                  "(benchmarks/gpu.py). Step throughput only: the loop-efficiency section (3) runs on the CPU.",
                  ""]
        lines += _table(("model", "variant", "image", "batch", "img/s", "speed-up vs fp32", "MFU"),
                        [(r["model"], r["variant"], r["size"], r["batch"], _num(r.get("img_per_s")),
                          _num(r.get("speedup_vs_fp32")), _pct(r.get("mfu")) if "error" not in r else r["error"])
                         for r in gpu["rows"]])
    times = res.get("section_s", {})
    if times:
        lines += ["", "Section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + "."]
    return "\n".join(lines) + "\n"


README_START = "<!-- bench:start (generated by make bench from outputs/bench/bench.json; do not edit) -->"
README_END = "<!-- bench:end -->"


def readme_block(res: dict) -> str:
    """The README's performance table: every ratio of the run (as bench.md's Ratios table) under one line
    naming the machine, commit, date and load."""
    m = res.get("machine", {})
    head = (f"Generated by `make bench` on {m.get('cpu', '?')}, {m.get('cores', '?')} cores ({m.get('torch_threads', '?')} "
            f"torch threads), GPU: {m.get('cuda') or 'none'}, torch {m.get('torch', '?')}, commit "
            f"{(m.get('commit') or '?')[:12]}{' (dirty)' if m.get('dirty') else ''}, {m.get('date_utc', '?')}, "
            f"{_num(res.get('total_s'), '.0f')} s; 1-minute load average {_loads(m.get('loadavg_start'))} at the start, "
            f"{_loads(m.get('loadavg_end'))} at the end (a shared machine: absolute numbers are noisy, the ratios "
            "are taken within the run). Full tables: [benchmarks/RESULTS.md](benchmarks/RESULTS.md).")
    rows = [(r["name"], _num(r["value"], ".3f") if r["value"] is not None and r["value"] < 1 else _num(r["value"]),
             "-" if r["goal"] is None else (f"<= {r['goal']:g}" if r["name"].startswith("3D evaluation")
                                            else f">= {r['goal']:g}"),
             "-" if r["met"] is None else ("met" if r["met"] else "**missed**")) for r in ratios(res)]
    return "\n".join([README_START, "", head, "", *_table(("ratio", "value", "goal", ""), rows), "", README_END])


def update_readme(path: Path, block: str) -> None:
    """Replace the text between README_START and README_END (markers included) with block; ValueError if
    the markers are missing."""
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no generated performance table (the lines {README_START!r} ... {README_END!r})")
    path.write_text(text[:start] + block + text[end + len(README_END):])


def _loads(values) -> str:
    return "-" if not values else " / ".join(f"{v:.1f}" for v in values)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def comma_list(parser: argparse.ArgumentParser, text: str, allowed: Sequence[str], what: str) -> list[str]:
    """"a, b" -> ["a", "b"]; parser.error naming the unknown ones and the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        parser.error(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return names


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no paper presets (smoke run)")
    parser.add_argument("--out", type=Path, default=OUT, help="where bench.json and bench.md go")
    parser.add_argument("--render", type=Path, metavar="BENCH_JSON",
                        help="measure nothing: re-derive the ratios of a saved bench.json and print its bench.md")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md",
                        help="after a full run (every CPU section, not --quick), bench.md is also written here")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md",
                        help="after a full run, the generated performance table of this README is replaced")
    parser.add_argument("--no-results", dest="results", action="store_const", const=None,
                        help="write only --out (not RESULTS.md, not the README table)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads for every section (default: "
                        "torch's default, as a run with threads=null gets)")
    args = parser.parse_args(list(argv))
    args.sections = comma_list(parser, args.sections, SECTIONS, "section")
    return args


def rederive(res: dict) -> dict:
    """Recompute what bench.json derives from its raw measurements (loop breakdowns, ratios), in place."""
    for row in res.get("sections", {}).get("loop", {}).get("rows", []):
        row["breakdown"] = loop_breakdown(row.get("measured", row["epochs"][-1]), row["step_img_per_s"],
                                          row.get("forward_img_per_s", row.get("forward_img_per_s_batch1")),
                                          row.get("loop_step_img_per_s"))
        row["shares"] = loop_shares(row["breakdown"])
    res["ratios"] = ratios(res)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render:
        print(write_md(rederive(json.loads(args.render.read_text()))), end="")
        return 0
    warnings.simplefilter("ignore")
    if args.threads:
        if args.threads < 1:
            raise SystemExit(f"--threads={args.threads}; expected an integer >= 1")
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)       # the metrics / predict subprocesses
    t_all = time.perf_counter()
    malloc = retain_freed_memory()          # every section as training runs (seg.train.run sets it too)
    res: dict[str, Any] = {"machine": {**machine_info(), "malloc": "retain" if malloc else "system"},
                           "quick": args.quick, "sections": {}, "section_s": {}}
    log("machine: " + ", ".join(f"{k} {v}" for k, v in res["machine"].items()))
    sec = res["sections"]
    ceiling = None
    steps: list[tuple[str, Callable[[], dict]]] = [
        ("roofline", lambda: section_roofline(args.quick)),
        ("step", lambda: section_step(args.quick, ceiling)),
        ("loop", lambda: section_loop(args.quick, args.threads)),
        ("malloc", lambda: section_malloc(args.quick, args.threads)),
        ("eval3d", lambda: section_eval3d(args.quick, args.threads)),
        ("peers", lambda: section_peers(args.quick, ceiling)),
        ("data", lambda: section_data(args.quick, sec.get("step"))),
        ("metrics", lambda: run_script(ROOT / "benchmarks" / "bench_metrics.py", OUT / "metrics.json",
                                       OUT / "metrics.md", timeout=300)),
        ("predict", lambda: run_script(ROOT / "benchmarks" / "bench_predict.py", OUT / "predict.json",
                                       OUT / "predict.md", timeout=480,
                                       args=["--images", "16", "--repeats", "1"] if args.quick else [])),
        ("gpu", lambda: section_gpu(args.quick)),
    ]
    failed = []
    for name, fn in steps:
        if name not in args.sections:
            continue
        log(f"== {name}")
        start = time.perf_counter()
        try:
            sec[name] = fn()
        except Exception as err:                # one failing section does not lose the others
            traceback.print_exc()
            sec[name] = {"error": f"{type(err).__name__}: {err}"}
            failed.append(name)
        res["section_s"][name] = time.perf_counter() - start
        if name == "roofline" and "ceiling_gflops" in sec[name]:
            ceiling = sec[name]["ceiling_gflops"]
            sec[name]["first_gflops"], sec[name]["checks"] = ceiling, []
        elif ceiling is not None and name not in ("predict", "gpu"):   # the ceiling again, after each section
            sec["roofline"]["checks"].append({"after": name, "gflops": max(
                matmul_gflops(n, repeats=3, window=0.15) for n in (1024, 2048))})
        rc = sec[name].get("returncode")
        if rc not in (None, 0):
            failed.append(name)
    if ceiling is not None:
        finalize_ceiling(sec)
    try:
        res["machine"]["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    res["total_s"] = time.perf_counter() - t_all
    res["ratios"] = ratios(res)
    res["keys"] = summary_keys(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = write_md(res)
    (args.out / "bench.md").write_text(md)
    log("\n" + md)
    log(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'} in {res['total_s']:.0f} s")
    full = set(SECTIONS) - {"gpu"} <= set(args.sections) and not args.quick
    if args.results and full:
        old = args.results.read_text() if args.results.is_file() else ""
        args.results.write_text(results_text(md, old, bool((res["sections"].get("gpu") or {}).get("available"))))
        log(f"wrote {args.results}")
        if args.readme and args.readme.is_file():
            update_readme(args.readme, readme_block(res))
            log(f"updated the performance table of {args.readme}")
    elif args.results:
        log(f"{args.results} not rewritten: it holds a full run (every CPU section, not --quick)")
    if failed:
        log(f"FAILED sections: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
