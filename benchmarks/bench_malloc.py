"""One cpu-preset training run with the epochs' process resources: what `make bench`'s allocator section compares.

    python -m benchmarks.bench_malloc --model unet --epochs 5     # prints one JSON line
    SEGSWEEP_MALLOC=system python -m benchmarks.bench_malloc      # glibc's own policy for freed memory

seg.train.run (covid_infection phantom, cpu profile, trainer.val_every=2, a throw-away MLflow store) in this
process, which sets the allocator policy from $SEGSWEEP_MALLOC itself (seg.runtime.retain_freed_memory). Epoch 1
warms up; for the others a hook sums wall time, user and system CPU time and minor page faults from each epoch's
start to its end (training, validation if due, checkpoint, logging). The policy can only be chosen once per
process, so benchmarks/run.py starts this module once per policy and round, alternating.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

from seg.engine.loop import Hook


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB: VmHWM (its own address space, from exec on; ru_maxrss would
    carry the parent's peak across fork + exec, the benchmark process's ~3 GB), None where /proc has none."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def usage() -> tuple[float, float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


class EpochUsage(Hook):
    """Per epoch after the first: (wall s, user s, system s, minor page faults)."""

    def __init__(self):
        self.epochs: list[tuple[float, float, float, int]] = []
        self._start = usage()

    def on_epoch_start(self, ctx) -> None:
        self._start = usage()

    def on_epoch_end(self, ctx, metrics) -> None:
        if ctx.epoch > 0:
            self.epochs.append(tuple(b - a for a, b in zip(self._start, usage())))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet", choices=("unet", "resunet", "transunet"))
    parser.add_argument("--epochs", type=int, default=5, help="epochs (the first one is not measured; default 5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (epoch 1 warms up)")
    from benchmarks.run import preset
    from seg.train import run

    hook = EpochUsage()
    with tempfile.TemporaryDirectory(prefix="segsweep-bench-") as tmp:
        cfg = preset(args.model, "cpu", "covid_infection",
                     ["profile=cpu", "device=cpu", f"trainer.epochs={args.epochs}", "trainer.early_stopping=0",
                      "trainer.val_every=2", "tracking.overlays=0", "tracking.log_model=false",
                      f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"paths.output={tmp}/outputs",
                      f"threads={args.threads or 'null'}", "resume=false"])
        run(cfg, hooks=[hook])
    wall, user, system, faults = (sum(e[i] for e in hook.epochs) for i in range(4))
    print(json.dumps({"model": f"{args.model} cpu", "malloc": os.environ.get("SEGSWEEP_MALLOC", "retain"),
                      "measured_epochs": len(hook.epochs), "wall_s": wall, "user_s": user, "system_s": system,
                      "minor_faults": faults, "max_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
