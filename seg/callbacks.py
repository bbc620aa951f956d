"""Kept for conf/config.yaml and older configs that name `seg.callbacks.SweepSummary`: the sweep
protocol lives in seg.sweep (docs/design.md, "Sweeps")."""
from seg.sweep import SweepSummary, read_jobs

__all__ = ["SweepSummary", "read_jobs"]
