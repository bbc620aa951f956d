"""One home per dataset: the module contract, the closed `_target_` lookup, predict readers, published
references, the phantom switch of `open_dataset`, and the renamed `phantom_*` configs."""
from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

from seg import PROJECT_ROOT
from seg.data import datasets, open_dataset
from seg.data.datasets import CONTRACT, MOVED_TARGETS, UnknownDataset, module_for, predict_reader, references
from seg.data.renamed import DATASETS, EXPERIMENTS, refused
from tests.conftest import compose_cfg

CONFIGS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "dataset").glob("*.yaml"))


def test_the_dataset_configs_are_one_per_task():
    assert CONFIGS == ["acdc", "acdc_lv", "acdc_rv", "covid_infection", "covid_lung", "covid_radiography",
                       "ct_heart", "png_pairs"]
    assert sorted(p.stem for p in (PROJECT_ROOT / "experiments").glob("*.yaml")) == [
        "acdc_cv", "acdc_multiclass", "acdc_single_ventricle", "covid_arch_x_loss", "covid_lung_arch_x_loss", "ct_heart",
        "phantom_acdc_cv"]


@pytest.mark.parametrize("name", datasets.module_names())
def test_every_dataset_module_keeps_the_contract(name):
    module = importlib.import_module(f"seg.data.datasets.{name}")
    for attr in CONTRACT:
        assert hasattr(module, attr), f"seg.data.datasets.{name} lacks {attr}"
    for reader in module.READERS:
        assert callable(getattr(module, reader))


def test_no_dataset_module_knows_the_phantoms():
    files = sorted((PROJECT_ROOT / "seg" / "data" / "datasets").glob("*.py"))
    assert len(files) == 6
    assert [f.name for f in files if "phantom" in f.read_text().lower()] == []
    proc = subprocess.run([sys.executable, "-c", "import sys, seg.data.datasets as d\n"
                           "[__import__(f'seg.data.datasets.{m}') for m in d.module_names()]\n"
                           "print(sorted(m for m in sys.modules if 'phantom' in m))"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_maps_to_its_module_and_predict_reader(name):
    cfg = compose_cfg([f"dataset={name}"])
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    module = module_for(resolved["dataset"]["source"]["_target_"])
    reader = predict_reader(resolved)
    assert module.__name__.startswith("seg.data.datasets.")
    assert len(reader.class_names) == max(int(cfg.dataset.num_classes) - 1, 1)
    assert reader.class_names == module.class_names(resolved["dataset"]["source"])


def test_predict_readers_scale_like_the_readers():
    acdc = predict_reader({"dataset": {"source": {"_target_": "seg.data.datasets.acdc.acdc", "labels": [3, 1]}}})
    assert acdc.class_names == ["lv", "rv"]
    np.testing.assert_allclose(acdc.scale(np.array([[[10, 20], [30, 50]]], np.int16)), [[[0, 0.25], [0.5, 1]]])
    ct = predict_reader({"dataset": {"source": {"_target_": "seg.data.datasets.ct_heart.ct_heart",
                                                "window": {"width": 400, "level": 40}}}})
    np.testing.assert_allclose(ct.scale(np.array([[[-160.0, 40.0, 240.0]]], np.float32)), [[[0, 0.5, 1]]])
    png = np.full((1, 2, 2), 7, np.uint8)
    assert predict_reader({"dataset": {"source": {"_target_": "seg.data.covid.covid_lung"}}}).scale(png) is png


@pytest.mark.parametrize("old, new", sorted(MOVED_TARGETS.items()))
def test_targets_of_older_runs_still_find_their_reader(old, new):
    assert module_for(old) is module_for(new)


@pytest.mark.parametrize("target", [
    "seg.data.datasets.acdc.read_info",            # a function of a dataset module that is not a reader
    "seg.data.datasets.acdc.np.load",
    "seg.data.datasets.os.system",
    "seg.models.unet.torch.load",
    "os.system",
    "seg.data.datasets.__init__.predict_reader",
    "",
])
def test_the_target_lookup_is_closed(target):
    with pytest.raises(UnknownDataset, match="is not a reader of seg.data.datasets"):
        module_for(target)
    with pytest.raises(UnknownDataset, match=r"dataset 'x': .*is not a reader"):
        predict_reader({"dataset": {"name": "x", "source": {"_target_": target}}})


def test_published_references_live_with_their_dataset():
    covid = references("covid_infection")
    assert [r.dice for r in covid.references] == [{"infection": 88.21, "mean": 88.21}]
    assert "COVID-QU-Ex" in covid.real_data
    acdc = references("acdc")
    assert [r.dice["mean"] for r in acdc.references] == [89.71, 90.00] and "nnU-Net" in acdc.not_included
    assert [r.dice for r in references("acdc_lv").references] == [{"lv": 95.73}, {"lv": 95.83}]
    assert [r.dice for r in references("acdc_rv").references] == [{"rv": 88.86}, {"rv": 88.55}]
    assert references("phantom_cardiac") == acdc and references("phantom_xray") == covid   # older runs' tags
    for name in ("covid_lung", "covid_radiography", "ct_heart", "png_pairs", "unknown"):
        assert references(name).references == ()


# ---------------------------------------------------------------------------------------------
# the phantom switch: dataset.root unset = the embedded phantom
# ---------------------------------------------------------------------------------------------

def test_root_unset_reads_the_phantom_through_the_real_reader(phantom_cache, covid_root):
    cfg = compose_cfg(["dataset=covid_infection", "profile.image_size=32"])
    assert cfg.dataset.root is None and cfg.tracking.experiment == "phantom_xray"
    data = open_dataset(cfg.dataset, seed=0, cache_dir=phantom_cache)
    assert (len(data.train), len(data.val), len(data.test)) == (96, 24, 32)
    assert data.test[0].meta["image_file"].startswith(str(covid_root))
    real = compose_cfg(["dataset=covid_infection", f"dataset.root={covid_root}", "profile.image_size=32"])
    assert real.tracking.experiment == "covid_infection"
    assert open_dataset(real.dataset, seed=0, cache_dir=None).split == data.split


@pytest.mark.parametrize("root, seeds", [(None, 1), ("/data/COVID-QU-Ex", 3)])
def test_studies_run_one_seed_on_the_phantom_and_three_on_real_data(root, seeds):
    overrides = ["experiment=covid_arch_x_loss"] + ([f"dataset.root={root}"] if root else [])
    cfg = compose_cfg(overrides)
    assert cfg.seeds == seeds and cfg.dataset.name == "covid_infection"
    assert cfg.tracking.experiment == ("phantom_xray" if root is None else "covid_infection")


# ---------------------------------------------------------------------------------------------
# renamed configs fail in one line naming the new one
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new", sorted(DATASETS.items()))
def test_old_dataset_names_name_the_new_one(old, new):
    assert refused([f"dataset={old}"]) == (f"dataset={old} was renamed: use dataset={new} "
                                           "(dataset.root unset = the embedded phantom)")
    assert new in CONFIGS


@pytest.mark.parametrize("old, new", sorted(EXPERIMENTS.items()))
def test_old_experiment_names_name_the_new_one(old, new):
    assert refused(["-m", f"experiment={old}", "seeds=3"]) == (
        f"experiment={old} was renamed: use experiment={new} (dataset.root unset = the embedded phantom)")


def test_refused_reads_sweeps_and_leaves_other_overrides_alone():
    assert refused(["-m", "dataset=acdc_lv,phantom_acdc_rv"]).startswith("dataset=phantom_acdc_rv was renamed")
    assert refused(["+dataset=choice(acdc,phantom_cardiac)"]).startswith("dataset=phantom_cardiac was renamed")
    assert refused(["dataset=covid_infection", "model=unet", "tracking.experiment=phantom_xray"]) is None


def test_run_py_with_an_old_name_fails_in_one_line():
    proc = subprocess.run([sys.executable, "run.py", "dataset=phantom_xray"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == ("error: dataset=phantom_xray was renamed: use dataset=covid_infection "
                           "(dataset.root unset = the embedded phantom)\n")


def test_check_cli_with_an_old_name_names_the_new_one(capsys):
    from seg.data.check import main

    assert main(["phantom_cardiac", "/nowhere"]) == 2
    assert capsys.readouterr().err == ("ERROR: dataset=phantom_cardiac was renamed: use dataset=acdc "
                                       "(dataset.root unset = the embedded phantom)\n")
