"""`make bench-gpu`: the GPU path measured, on a CUDA machine (python -m benchmarks.gpu).

    python -m benchmarks.gpu                 # every part: 5.5 min on one H100 (2026-11-26)
    python -m benchmarks.gpu --parts step    # train | predict | step (run in that order), comma-separated
    python -m benchmarks.gpu --no-results    # outputs/bench/gpu.{json,md} only, RESULTS.md untouched

Parts (run in this order; gpu.json / gpu.md are rewritten after each part and each step row):
  train    seg.train.run on the embedded phantom (covid_infection, cpu profile sizes: 96 px), 3 epochs,
           device=cuda, same seed: amp=off and amp=fp16 in training's CUDA layout (memory_format=auto), and
           fp16 contiguous: the test metrics, and whether fp16 and fp32 agree within TRAIN_TOL (Dice / IoU).
  predict  python -m seg.predict on CUDA with the fp16 run's best checkpoint on the phantom's test PNGs
           (--device cuda): img/s end to end, outputs written.
  step     paper presets (256 px, the paper profile's batch 16) of U-Net, ResU-Net and TransUNet: forward +
           loss + backward + Adam img/s in fp32, fp16 AMP (GradScaler) and bf16 AMP, each contiguous and
           channels_last, with cuDNN's autotuner, with fused Adam (fp16 / bf16 channels_last), bf16 +
           channels_last + torch.compile, and U-Net at batch 64;
           MFU = achieved training FLOP/s (torch.utils.flop_counter) / the card's peak dense tensor throughput
           for that dtype (PEAKS, by device name; fp32 rows against the TF32 peak, since cuDNN convolutions use
           TF32 by default), and against the measured matmul ceiling; then a torch.profiler breakdown of the
           U-Net bf16 channels_last step (GPU busy share, kernel time by operator kind).
           Goals (issue 17): fp16 AMP >= 2x fp32 on U-Net paper; bf16 MFU >= 40%.

Writes outputs/bench/gpu.json and gpu.md; after a run with every part, gpu.md becomes the GPU section at the
end of benchmarks/RESULTS.md (card, versions, commit; it replaces the previous one, and `make bench` on a
machine without CUDA keeps it). Without CUDA it prints why and exits with status 0,
measuring and writing nothing (benchmarks.run's section 8 says the same in bench.md).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from seg import PROJECT_ROOT as ROOT

OUT = ROOT / "outputs" / "bench"
PARTS = ("train", "predict", "step")        # the order they run in
TRAIN_TOL = 0.05          # |Dice / IoU fp16 - fp32| after 3 epochs on the phantom
GOALS = {"amp_speedup_unet": 2.0, "bf16_mfu": 0.40}

# Peak dense throughput in TFLOP/s (no sparsity), from the vendors' data sheets: bf16 / fp16 tensor,
# tf32 tensor, fp32 (CUDA cores). Matched against torch.cuda.get_device_name() in this order (the first
# pattern found in the name wins).
PEAKS: tuple[tuple[str, str, dict], ...] = (
    ("H200", "NVIDIA H200 (SXM)", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 NVL", "NVIDIA H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", "NVIDIA H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("H100", "NVIDIA H100 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("GH200", "NVIDIA GH200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", "NVIDIA A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", "NVIDIA L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    ("L4", "NVIDIA L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", "NVIDIA A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("RTX 4090", "NVIDIA GeForce RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("V100", "NVIDIA V100", {"fp16": 125.0, "fp32": 15.7}),
    ("T4", "NVIDIA T4", {"fp16": 65.0, "fp32": 8.1}),
)


def peak_for(name: str) -> tuple[str, dict] | None:
    """(card, peaks in TFLOP/s) for a CUDA device name, or None for a card not in PEAKS."""
    for pattern, card, peaks in PEAKS:
        if pattern.lower() in name.lower():
            return card, peaks
    return None


def no_cuda_message() -> str | None:
    """Why the GPU benchmark cannot run here, or None when CUDA is usable."""
    if not torch.cuda.is_available():
        build = torch.version.cuda
        return ("No CUDA device: torch.cuda.is_available() is False "
                + (f"(torch {torch.__version__} is a CPU build)" if build is None
                   else f"(torch {torch.__version__}, CUDA {build}: no driver or no visible device)")
                + ". The GPU benchmark (benchmarks/gpu.py) runs on a CUDA machine; nothing was measured.")
    return None


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# step: fp32 / fp16 / bf16, channels_last, torch.compile
# ---------------------------------------------------------------------------------------------


def part_step(quick: bool, device: str = "cuda", on_row=None) -> dict:
    """The step table; `on_row(partial result)` after every row (main saves it, so a time limit keeps the rows)."""
    from benchmarks.run import MODELS, gpu_step, loss_for, matmul_gflops, preset, random_batch, train_flops
    from seg.config import build

    device = torch.device(device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else str(device)
    found = peak_for(name)
    card, peaks = found if found else (name, {})
    out = {"device": name, "card": card, "peaks_tflops": peaks, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_bf16_tflops": matmul_gflops(8192, torch.bfloat16, device, repeats=5, window=0.25) / 1e3,
           "matmul_fp32_tflops": matmul_gflops(8192, torch.float32, device, repeats=5, window=0.25) / 1e3,
           "rows": []}
    if device.type == "cuda":
        # the fp32 rows' convolutions run on TF32 tensor cores (cuDNN's default): their ceiling is the TF32 matmul
        allowed = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            out["matmul_tf32_tflops"] = matmul_gflops(8192, torch.float32, device, repeats=5, window=0.25) / 1e3
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allowed
    # (label, autocast dtype, channels_last, torch.compile, batch: None = the preset's). On CUDA, training and
    # seg.predict use channels_last for U-Net and ResU-Net and contiguous for TransUNet (memory_format=auto,
    # chosen from these rows); contiguous was every model's layout before the setting existed.
    variants = [("fp32", None, False, False, None), ("fp32 + channels_last", None, True, False, None),
                ("fp16 AMP", torch.float16, False, False, None),
                ("fp16 AMP + channels_last", torch.float16, True, False, None),
                ("bf16 AMP", torch.bfloat16, False, False, None),
                ("bf16 AMP + channels_last", torch.bfloat16, True, False, None),
                # cuDNN's autotuner (torch.backends.cudnn.benchmark; training leaves it off: its choice of
                # algorithm, and so the last bits of the weights, can differ between runs)
                ("fp16 AMP + channels_last + cudnn.benchmark", torch.float16, True, False, None),
                ("bf16 AMP + channels_last + cudnn.benchmark", torch.bfloat16, True, False, None),
                # Adam's update was 11% of U-Net's kernel time in the profile (foreach, the CUDA default):
                # the single-kernel version, measured before training's optimizer configs would ask for it
                ("fp16 AMP + channels_last + fused Adam", torch.float16, True, False, None),
                ("bf16 AMP + channels_last + fused Adam", torch.bfloat16, True, False, None),
                ("bf16 AMP + channels_last + torch.compile", torch.bfloat16, True, True, None),
                ("fp16 AMP + channels_last, batch 64", torch.float16, True, False, 64),
                ("bf16 AMP + channels_last, batch 64", torch.bfloat16, True, False, 64)]
    setups, fp32 = {}, {}
    for model_name in MODELS:
        cfg = preset(model_name, "paper", extra=["device=cuda"])
        size, batch = int(cfg.dataset.image_size), int(cfg.trainer.batch_size)
        in_ch, n_cls = int(cfg.dataset.in_channels), int(cfg.dataset.num_classes)
        x, y = random_batch(1, in_ch, n_cls, size, device=device)
        flops = train_flops(build(cfg.model).to(device), x, y, loss_for(n_cls))
        setups[model_name] = (cfg, size, batch, in_ch, n_cls, flops)
    # the eager variants of every model first, torch.compile (minutes of compiling) last
    for phase in (False, True):
        for model_name in MODELS:
            cfg, size, preset_batch, in_ch, n_cls, flops = setups[model_name]
            for label, dtype, channels_last, compiled, batch in variants:
                if compiled != phase or (batch is not None and model_name != "unet"):
                    continue                  # the batch-size rows: U-Net only
                batch = batch or preset_batch
                x, y = random_batch(batch, in_ch, n_cls, size, device=device)
                row = {"model": f"{model_name} paper", "variant": label, "size": size, "batch": batch,
                       "train_gflops_per_img": flops / 1e9}
                model = None
                tune = torch.backends.cudnn.benchmark
                torch.backends.cudnn.benchmark = "cudnn.benchmark" in label
                try:
                    torch.manual_seed(0)
                    model = build(cfg.model).to(device)
                    xv = x
                    if channels_last:
                        model, xv = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
                    if compiled:
                        model = torch.compile(model)
                    start = time.perf_counter()
                    ips = gpu_step(model, xv, y, loss_for(n_cls), dtype, iters=5 if quick else 15, warmup=3,
                                   fused="fused Adam" in label)
                    achieved = ips * flops / 1e12                      # TFLOP/s
                    key = "fp32" if dtype is None else ("bf16" if dtype == torch.bfloat16 else "fp16")
                    peak = peaks.get("tf32" if key == "fp32" else key)
                    ceiling = (out.get("matmul_tf32_tflops", out["matmul_fp32_tflops"]) if dtype is None
                               else out["matmul_bf16_tflops"])
                    if dtype is None and not channels_last:
                        fp32[model_name] = ips
                    base = fp32.get(model_name)
                    row.update(img_per_s=ips, achieved_tflops=achieved, mfu=achieved / peak if peak else None,
                               peak_tflops=peak, of_matmul=achieved / ceiling,
                               speedup_vs_fp32=ips / base if base else None, seconds=time.perf_counter() - start)
                except Exception as err:          # one variant failing (e.g. no compiler) does not end the part
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                finally:
                    torch.backends.cudnn.benchmark = tune
                out["rows"].append(row)
                log(f"  {row['model']:16s} {label:26s} " + (
                    f"{row['img_per_s']:8.1f} img/s  x{row['speedup_vs_fp32'] or float('nan'):.2f} vs fp32  MFU "
                    f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else
                    f"{row['img_per_s']:8.1f} img/s" if "img_per_s" in row else row["error"]))
                del model, x, y
                torch.cuda.empty_cache()
                if on_row is not None:
                    on_row(out)
    order = {f"{m} paper": i for i, m in enumerate(MODELS)}
    out["rows"].sort(key=lambda r: (order[r["model"]], [v[0] for v in variants].index(r["variant"])))
    unet = {r["variant"]: r for r in out["rows"] if r["model"] == "unet paper" and "img_per_s" in r}

    def ratio(a: str, b: str) -> float | None:
        return unet[a]["img_per_s"] / unet[b]["img_per_s"] if a in unet and b in unet else None

    # the goal's ratio in the layout training uses on CUDA (amp=fp16 vs amp=off, both channels_last), and the
    # same in the contiguous layout used before memory_format existed
    out["amp_speedup_unet"] = ratio("fp16 AMP + channels_last", "fp32 + channels_last")
    out["amp_speedup_unet_contiguous"] = ratio("fp16 AMP", "fp32")
    out["amp_speedup_unet_vs_fp32_contiguous"] = ratio("fp16 AMP + channels_last", "fp32")
    if device.type == "cuda":
        try:
            out["profile"] = profile_step(setups["unet"], torch.bfloat16, device)
        except Exception as err:
            out["profile"] = {"error": f"{type(err).__name__}: {err}"}
    bf16 = [r["mfu"] for r in out["rows"] if r["variant"].startswith("bf16") and r.get("mfu") is not None]
    out["best_bf16_mfu"] = max(bf16) if bf16 else None
    return out


def profile_step(setup: tuple, dtype: torch.dtype, device: torch.device, steps: int = 5) -> dict:
    """torch.profiler over `steps` training steps of one paper preset (autocast dtype, channels_last): the
    GPU's busy share of the wall time and the operators that take its time, grouped by kind, to say where
    the MFU goes."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.run import gpu_step, loss_for, random_batch
    from seg.config import build

    cfg, size, batch, in_ch, n_cls, flops = setup
    model = build(cfg.model).to(device, memory_format=torch.channels_last)
    x, y = random_batch(batch, in_ch, n_cls, size, device=device)
    gpu_step(model, x, y, loss_for(n_cls), dtype, iters=3, warmup=2)              # warm cuDNN's choices
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        gpu_step(model, x, y, loss_for(n_cls), dtype, iters=steps, warmup=0)
        wall = time.perf_counter() - start
    from torch.autograd import DeviceType

    events = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    # the kernels themselves (device events): GPU time; the aten operators' self device time is the same time
    # again, by the operator that launched it
    total = sum(e.self_device_time_total for e in events
                if getattr(e, "device_type", None) == DeviceType.CUDA) / 1e6     # seconds of kernel time
    kinds = {"convolution": ("conv", "cudnn"), "matmul": ("mm", "addmm", "matmul", "linear", "bmm"),
             "normalization": ("norm",), "attention": ("attention", "sdpa", "flash", "efficient")}

    def kind(name: str) -> str:
        low = name.lower()
        return next((k for k, words in kinds.items() if any(w in low for w in words)), "elementwise / other")

    ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_device_time_total)
    by_kind: dict[str, float] = {}
    for e in ops:
        by_kind[kind(e.key)] = by_kind.get(kind(e.key), 0.0) + e.self_device_time_total / 1e6
    aten = sum(by_kind.values()) or float("nan")
    return {"model": f"{cfg.model.name} paper", "dtype": str(dtype).removeprefix("torch."), "batch": batch,
            "steps": steps, "wall_s": wall, "gpu_busy_share": min(total / wall, 1.0) if wall else None,
            "kernel_s": total, "share_by_kind": {k: v / aten for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": e.key, "share": e.self_device_time_total / 1e6 / aten, "calls": e.count}
                        for e in ops[:10]],
            "table": prof.key_averages().table(sort_by="self_device_time_total", row_limit=25)}


# ---------------------------------------------------------------------------------------------
# train: fp32 vs fp16 AMP on the phantom, same seed
# ---------------------------------------------------------------------------------------------


def part_train(workdir: Path, epochs: int = 3) -> dict:
    from seg.config import compose
    from seg.train import run

    out = {"dataset": "covid_infection (phantom)", "model": "unet", "profile": "cpu (96 px, batch 16)",
           "epochs": epochs, "tolerance": TRAIN_TOL, "runs": {}}
    # amp off vs fp16 in training's CUDA layout (memory_format=auto: channels_last), and fp16 contiguous
    for label, amp, layout in (("off", "off", "auto"), ("fp16", "fp16", "auto"), ("fp16 contiguous", "fp16", "contiguous")):
        work = label.replace(" ", "_")
        overrides = ["model=unet", "profile=cpu", "device=cuda", f"amp={amp}", f"memory_format={layout}",
                     f"trainer.epochs={epochs}",
                     "trainer.early_stopping=0", "tracking.overlays=0", "tracking.log_model=false", "resume=false",
                     f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"paths.output={workdir}/out_{work}",
                     f"tracking.run_name=gpu-{work}"]
        cfg = compose(overrides)
        start = time.perf_counter()
        best = run(cfg)
        seconds = time.perf_counter() - start
        cases = sorted((workdir / f"out_{work}").rglob("cases.csv"))
        ckpt = sorted((workdir / f"out_{work}").rglob("best.pt"))
        metrics = _case_means(cases[-1]) if cases else {}
        out["runs"][label] = {"best_val": best, "seconds": seconds, "test": metrics,
                            "checkpoint": str(ckpt[-1]) if ckpt else None}
        log(f"  {label}: best val/dice {best:.4f}, test " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f" ({seconds:.0f} s)")
    def abs_diff(x: str, y: str) -> dict:
        a, b = out["runs"][x]["test"], out["runs"][y]["test"]
        return {k: abs(a[k] - b[k]) for k in ("dice", "iou") if k in a and k in b}

    out["abs_diff"] = abs_diff("off", "fp16")
    out["match"] = bool(out["abs_diff"]) and all(v <= TRAIN_TOL for v in out["abs_diff"].values())
    out["abs_diff_layout"] = abs_diff("fp16", "fp16 contiguous")
    return out


def _case_means(path: Path) -> dict:
    """Mean Dice / IoU / HD95 over a run's cases.csv rows (NaN rows left out)."""
    import csv

    cols: dict[str, list[float]] = {"dice": [], "iou": [], "hd95": []}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            for k in cols:
                try:
                    v = float(row[k])
                except (KeyError, ValueError):
                    continue
                if not math.isnan(v):
                    cols[k].append(v)
    return {k: statistics.mean(v) for k, v in cols.items() if v}


# ---------------------------------------------------------------------------------------------
# predict: seg.predict on CUDA
# ---------------------------------------------------------------------------------------------


def part_predict(checkpoint: str | None, workdir: Path) -> dict:
    from seg.config import compose
    from seg.data import open_dataset

    if checkpoint is None:
        return {"error": "no checkpoint (the train part did not run or wrote none)"}
    cfg = compose(["dataset=covid_infection"])
    test = open_dataset(cfg.dataset, seed=0, cache_dir=cfg.paths.cache).test
    images = [item.image for item in getattr(test, "items", [])][:64]       # the phantom's test X-rays (PNG)
    if not images:
        return {"error": "the covid_infection phantom's test split lists no PNG files"}
    out_dir = workdir / "predict"
    cmd = [sys.executable, "-m", "seg.predict", checkpoint, *map(str, images), "--out", str(out_dir),
           "--device", "cuda"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    written = sorted(out_dir.rglob("*")) if out_dir.is_dir() else []
    out = {"images": len(images), "returncode": done.returncode, "seconds": seconds,
           "img_per_s": len(images) / seconds, "files_written": len([p for p in written if p.is_file()]),
           "stderr_tail": done.stderr[-800:]}
    log(f"  seg.predict --device cuda: {len(images)} images in {seconds:.1f} s (exit {done.returncode}, "
        f"{out['files_written']} files written; includes start-up)")
    return out


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _f(value, fmt: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def write_md(res: dict) -> str:
    m = res.get("machine", {})
    lines = [GPU_HEADING, "",
             f"{m.get('device', '?')}, torch {m.get('torch', '?')}, CUDA {m.get('cuda', '?')}, cuDNN "
             f"{m.get('cudnn', '?')}, Python {m.get('python', '?')}; commit {(m.get('commit') or '?')[:12]}; "
             f"{m.get('date_utc', '?')}."] + (["", m["note"]] if m.get("note") else [])
    step = res.get("step")
    if step and "rows" in step:
        lines += ["", f"Training step, paper presets (peaks: {step['card']}, "
                      + ", ".join(f"{k} {v:g}" for k, v in step["peaks_tflops"].items())
                      + f" TFLOP/s dense; measured 8192^3 matmul ceiling bf16 {step['matmul_bf16_tflops']:.0f}, "
                        f"TF32 {_f(step.get('matmul_tf32_tflops'), '.0f')}, fp32 {step['matmul_fp32_tflops']:.0f} "
                        "TFLOP/s; fp32 rows against TF32):", "",
                  "| model | variant | image | batch | img/s | vs fp32 | TFLOP/s | MFU (peak) | of matmul ceiling |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in step["rows"]:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['variant']} | {r['size']} | {r['batch']} | failed: {r['error']} "
                             "| | | | |")
            else:
                lines.append(f"| {r['model']} | {r['variant']} | {r['size']} | {r['batch']} | {_f(r['img_per_s'], '.1f')} "
                             f"| {_f(r['speedup_vs_fp32'])} | {_f(r['achieved_tflops'], '.1f')} | "
                             f"{_f(None if r['mfu'] is None else 100 * r['mfu'], '.1f')}% | "
                             f"{_f(100 * r['of_matmul'], '.0f')}% |")
        sp, mfu = step.get("amp_speedup_unet"), step.get("best_bf16_mfu")
        lines += ["", f"fp16 AMP / fp32 on U-Net paper, both channels_last (training's CUDA layout): **{_f(sp)}x** "
                      f"(contiguous: {_f(step.get('amp_speedup_unet_contiguous'))}x; fp16 channels_last / fp32 "
                      f"contiguous: {_f(step.get('amp_speedup_unet_vs_fp32_contiguous'))}x) "
                      f"(goal >= {GOALS['amp_speedup_unet']:g}: "
                      f"{'met' if sp and sp >= GOALS['amp_speedup_unet'] else 'missed'}); best bf16 MFU: "
                      f"**{_f(None if mfu is None else 100 * mfu, '.1f')}%** (goal >= {100 * GOALS['bf16_mfu']:.0f}%: "
                      f"{'met' if mfu and mfu >= GOALS['bf16_mfu'] else 'missed'}). fp32 rows: MFU against the TF32 "
                      "peak (cuDNN convolutions use TF32 by default)."]
        prof = step.get("profile") or {}
        if "share_by_kind" in prof:
            lines += ["", f"Where the time goes (torch.profiler, {prof['model']} {prof['dtype']} AMP + channels_last, "
                          f"batch {prof['batch']}, {prof['steps']} steps): GPU kernels busy "
                          f"{_f(None if prof['gpu_busy_share'] is None else 100 * prof['gpu_busy_share'], '.0f')}% of "
                          "the wall time; kernel time by operator kind: "
                          + ", ".join(f"{k} {100 * v:.0f}%" for k, v in prof["share_by_kind"].items())
                          + "; top operators: " + ", ".join(f"`{o['op']}` {100 * o['share']:.0f}%"
                                                            for o in prof["top_ops"][:6]) + "."]
        elif prof.get("error"):
            lines += ["", f"Profile failed: `{prof['error']}`"]
    train = res.get("train")
    if train and "runs" in train:
        lines += ["", f"seg.train.run, {train['dataset']}, {train['model']}, {train['profile']}, {train['epochs']} "
                      "epochs, same seed, device=cuda (memory_format=auto: channels_last, unless the row says "
                      "contiguous):", "",
                  "| run | best val/dice | test Dice | test IoU | test HD95 | seconds |", "|---|---|---|---|---|---|"]
        for amp, r in train["runs"].items():
            t = r["test"]
            lines.append(f"| {amp} | {_f(r['best_val'], '.4f')} | {_f(t.get('dice'), '.4f')} | {_f(t.get('iou'), '.4f')} "
                         f"| {_f(t.get('hd95'), '.2f')} | {_f(r['seconds'], '.0f')} |")
        lines += ["", "fp16 vs fp32 test metrics: " + ", ".join(f"|{k}| difference {v:.4f}"
                                                               for k, v in train["abs_diff"].items())
                  + f" (tolerance {train['tolerance']}: {'match' if train['match'] else '**no match**'})."
                  + ("" if not train.get("abs_diff_layout") else " fp16 channels_last vs contiguous: "
                     + ", ".join(f"|{k}| difference {v:.4f}" for k, v in train["abs_diff_layout"].items()) + ".")]
    pred = res.get("predict")
    if pred:
        lines += ["", ("seg.predict --device cuda: " + (f"{pred['images']} phantom PNGs in {pred['seconds']:.1f} s "
                       f"end to end incl. start-up ({pred['img_per_s']:.1f} img/s), exit status {pred['returncode']}, "
                       f"{pred['files_written']} files written." if "error" not in pred else f"failed: {pred['error']}"))]
    for part, err in res.get("errors", {}).items():
        lines += ["", f"Part {part} failed: `{err}`"]
    return "\n".join(lines) + "\n"


def write_results(res: dict, out: Path) -> str:
    """gpu.json and gpu.md under `out` for the parts measured so far; returns the Markdown."""
    (out / "gpu.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = write_md(res)
    (out / "gpu.md").write_text(md)
    return md


GPU_HEADING = "## GPU (benchmarks/gpu.py)"


def gpu_section(text: str) -> str | None:
    """The GPU section of a RESULTS.md text (from its heading to the end), or None."""
    at = text.find(GPU_HEADING)
    return None if at < 0 else text[at:].rstrip() + "\n"


def with_gpu_section(text: str, section: str) -> str:
    """RESULTS.md text with its GPU section (the file's last) replaced by `section`, or `section` appended."""
    at = text.find(GPU_HEADING)
    head = (text if at < 0 else text[:at]).rstrip()
    return head + "\n\n" + section.rstrip() + "\n"


def machine() -> dict:
    import datetime
    import platform

    from benchmarks.run import git_info

    return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **git_info()}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--out", type=Path, default=OUT, help="where gpu.json and gpu.md go")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md",
                        help="after a run with every part, gpu.md is appended here as a section")
    parser.add_argument("--no-results", dest="results", action="store_const", const=None)
    args = parser.parse_args(list(argv))
    from benchmarks.run import comma_list

    args.parts = comma_list(parser, args.parts, PARTS, "part")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    why = no_cuda_message()
    if why is not None:
        log(why)
        return 0
    import warnings

    warnings.simplefilter("ignore")
    res: dict = {"machine": machine(), "errors": {}}
    log("GPU benchmark on " + res["machine"]["device"])
    args.out.mkdir(parents=True, exist_ok=True)
    md = write_results(res, args.out)
    with tempfile.TemporaryDirectory(prefix="segsweep-gpu-") as tmp:
        # train and predict first (the fp16 path's correctness), then the step table; gpu.json / gpu.md are
        # rewritten after every part, so a run stopped by a time limit keeps the parts it finished
        for part in PARTS:
            if part not in args.parts:
                continue
            log(f"== {part}")
            try:
                if part == "step":
                    res["step"] = part_step(args.quick, on_row=lambda step: (res.__setitem__("step", step),
                                                                              write_results(res, args.out)))
                elif part == "train":
                    res["train"] = part_train(Path(tmp))
                else:
                    ckpt = (res.get("train") or {}).get("runs", {}).get("fp16", {}).get("checkpoint")
                    res["predict"] = part_predict(ckpt, Path(tmp))
            except Exception as err:
                import traceback

                traceback.print_exc()
                res["errors"][part] = f"{type(err).__name__}: {err}"
            md = write_results(res, args.out)
    log("\n" + md)
    if args.results and set(PARTS) <= set(args.parts) and args.results.is_file():
        args.results.write_text(with_gpu_section(args.results.read_text(), md))
        log(f"wrote the GPU section of {args.results}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
