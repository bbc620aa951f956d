"""`make bench`: measured speed against the machine's own matmul ceiling and against the peers.

    python -m benchmarks.run                      # from the repository root: every section, ~3 min on 2 idle cores
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
            validation Dice/IoU, checkpoint, MLflow logging to a temporary sqlite store) for 2 epochs;
            the second epoch's training images / wall time, divided by the bare step throughput
            measured just before and after it for the same model, batch and size. Where the time
            goes is measured by a hook on the engine's loop (seg.engine.loop.Hook.on_span: DataLoader
            wait, training, validation forward / metrics, the epoch-end logging; the loop is unchanged);
            "network / loop" also counts validation's bare forward passes as network work.
  peers     MONAI BasicUNet and UNet (num_res_units=2) at the parameter count nearest to our U-Net
            `cpu` preset, same step benchmark, interleaved rounds with ours; img/s and per-GFLOP ratios.
            segmentation_models_pytorch is measured where it is importable.
  data      reader, reader + augmentation, and DataLoader (default workers of the cpu profile)
            throughput per phantom dataset, against the fastest model's step throughput.
  metrics   benchmarks/bench_metrics.py (HD95 vs MONAI, Dice/IoU per 1000 images), run as a subprocess.
  predict   benchmarks/bench_predict.py (seg.predict img/s per preset), run as a subprocess if present.
  gpu       where CUDA is available: bf16 matmul ceiling, paper presets fp32 / fp16 / bf16 AMP,
            channels_last, torch.compile; else bench.md says that no GPU was available.
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
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from seg import PROJECT_ROOT as ROOT
from seg.config import build, compose
from seg.data import open_dataset
from seg.engine.loop import Hook
from seg.models.summary import _EXTRA_FLOPS, bench_train, count_flops, n_params

OUT = ROOT / "outputs" / "bench"
MODELS = ("unet", "resunet", "transunet")
DATASETS = ("covid_infection", "acdc")   # dataset.root unset: the embedded phantoms
SECTIONS = ("roofline", "step", "loop", "peers", "data", "metrics", "predict", "gpu")
GOALS = {"loop": 0.90, "data": 3.0}
SMP_NOTE = ("segmentation_models_pytorch is not installed: it needs torchvision, whose wheel on this "
            "index forces torch 2.14.1 with CUDA and breaks the torch==2.13.0 pin, so smp's Unet is not "
            "measured here.")

# where the loop's time goes when it is slower than the bare step, and what would fix it
FIXES = {
    "data": "data loading + augmentation run in the main process (the cpu profile's num_workers=0), in "
            "series with the step: trainer.num_workers=1 overlaps them with the step where a core is free, "
            "or cache the decoded images in memory (PNG decoding is about half of the loader's time)",
    "step_extra": "the loop's steps cost more than the bare step (the configured loss, grad clipping, the "
                  "per-step isfinite check and loss.item() syncs, fresh batches): a cheaper loss, "
                  "grad_clip=null, or fewer host syncs",
    "val_network": "validation's own forward passes (network work the bare step does not include; "
                   "16 2D cases per forward pass): validate every N epochs",
    "val_forward": "validation forward beyond the bare network (logits resized back to the original size, "
                   "threshold, copy to numpy): resize the predicted labels instead of the logits",
    "val_metrics": "validation Dice/IoU per case and structure: vectorise over the val cases",
    "val_read": "reading and resizing the val cases from disk every epoch: cache the decoded, resized val "
                "images in memory after the first epoch",
    "log": "MLflow logging (one sqlite write per epoch): batch the metrics or log less often",
    "other": "checkpoint saving and scheduler step at the epoch end: save the best weights less often",
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    return info


def loss_for(num_classes: int) -> Callable:
    """The loss seg.models.summary.bench_train uses: BCE-with-logits (1 class) or cross-entropy."""
    return F.binary_cross_entropy_with_logits if num_classes == 1 else F.cross_entropy


def random_batch(batch: int, in_channels: int, num_classes: int, size: int, seed: int = 0,
                 device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, S, S) normal, y (B, 1, S, S) float 0/1 (binary) or (B, S, S) int64 class indices."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, size, size, generator=g)
    if num_classes == 1:
        y = torch.randint(0, 2, (batch, 1, size, size), generator=g).float()
    else:
        y = torch.randint(0, num_classes, (batch, size, size), generator=g)
    return x.to(device), y.to(device)


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
    """

    def __init__(self):
        self.spans: list[tuple[str, float, float, Any]] = []

    def on_span(self, kind: str, start: float, end: float, info: Any) -> None:
        self.spans.append((kind, start, end, info))

    def epochs(self) -> list[dict]:
        """Per epoch: wall (train start to the next epoch's train start, or to the test evaluation),
        train, data wait, val, log and other seconds, and the images seen."""
        trains = [i for i, s in enumerate(self.spans) if s[0] == "train"]
        out = []
        for k, i in enumerate(trains):
            start = self.spans[i][1]
            if k + 1 < len(trains):
                stop = self.spans[trains[k + 1]][1]
            else:
                tests = [s[1] for s in self.spans[i:] if s[0] == "eval" and s[3] == "test"]
                stop = tests[0] if tests else max(s[2] for s in self.spans[i:])
            inside = [s for s in self.spans if start <= s[1] < stop]
            span = lambda kind: sum(s[2] - s[1] for s in inside if s[0] == kind)  # noqa: E731
            train, info = self.spans[i][2] - self.spans[i][1], self.spans[i][3]
            val, logging_ = span("eval"), span("log")
            forward, metrics = span("forward"), span("metrics")
            val_cases = sum(s[3] for s in inside if s[0] == "forward")      # images predicted
            out.append({"wall_s": stop - start, "train_s": train, "data_s": info["data_wait"],
                        "compute_s": train - info["data_wait"], "val_s": val, "val_forward_s": forward,
                        "val_metrics_s": metrics, "val_read_s": val - forward - metrics, "log_s": logging_,
                        "other_s": (stop - start) - train - val - logging_, "seen": info["seen"],
                        "val_cases": val_cases})
        return out


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
                  repeats: int = 3) -> float:
    """Inference img/s of model on pre-loaded (batch, in_channels, size, size) noise: eval, no_grad,
    one untimed call, then the median of `repeats` timed windows."""
    x = torch.randn(batch, in_channels, size, size)
    model.eval()
    with torch.no_grad():
        model(x)
        ips = rate(lambda: (model(x), batch)[1], window, repeats)
    model.train()
    return ips


def loop_row(model_name: str, dataset: str, workdir: Path, quick: bool, threads: int | None = None) -> dict:
    from seg.train import run

    overrides = ["profile=cpu", "device=cpu", "trainer.epochs=2", "trainer.early_stopping=0",
                 "tracking.overlays=0", f"tracking.uri=sqlite:///{workdir}/mlflow.db",
                 f"paths.output={workdir}/outputs", f"threads={threads or 'null'}"]
    cfg = preset(model_name, "cpu", dataset, overrides)
    size, batch = int(cfg.dataset.image_size), int(cfg.trainer.batch_size)
    in_ch, n_cls = int(cfg.dataset.in_channels), int(cfg.dataset.num_classes)
    torch.manual_seed(0)
    bare = build(cfg.model)
    step_before = bench_train(bare, in_ch, n_cls, size, batch, iters=3 if quick else 5, warmup=1)
    probe = LoopProbe()
    start = time.perf_counter()
    run(cfg, hooks=[probe])
    run_s = time.perf_counter() - start
    step_after = bench_train(bare, in_ch, n_cls, size, batch, iters=3 if quick else 5, warmup=1)
    step_ips = (step_before + step_after) / 2
    # seg.engine.inference.evaluate predicts 2D validation cases 16 per forward pass: the bare forward at that batch
    forward_ips = bench_forward(bare, in_ch, size, batch=16, window=0.2 if quick else 0.4)
    loop_step_ips = bench_loop_step(cfg, bare, batches=3 if quick else 6)
    epochs = probe.epochs()
    last = epochs[-1]
    loop_ips, train_ips = last["seen"] / last["wall_s"], last["seen"] / last["train_s"]
    return {"model": f"{model_name} cpu", "name": model_name, "dataset": dataset, "size": size, "batch": batch,
            "workers": int(cfg.trainer.num_workers), "amp": str(cfg.amp), "loss": str(cfg.loss.name),
            "grad_clip": cfg.trainer.grad_clip, "step_img_per_s": step_ips,
            "step_img_per_s_before_after": [step_before, step_after], "loop_img_per_s": loop_ips,
            "train_img_per_s": train_ips, "ratio": loop_ips / step_ips, "train_ratio": train_ips / step_ips,
            "epochs": epochs, "measured_epoch": len(epochs), "run_s": run_s,
            "forward_img_per_s": forward_ips, "loop_step_img_per_s": loop_step_ips,
            "breakdown": loop_breakdown(last, step_ips, forward_ips, loop_step_ips)}


def section_loop(quick: bool, threads: int | None = None) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="segsweep-bench-") as tmp:
        for model_name in (MODELS[:1] if quick else MODELS):
            row = loop_row(model_name, "covid_infection", Path(tmp), quick, threads)
            rows.append(row)
            b = row["breakdown"]
            log(f"  {row['model']:16s} loop {row['loop_img_per_s']:7.2f} img/s (train part "
                f"{row['train_img_per_s']:.2f}) / step {row['step_img_per_s']:.2f} = {row['ratio']:.2f}; "
                f"largest overhead: {b['bottleneck']} ({b['share_of_wall'][b['bottleneck']]:.0%} of the epoch)")
    return {"rows": rows, "goal": GOALS["loop"], "dataset": "covid_infection",
            "store": "MLflow sqlite store in a temporary directory"}


# ---------------------------------------------------------------------------------------------
# 4. peers
# ---------------------------------------------------------------------------------------------


def nearest_width(make: Callable[[int], nn.Module], target: int, widths: Sequence[int]) -> tuple[int, int]:
    """(width, params) of make(width) with the parameter count nearest to target."""
    counts = {w: n_params(make(w)) for w in widths}
    best = min(counts, key=lambda w: abs(counts[w] - target))
    return best, counts[best]


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
    smp_note = SMP_NOTE
    try:
        import segmentation_models_pytorch as smp  # noqa: F401  (dev-only; absent here, see SMP_NOTE)
        models["smp Unet (resnet18)"] = (smp.Unet("resnet18", encoder_weights=None, in_channels=in_ch, classes=n_cls),
                                         "encoder resnet18, no pretrained weights (smallest standard encoder)")
        smp_note = f"segmentation_models_pytorch {smp.__version__} measured (resnet18 encoder)."
    except Exception:
        pass
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
    ref = rows["ours: U-Net cpu preset"]
    for row in rows.values():
        row["img_per_s"] = statistics.median(row["rounds"])
        row["achieved_gflops"] = row["img_per_s"] * row["train_gflops_per_img"]
        row["mfu"] = row["achieved_gflops"] / ceiling if ceiling else None
    for row in rows.values():
        row["ours_over_theirs"] = ref["img_per_s"] / row["img_per_s"]
        row["ours_over_theirs_per_gflop"] = ref["achieved_gflops"] / row["achieved_gflops"]
        log(f"  {row['model']:24s} {row['params']:>9,} params {row['train_gflops_per_img']:.2f} GFLOP/img "
            f"{row['img_per_s']:7.2f} img/s  ours/theirs {row['ours_over_theirs']:.2f} "
            f"(per GFLOP {row['ours_over_theirs_per_gflop']:.2f})")
    return {"rows": list(rows.values()), "target_params": target, "size": size, "batch": batch,
            "monai": monai.__version__, "smp_note": smp_note, "rounds": rounds, "iters": iters}


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
             iters: int, warmup: int) -> float:
    """img/s of forward + loss + backward + Adam on CUDA, with autocast(dtype) (fp16: GradScaler)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
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


def section_gpu(quick: bool) -> dict:
    if not torch.cuda.is_available():
        return {"available": False, "note": "No GPU on this machine (torch.cuda.is_available() is False): "
                                            "the GPU section (paper presets fp32 vs AMP, channels_last, "
                                            "torch.compile) was not run."}
    device = torch.device("cuda")
    out = {"available": True, "device": torch.cuda.get_device_name(0),
           "ceiling_bf16_gflops": matmul_gflops(8192, torch.bfloat16, device, repeats=5, window=0.25),
           "ceiling_fp32_gflops": matmul_gflops(8192, torch.float32, device, repeats=5, window=0.25), "rows": []}
    variants = [("fp32", None, False, False), ("fp16 AMP", torch.float16, False, False),
                ("bf16 AMP", torch.bfloat16, False, False), ("bf16 AMP + channels_last", torch.bfloat16, True, False),
                ("bf16 AMP + torch.compile", torch.bfloat16, False, True)]
    for model_name in MODELS:
        cfg = preset(model_name, "paper", extra=["device=cuda"])
        size, batch = int(cfg.dataset.image_size), int(cfg.trainer.batch_size)
        in_ch, n_cls = int(cfg.dataset.in_channels), int(cfg.dataset.num_classes)
        x, y = random_batch(1, in_ch, n_cls, size, device=device)
        flops = train_flops(build(cfg.model).to(device), x, y, loss_for(n_cls))
        x, y = random_batch(batch, in_ch, n_cls, size, device=device)
        fp32 = None
        for label, dtype, channels_last, compiled in variants:
            row = {"model": f"{model_name} paper", "variant": label, "size": size, "batch": batch,
                   "train_gflops_per_img": flops / 1e9}
            try:
                torch.manual_seed(0)
                model = build(cfg.model).to(device)
                xv = x
                if channels_last:
                    model, xv = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
                if compiled:
                    model = torch.compile(model)
                ips = gpu_step(model, xv, y, loss_for(n_cls), dtype, iters=5 if quick else 10,
                               warmup=3 if compiled else 2)
                fp32 = ips if dtype is None else fp32
                ceiling = out["ceiling_fp32_gflops"] if dtype is None else out["ceiling_bf16_gflops"]
                row.update(img_per_s=ips, achieved_gflops=ips * flops / 1e9, mfu=ips * flops / 1e9 / ceiling,
                           speedup_vs_fp32=ips / fp32 if fp32 else None)
            except Exception as err:          # one variant failing (e.g. no compiler) does not end the section
                row["error"] = f"{type(err).__name__}: {err}"
            out["rows"].append(row)
            log(f"  {row['model']:16s} {label:26s} " + (f"{row['img_per_s']:8.2f} img/s" if "img_per_s" in row
                                                          else row["error"]))
            torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------
# ratios and bench.md
# ---------------------------------------------------------------------------------------------


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
        note = ("" if met else f"bottleneck: {b['bottleneck']} ({100 * b['share_of_wall'][b['bottleneck']]:.0f}% "
                f"of the epoch); fix: {FIXES[b['bottleneck']]}")
        out.append({"name": f"loop / step, {row['model']}", "value": row["ratio"], "goal": goal, "met": met,
                    "note": note})
        if b.get("suite") is not None:
            met = b["suite"] >= goal
            key = b["suite_bottleneck"]
            note = ("bare network work (training steps + validation forwards) / epoch wall time"
                    + ("" if met else f"; bottleneck: {key} ({100 * b['share_of_wall'][key]:.0f}% of the epoch); "
                                      f"fix: {FIXES[key]}"))
            out.append({"name": f"network / loop, {row['model']}", "value": b["suite"], "goal": goal, "met": met,
                        "note": note})
    for row in sec.get("peers", {}).get("rows", []):
        if row["model"].startswith("ours"):
            continue
        out.append({"name": f"ours / {row['model']} img/s", "value": row["ours_over_theirs"], "goal": None,
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


def finalize_ceiling(sec: dict) -> float:
    """The run's ceiling = the best of the first roofline and its re-checks after each section (on a
    shared machine the first one may fall in a busy moment); MFU of every row is recomputed against it."""
    roof = sec["roofline"]
    ceiling = max([roof["first_gflops"], *(c["gflops"] for c in roof.get("checks", []))])
    roof["ceiling_gflops"] = ceiling
    for name in ("step", "peers"):
        for row in sec.get(name, {}).get("rows", []):
            row["mfu"] = row["achieved_gflops"] / ceiling
    return ceiling


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


def write_md(res: dict) -> str:
    """bench.md from bench.json's dict (sections may be missing or hold an "error")."""
    m, sec = res.get("machine", {}), res.get("sections", {})
    lines = ["# segsweep benchmarks", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores (torch threads: {m.get('torch_threads', '?')}"
             f"), torch {m.get('torch', '?')}, Python {m.get('python', '?')}, {m.get('platform', '?')}; "
             f"GPU: {m.get('cuda') or 'none'}; run {m.get('date_utc', '?')}, {_num(res.get('total_s'), '.0f')} s.",
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
             "-" if r["goal"] is None else f">= {r['goal']:g}",
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
    lines += ["", "## 3. Loop efficiency (the real training loop, one epoch, vs the bare step)", ""]
    if not error("loop"):
        loop = sec["loop"]
        parts = ("data", "step_extra", "val_network", "val_forward", "val_metrics", "val_read", "log", "other")
        lines += _table(("model", "loop img/s", "train part img/s", "step img/s", "loop / step", "train part / step",
                         "network / loop", *(p.replace("_", " ") for p in parts), "bottleneck",
                         "step extra of train_epoch, pre-loaded"),
                        [(r["model"], _num(r["loop_img_per_s"]), _num(r["train_img_per_s"]), _num(r["step_img_per_s"]),
                          f"**{r['ratio']:.2f}**", _num(r["train_ratio"]), _num(r["breakdown"].get("suite")),
                          *(_pct(r["breakdown"]["share_of_wall"].get(k)) for k in parts),
                          r["breakdown"]["bottleneck"], _pct(r["breakdown"].get("loop_step_share")))
                         for r in loop["rows"]])
        r0 = loop["rows"][0] if loop["rows"] else {}
        lines += ["", f"seg.train.run on {loop['dataset']} (cpu profile: {r0.get('size')} px, batch {r0.get('batch')}, "
                      f"{r0.get('workers')} workers, amp={r0.get('amp')} (off on CPU), loss {r0.get('loss')}, "
                      f"grad_clip {r0.get('grad_clip')}), 2 epochs, logging to a {loop['store']}; the second epoch "
                      f"is measured: its {r0.get('epochs', [{}])[-1].get('seen')} training images / its wall time "
                      f"(training, validation of {r0.get('epochs', [{}])[-1].get('val_cases')} cases, MLflow "
                      "logging, checkpoint, up to the next epoch); \"train part\" = the same images / the "
                      "train_epoch time alone. Step img/s = the mean of the bare step measured just before and "
                      "just after the run, same model, batch and size. \"network / loop\" = (the bare training "
                      "steps for the epoch's images + bare batch-16 forwards for its validation images, measured "
                      "on pre-loaded tensors) / the epoch's wall time: the share of the epoch that is network "
                      "work, i.e. what the suite adds on top of the network. The columns data ... other are "
                      "shares of the epoch's wall time beyond the bare training steps: waiting for the "
                      "DataLoader; step extra = the loop's steps beyond the bare step (the run's loss, grad "
                      "clipping, isfinite check, loss.item(); negative = they ran faster, i.e. noise); "
                      "validation's "
                      "bare forward passes, the rest of seg.engine.inference.predict_images (logits resized back, threshold), "
                      "validation Dice/IoU (structure_rows), reading + resizing the val cases, MLflow logging, "
                      "and the rest (checkpoint, scheduler). The last column: the same step extra measured "
                      "by running seg.engine.loop.train_epoch on pre-loaded tensors (median of single-batch calls; "
                      "a second, noisier estimate of the step's own overhead, without the loader). Goal for "
                      f"both ratios >= {loop['goal']:.2f}."]
    else:
        lines += error("loop")
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
        lines += [f"{gpu['device']}: matmul ceiling bf16 {gpu['ceiling_bf16_gflops']:.0f} GFLOP/s, fp32 "
                  f"{gpu['ceiling_fp32_gflops']:.0f} GFLOP/s (MFU of AMP rows against bf16, fp32 rows against fp32). "
                  "Step throughput only: the loop-efficiency section (3) runs on the CPU.",
                  ""]
        lines += _table(("model", "variant", "image", "batch", "img/s", "speed-up vs fp32", "MFU"),
                        [(r["model"], r["variant"], r["size"], r["batch"], _num(r.get("img_per_s")),
                          _num(r.get("speedup_vs_fp32")), _pct(r.get("mfu")) if "error" not in r else r["error"])
                         for r in gpu["rows"]])
    times = res.get("section_s", {})
    if times:
        lines += ["", "Section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + "."]
    return "\n".join(lines) + "\n"


def _loads(values) -> str:
    return "-" if not values else " / ".join(f"{v:.1f}" for v in values)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no paper presets (smoke run)")
    parser.add_argument("--out", type=Path, default=OUT, help="where bench.json and bench.md go")
    parser.add_argument("--render", type=Path, metavar="BENCH_JSON",
                        help="measure nothing: re-derive the ratios of a saved bench.json and print its bench.md")
    parser.add_argument("--threads", type=int, help="torch intra-op threads for every section (default: "
                        "torch's default, as a run with threads=null gets)")
    args = parser.parse_args(list(argv))
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def rederive(res: dict) -> dict:
    """Recompute what bench.json derives from its raw measurements (loop breakdowns, ratios), in place."""
    for row in res.get("sections", {}).get("loop", {}).get("rows", []):
        row["breakdown"] = loop_breakdown(row["epochs"][-1], row["step_img_per_s"], row.get("forward_img_per_s", row.get("forward_img_per_s_batch1")),
                                          row.get("loop_step_img_per_s"))
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
    res: dict[str, Any] = {"machine": machine_info(), "quick": args.quick, "sections": {}, "section_s": {}}
    log("machine: " + ", ".join(f"{k} {v}" for k, v in res["machine"].items()))
    sec = res["sections"]
    ceiling = None
    steps: list[tuple[str, Callable[[], dict]]] = [
        ("roofline", lambda: section_roofline(args.quick)),
        ("step", lambda: section_step(args.quick, ceiling)),
        ("loop", lambda: section_loop(args.quick, args.threads)),
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = write_md(res)
    (args.out / "bench.md").write_text(md)
    log("\n" + md)
    log(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'} in {res['total_s']:.0f} s")
    if failed:
        log(f"FAILED sections: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
