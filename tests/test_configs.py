"""Every config in conf/ composes and instantiates (lightning-hydra-template's test_configs)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from seg import PROJECT_ROOT
from seg.config import build
from tests.conftest import compose_cfg

CONF = PROJECT_ROOT / "conf"


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_hold_the_documented_choices():
    assert choices("model") == ["resunet", "transunet", "unet"]
    assert choices("loss") == ["bce", "bce_dice", "dice", "dice_focal", "focal", "wce"]
    assert set(choices("dataset")) == {"acdc", "acdc_lv", "acdc_rv", "covid_infection", "covid_lung",
                                       "covid_radiography", "ct_heart", "png_pairs"}
    assert choices("transforms") == ["default", "window"]
    assert choices("launcher") == ["joblib", "slurm", "slurm_local", "submitit_local"]
    assert choices("hparams") == ["optuna"]
    assert choices("optimizer") == ["adam", "adamw", "sgd"]
    assert choices("scheduler") == ["cosine", "none", "plateau", "poly"]
    assert choices("profile") == ["cpu", "paper"]
    assert set(choices("model_size")) == {f"{m}_{p}" for m in choices("model") for p in choices("profile")}


@pytest.mark.parametrize("model", choices("model"))
@pytest.mark.parametrize("dataset", ["covid_infection", "acdc"])
def test_model_configs_instantiate_cpu(model, dataset):
    cfg = compose_cfg([f"model={model}", f"dataset={dataset}", "profile.image_size=32"])
    net = build(cfg.model)
    out = net(torch.zeros(2, cfg.dataset.in_channels, 32, 32))
    assert out.shape == (2, cfg.dataset.num_classes, 32, 32)
    assert cfg.model.size == "cpu"


@pytest.mark.parametrize("model", choices("model"))
def test_model_configs_compose_paper(model):
    cfg = compose_cfg([f"model={model}", "profile=paper"])
    assert cfg.model.size == "paper" and cfg.dataset.image_size == 256


@pytest.mark.parametrize("loss", choices("loss"))
@pytest.mark.parametrize("dataset", ["covid_infection", "acdc"])
def test_loss_configs_instantiate(loss, dataset):
    cfg = compose_cfg([f"loss={loss}", f"dataset={dataset}"])
    k = cfg.dataset.num_classes
    value = build(cfg.loss)(torch.randn(2, k, 8, 8), torch.randint(0, max(k, 2), (2, 8, 8)))
    assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize("optimizer", choices("optimizer"))
@pytest.mark.parametrize("scheduler", choices("scheduler"))
def test_optimizer_and_scheduler_configs_instantiate(optimizer, scheduler):
    cfg = compose_cfg([f"optimizer={optimizer}", f"scheduler={scheduler}"])
    opt = build(cfg.optimizer, params=[torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.Optimizer)
    sched = build(cfg.scheduler, optimizer=opt)
    assert (sched is None) == (scheduler == "none")


def test_bce_on_multiclass_is_cross_entropy():
    cfg = compose_cfg(["loss=bce", "dataset=acdc"])
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    assert build(cfg.loss)(logits, target).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item(), abs=1e-6)


def test_paths_resolve_from_the_project_root():
    cfg = compose_cfg([])
    assert cfg.paths.root == str(PROJECT_ROOT)
    assert cfg.tracking.run_name == "unet-dice-s0"
    assert cfg.dataset.name == "covid_infection" and cfg.dataset.root is None     # the embedded phantom
    assert cfg.tracking.experiment == "phantom_xray"                               # as phantom runs always were


def test_unknown_choice_lists_the_valid_ones():
    proc = subprocess.run([sys.executable, "run.py", "model=unetx"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "Could not find 'model/unetx'" in proc.stderr
    for name in ("unet", "resunet", "transunet"):
        assert name in proc.stderr.split("Available options in 'model'")[1]
