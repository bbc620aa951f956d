"""seg.predict throughput on CPU: images per second for every model's `cpu` preset.

    python -m benchmarks.bench_predict            # from the repository root; under a minute on 2 idle cores
    python -m benchmarks.bench_predict --images 32 --repeats 3

For each model (unet, resunet, transunet) at its `cpu` preset and the cpu profile's input size
(phantom_xray config: binary, 96 px), a checkpoint in the format seg.train writes (random weights,
seeded: throughput does not depend on what the weights learnt) is loaded through seg.predict's own
checkpoint path, then `seg.predict.predict_inputs` segments a folder of 256 x 256 8-bit PNGs, the
COVID-QU-Ex size, end to end: read, scale, resize + z-score, forward in batches of 16, logits
resized back, label PNG + overlay PNG written, predictions.csv. Timed: the best of `--repeats`
passes after a warm-up pass on 2 images (on a shared machine the best is the least disturbed); the
same with --tta (two forward passes per image); and the network alone (as many forward passes of a (1, 1, 96, 96)
image as a pass has images, torch.no_grad) for how much of the end-to-end time the model takes,
and in batches of 16 for comparison. Each 2D input is its own forward pass (batch 1; --batch-size batches the slices of a volume).
torch runs with --threads intra-op threads (default 1: on a shared, oversubscribed machine 2
threads made single-image forwards up to 10x slower and the timings erratic; 0 = torch's default).

Writes outputs/bench/predict.md (the table) and outputs/bench/predict.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from seg import PROJECT_ROOT as ROOT

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf

import seg.config  # noqa: F401  (project_root resolver)
from seg.config import build, compose
from seg.engine.checkpoint import best_payload, save_atomic
from seg.predict import load_checkpoint, model_from_checkpoint, predict_inputs
from seg.runtime import retain_freed_memory

MODELS = ("unet", "resunet", "transunet")
OUT = ROOT / "outputs" / "bench"
BATCH = 16


def write_images(folder: Path, n: int, size: int = 256) -> list[Path]:
    """n smooth-noise 8-bit grayscale PNGs (structures of several sizes, so overlays have contours)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        field = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 6)
        image = cv2.normalize(field, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        path = folder / f"img_{i:03d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def checkpoint(model: str, folder: Path) -> tuple[Path, dict]:
    cfg = compose([f"model={model}", "dataset=covid_infection", "profile=cpu"])
    torch.manual_seed(0)
    net = build(cfg.model)
    path = folder / f"{model}.pt"
    save_atomic(best_payload(net, OmegaConf.to_container(cfg, resolve=True), 0, "val/dice", 0.0), path)
    return path, {"params": sum(p.numel() for p in net.parameters()), "image_size": int(cfg.dataset.image_size),
                  "size": cfg.model.get("size", "?")}


def best_time(fn, repeats: int, warmup=None) -> float:
    (warmup or fn)()                        # warm-up (allocations, oneDNN kernels, page cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="PNG images per timed pass (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: stable on a shared machine; 0 = torch's default)")
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()            # as seg.predict does, for the network-alone passes timed in this process
    device = torch.device("cpu")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        tmp = Path(tmp)
        write_images(tmp / "in", args.images)
        write_images(tmp / "warm", 2)
        for name in MODELS:
            path, info = checkpoint(name, tmp)
            model = model_from_checkpoint(load_checkpoint(path), str(path), device)
            def run(folder: str, tta: bool):
                return lambda: predict_inputs(model, [tmp / folder], tmp / f"out_{folder}_{tta}", device, BATCH,
                                              tta, progress=False)

            e2e = best_time(run("in", False), args.repeats, run("warm", False))
            tta = best_time(run("in", True), args.repeats, run("warm", True))
            size = info["image_size"]
            one, batch = torch.randn(1, 1, size, size), torch.randn(BATCH, 1, size, size)

            @torch.no_grad()
            def forward_each():                  # what predict does for 2D inputs: one image per forward
                for _ in range(args.images):
                    model.net(one)

            @torch.no_grad()
            def forward_batched():               # the same images in batches of 16 (volumes' slices are)
                for _ in range(max(1, args.images // BATCH)):
                    model.net(batch)

            each = best_time(forward_each, args.repeats)
            batched = best_time(forward_batched, args.repeats) / (max(1, args.images // BATCH) * BATCH) * args.images
            row = {"model": name, "preset": info["size"], "params": info["params"], "input_px": size,
                   "images": args.images, "img_per_s": args.images / e2e, "img_per_s_tta": args.images / tta,
                   "forward_img_per_s": args.images / each, "forward_batched_img_per_s": args.images / batched,
                   "forward_share": each / e2e}
            rows.append(row)
            print(f"{name:10s} {row['img_per_s']:7.1f} img/s end to end, {row['img_per_s_tta']:7.1f} with TTA, "
                  f"network alone {row['forward_img_per_s']:7.1f} img/s (batched {row['forward_batched_img_per_s']:.1f})",
                  flush=True)
    seconds = time.perf_counter() - started
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "platform": platform.platform(),
               "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"device": "cpu", "batch_size": BATCH, "repeats": args.repeats, "seconds": seconds,
              "machine": machine, "rows": rows}
    (OUT / "predict.json").write_text(json.dumps(result, indent=1))
    lines = ["| model | preset | params | input px | img/s | img/s, --tta | network alone, img/s | network share "
             "| network in batches of 16, img/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['preset']} | {r['params'] / 1e6:.2f} M | {r['input_px']} | "
                     f"{r['img_per_s']:.1f} | {r['img_per_s_tta']:.1f} | {r['forward_img_per_s']:.1f} | "
                     f"{100 * r['forward_share']:.0f} % | {r['forward_batched_img_per_s']:.1f} |")
    lines += ["", f"`python -m seg.predict` end to end on {args.images} PNGs of 256 x 256 (read, scale, resize + "
                  f"z-score, forward (one per image), logits resized back, label + overlay PNGs, "
                  f"predictions.csv), CPU, {machine['torch_threads']} torch threads of {machine['cpu_count']} "
                  f"cores, best of {args.repeats} pass(es) after a warm-up; random weights (speed does not depend "
                  f"on them). Network alone = the same forward passes (batch 1) "
                  f"without the rest; network share = their time / end-to-end time; the last column is the forward "
                  f"throughput in batches of {BATCH} (what batching several 2D inputs per pass could reach). "
                  f"1-min load average at the end: {machine['load_average_1min']:.1f} "
                  f"(a shared machine: absolute numbers vary with it). {seconds:.0f} s in all."]
    (OUT / "predict.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
