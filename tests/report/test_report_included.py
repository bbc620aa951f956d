"""seg.report.runs.Run.included: only a FINISHED run with a finite test/dice is averaged, even when a
FAILED / KILLED / RUNNING run carries a test/dice (a run that failed after its test pass)."""
from __future__ import annotations

import math

import pytest

from seg.report.runs import Run


def _run(status: str, dice: float | None, tags: dict | None = None) -> Run:
    metrics = {} if dice is None else {"test/dice": dice}
    return Run("r1", "unet-dice", "phantom_xray", status, dict(tags or {}), metrics, {}, 0, 1)


@pytest.mark.parametrize("status,why", [
    ("FAILED", "FloatingPointError: loss is NaN"),
    ("KILLED", "ended KILLED without a failure_reason tag"),
    ("RUNNING", "still running, or its process died without ending the run"),
])
def test_a_run_not_finished_is_not_averaged_even_with_test_dice(status, why):
    tags = {"failure_reason": "FloatingPointError: loss is NaN"} if status == "FAILED" else {}
    run = _run(status, 0.8, tags)
    assert run.included is False and run.why_excluded == why


def test_a_finished_run_is_averaged_only_with_a_finite_test_dice():
    assert _run("FINISHED", 0.8).included is True
    assert _run("FINISHED", math.nan).included is False
    assert _run("FINISHED", None).included is False
    assert _run("FINISHED", None).why_excluded == "FINISHED without a test/dice metric"
