"""seg.schema: bad config values fail before anything is created, in one line naming the key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seg import PROJECT_ROOT
from seg.schema import ConfigError, validate
from tests.conftest import compose_cfg

CONF = PROJECT_ROOT / "conf"


@pytest.mark.parametrize("override,message", [
    ("trainer.epochs=abc", "trainer.epochs='abc': expected an integer >= 1"),
    ("trainer.epochs=0", "trainer.epochs=0: expected an integer >= 1"),
    ("trainer.epochs=2.5", "trainer.epochs=2.5: expected an integer >= 1"),
    ("seed=abc", "seed='abc': expected an integer >= 0"),
    ("seed=-1", "seed=-1: expected an integer >= 0"),
    ("trainer.batch_size=0", "trainer.batch_size=0: expected an integer >= 1"),
    ("optimizer.lr=-1", "optimizer.lr=-1: expected a number > 0"),
    ("optimizer.lr=0", "optimizer.lr=0: expected a number > 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan: expected a number > 0"),
    ("trainer.grad_clip=-1", "trainer.grad_clip=-1: expected a number >= 0 (or null)"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0: expected an integer >= 1 (or null)"),
    ("trainer.accumulate=0", "trainer.accumulate=0: expected an integer >= 1"),
    ("trainer.val_every=0", "trainer.val_every=0: expected an integer >= 1"),
    ("trainer.monitor=val/loss", "trainer.monitor='val/loss': expected one of val/dice, val/iou"),
    ("amp=fp8", "amp='fp8': expected one of auto, fp16, bf16, off"),
    ("device=gpu", "device='gpu': expected a string matching"),
    ("resume=maybe", "resume='maybe': expected true or false"),
    ("trainer.num_workers=-2", "trainer.num_workers=-2: expected an integer >= 0"),
    ("profile.image_size=8", "profile.image_size=8: expected an integer >= 16"),
    ("optimizer=sgd optimizer.momentum=1.5", "optimizer.momentum=1.5: expected a number >= 0 and <= 1"),
])
def test_bad_values_are_refused_naming_the_key_and_range(override, message):
    cfg = compose_cfg(override.split())
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["trainer.grad_clip=null", "trainer.grad_clip=0", "trainer.epochs=1.0",
                                      "trainer.limit_train_batches=2", "seed=7", "device=cuda:1", "amp=bf16",
                                      "threads=1", "trainer.early_stopping=0"])
def test_good_values_pass(override):
    validate(compose_cfg([override]))


@pytest.mark.parametrize("group,choice", sorted(
    (d.name, f.stem) for d in CONF.iterdir() if d.is_dir() and d.name in ("model", "loss", "dataset", "optimizer",
                                                                         "scheduler", "profile")
    for f in d.glob("*.yaml")))
def test_every_shipped_config_validates(group, choice):
    validate(compose_cfg([f"{group}={choice}"]))


def test_cli_bad_value_is_one_line_exit_1_and_creates_no_store(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "SEGSWEEP_CACHE": str(tmp_path / "cache")}
    env.pop("SEGSWEEP_DEBUG", None)
    proc = subprocess.run([sys.executable, "run.py", "trainer.epochs=abc", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines == ["error: trainer.epochs='abc': expected an integer >= 1  (SEGSWEEP_DEBUG=1 shows the traceback)"]
    assert not db.exists() and not (tmp_path / "cache").exists()
    status = json.loads((tmp_path / "run" / "job_status.json").read_text())
    assert status["status"] == "FAILED" and "trainer.epochs='abc'" in status["reason"]
