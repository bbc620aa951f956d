"""Model summary: layer table, parameter count, forward FLOPs and (optionally) training throughput.

    python -m seg.models.summary [HYDRA_OVERRIDES ...] [--size N] [--batch-size N] [--bench]
                                 [--iters N] [--warmup N] [--threads N] [--device DEV]

    python -m seg.models.summary model=transunet profile=paper
    python -m seg.models.summary model=unet profile=cpu --size 256 --bench --batch-size 16

Overrides are composed on conf/config.yaml exactly as `run.py` composes them, so the model is
the one a run would train (widths from conf/model_size/<model>_<profile>.yaml, in_channels and
num_classes from the dataset, TransUNet's img_size from the image size). `--size` sets the image
size (`dataset.image_size`) and `--batch-size` the benchmark batch (`trainer.batch_size`).

FLOPs come from torch.utils.flop_counter.FlopCounterMode on one image (batch 1, eval mode):
a multiply-add counts as 2 FLOPs, and only convolutions, matrix products and attention are
counted (norms, activations, pooling and up-sampling are not, as in fvcore/ptflops-style
tables). GFLOPs = FLOPs / 1e9.

The benchmark times full training steps (forward, BCE-with-logits or cross-entropy loss,
backward, Adam step) in fp32 on random input of the configured batch size: `--warmup` steps,
then the median of `--iters` timed steps; img/s = batch size / median step time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's registry covers the CUDA attention kernels only; on CPU scaled_dot_product_attention
# dispatches to these ops, which would otherwise count as 0 FLOPs.
_EXTRA_FLOPS = {
    getattr(torch.ops.aten, name): _sdpa_flop
    for name in ("_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_fused_attention_overrideable")
    if hasattr(torch.ops.aten, name)
}


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of model(x) (multiply-add = 2; convs, matmuls, attention), no grad, mode as it is."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
        model(x)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# layer table
# ---------------------------------------------------------------------------------------------


def _shape(out: Any) -> str:
    """Output of a module -> "(1, 64, 256, 256)"; tuples/lists of tensors joined with " + "."""
    if isinstance(out, torch.Tensor):
        return str(tuple(out.shape))
    if isinstance(out, (tuple, list)):
        return " + ".join(_shape(o) for o in out)
    return type(out).__name__


def n_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def layer_table(model: nn.Module, x: torch.Tensor, depth: int = 2) -> list[dict]:
    """One forward pass of x with hooks on the modules up to `depth` levels deep.

    Returns rows {name, depth, type, shape, calls, params} in registration order; `shape` is the
    output of the first call ("-" for containers that are never called themselves, e.g. a
    ModuleList), `calls` how often the module ran. Parameters registered directly on the model
    (e.g. TransUNet's pos_embed) get a row of type "Parameter".
    """
    rows: list[dict] = []
    handles = []
    for name, module in model.named_modules():
        level = name.count(".") + 1 if name else 0
        if not 1 <= level <= depth:
            continue
        row = {"name": name, "depth": level, "type": type(module).__name__, "shape": "-",
               "calls": 0, "params": n_params(module)}
        rows.append(row)

        def hook(_module, _inputs, output, row=row):
            if row["calls"] == 0:
                row["shape"] = _shape(output)
            row["calls"] += 1
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    for name, p in model.named_parameters(recurse=False):
        rows.append({"name": name, "depth": 1, "type": "Parameter", "shape": str(tuple(p.shape)),
                     "calls": 0, "params": p.numel()})
    return rows


def summarize_model(model: nn.Module, in_channels: int, size: int | tuple[int, int],
                    depth: int = 2) -> dict:
    """Layer table, parameters and forward FLOPs of `model` on one (1, in_channels, H, W) input.

    Runs in eval mode on the model's device and restores the training mode afterwards. Raises
    the model's own ValueError (naming the constraint) for a size it cannot take.
    Returns {input_shape, output_shape, layers, params, trainable, flops, gflops}.
    """
    h, w = (size, size) if isinstance(size, int) else size
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.randn(1, in_channels, h, w, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)                      # raises the model's ValueError for a bad size
        layers = layer_table(model, x, depth=depth)
        flops = count_flops(model, x)
    finally:
        model.train(was_training)
    return {"input_shape": tuple(x.shape), "output_shape": tuple(out.shape), "layers": layers,
            "params": n_params(model), "trainable": n_params(model, trainable_only=True),
            "flops": flops, "gflops": flops / 1e9}


# ---------------------------------------------------------------------------------------------
# training throughput
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_for(num_classes: int) -> Callable:
    """The loss bench_train uses: BCE-with-logits (1 class) or cross-entropy."""
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


def bench_train(model: nn.Module, in_channels: int, num_classes: int, size: int,
                batch_size: int, iters: int = 10, warmup: int = 2,
                device: str | torch.device = "cpu", lr: float = 1e-3, seed: int = 0) -> float:
    """Training throughput in images/s: the median time of `iters` steps after `warmup` steps.

    One step: forward of a random (batch_size, in_channels, size, size) batch, BCE-with-logits
    (num_classes == 1) or cross-entropy on random targets, backward, Adam step; fp32. The model
    is moved to `device` and trained in place (its weights change).
    """
    if iters < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need iters >= 1, warmup >= 0, batch_size >= 1; got iters={iters}, "
                         f"warmup={warmup}, batch_size={batch_size}")
    device = torch.device(device)
    model = model.to(device).train()
    x, y = random_batch(batch_size, in_channels, num_classes, size, seed, device)
    loss_fn = loss_for(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    times = []
    for step in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def format_summary(summary: dict, title: str = "") -> str:
    """The printed report of `summarize_model`'s dict."""
    rows = [("name", "type", "output shape", "params")]
    for r in summary["layers"]:
        shape = r["shape"] + (f" x{r['calls']}" if r["calls"] > 1 else "")
        rows.append(("  " * (r["depth"] - 1) + r["name"], r["type"], shape, f"{r['params']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    fmt = lambda row: "  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]),   # noqa: E731
                                 row[2].ljust(widths[2]), row[3].rjust(widths[3])])
    rule = "-" * len(fmt(rows[0]))
    lines = [title] if title else []
    lines += [f"input {summary['input_shape']} -> output {summary['output_shape']}", rule,
              fmt(rows[0]), rule, *(fmt(r) for r in rows[1:]), rule,
              f"total params:     {summary['params']:,} ({summary['params'] / 1e6:.2f} M)",
              f"trainable params: {summary['trainable']:,}",
              f"forward FLOPs per image: {summary['gflops']:.2f} GFLOPs "
              f"({summary['flops']:,} FLOPs; multiply-add = 2 FLOPs; convs, matmuls and "
              f"attention only)"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m seg.models.summary",
        description="Layer table, parameters, forward GFLOPs and (--bench) training img/s of the "
                    "model a run with these Hydra overrides would train.")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides for conf/config.yaml, e.g. model=unet profile=paper")
    parser.add_argument("--size", type=int, help="image size H = W (default: the config's "
                        "dataset.image_size); TransUNet is built for it")
    parser.add_argument("--batch-size", type=int, help="benchmark batch size "
                        "(default: the config's trainer.batch_size)")
    parser.add_argument("--bench", action="store_true", help="time training steps")
    parser.add_argument("--iters", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's "
                        "`threads`, else torch's default)")
    parser.add_argument("--device", help="benchmark device (default: the config's `device`; "
                        "auto = cuda if available)")
    parser.add_argument("--depth", type=int, default=2, help="module levels in the table")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit code (2 for a bad config, size or flag, message on stderr)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    threads_before = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)     # main() run in-process leaves torch as it was


def _run(args: argparse.Namespace) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from seg.config import build, compose
    from seg.runtime import retain_freed_memory, select_device

    try:
        cfg = compose(args.overrides)
        if args.size is not None:
            cfg.dataset.image_size = args.size          # TransUNet's img_size follows it
        if args.batch_size is not None:
            cfg.trainer.batch_size = args.batch_size
        size, batch = int(cfg.dataset.image_size), int(cfg.trainer.batch_size)
        in_ch, n_cls = int(cfg.dataset.in_channels), int(cfg.dataset.num_classes)
        threads = args.threads if args.threads is not None else cfg.threads
        if threads:
            torch.set_num_threads(int(threads))
        device = select_device(args.device or cfg.device)
        retain_freed_memory()                   # as a training run does: the step is timed as it runs there
    except (ValueError, HydraException, OmegaConfBaseException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    title = (f"{cfg.model.name} ({cfg.model.size} preset), dataset {cfg.dataset.name}: "
             f"in_channels={in_ch}, num_classes={n_cls}, image {size}x{size}")
    try:
        model = build(cfg.model)
        summary = summarize_model(model, in_ch, size, depth=args.depth)
    except ValueError as err:                 # the model's message names the constraint
        print(f"error: {cfg.model.name} cannot take {size}x{size} images: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary, title))
    if args.bench:
        try:
            ips = bench_train(model, in_ch, n_cls, size, batch, iters=args.iters,
                              warmup=args.warmup, device=device)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
        print(f"train throughput: {ips:.2f} img/s on {device.type} ({where}), batch {batch}, "
              f"{size}x{size}, fp32, Adam; median of {args.iters} steps after {args.warmup} "
              f"warm-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
