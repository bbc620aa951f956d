"""The `cv` config node: off by default and invisible to runs without it (config_hash, params, run name);
validated in one line naming the option; each fold its own configuration (like a seed); the CV studies."""
from __future__ import annotations

import pytest

from seg.schema import ConfigError, validate
from seg.sweep import config_hash
from seg.train import run_params
from tests.helpers.compose import compose_cfg, compose_resolved

BASES = [[], ["dataset=acdc", "model=transunet", "loss=wce"], ["dataset=ct_heart", "experiment=ct_heart"]]


@pytest.mark.parametrize("base", BASES)
def test_a_run_without_cv_has_the_hash_params_and_name_it_had_before_the_cv_node(base):
    resolved = compose_resolved(base)
    assert resolved["cv"] == {"folds": None, "fold": None, "seed": 0}
    without = {k: v for k, v in resolved.items() if k != "cv"}          # the config before the node existed
    assert config_hash(resolved, []) == config_hash(without, [])
    assert not [k for k in run_params(resolved) if k.startswith("cv")]
    assert compose_cfg(base).tracking.run_name.endswith("-s0")


@pytest.mark.parametrize("base", BASES)
def test_val_every_1_keeps_the_hash_a_run_had_before_the_key_and_2_changes_it(base):
    resolved = compose_resolved(base)
    assert resolved["trainer"]["val_every"] == 1
    before = {**resolved, "trainer": {k: v for k, v in resolved["trainer"].items() if k != "val_every"}}
    assert config_hash(resolved, []) == config_hash(before, [])
    assert config_hash(compose_resolved([*base, "trainer.val_every=2"]), []) != config_hash(resolved, [])


def test_each_fold_is_its_own_configuration_and_cv_settings_count():
    h = lambda *o: config_hash(compose_resolved(["model=unet", "loss=dice", *o]), [])
    folds = [h("cv.folds=3", f"cv.fold={f}") for f in range(3)]
    assert len(set(folds)) == 3 and h() not in folds
    assert h("cv.folds=3", "cv.fold=0") == h("cv.folds=3", "cv.fold=0", "resume=false")
    assert h("cv.folds=3", "cv.fold=0", "cv.seed=1") != folds[0] and h("cv.folds=5", "cv.fold=0") != folds[0]
    assert h("cv.folds=3", "cv.fold=0", "seed=1") != folds[0]


def test_a_cv_run_logs_its_fold_as_params_and_ends_its_name_with_it():
    resolved = compose_resolved(["cv.folds=5", "cv.fold=3", "cv.seed=2"])
    params = run_params(resolved)
    assert (params["cv.folds"], params["cv.fold"], params["cv.seed"]) == (5, 3, 2)
    assert resolved["tracking"]["run_name"] == "unet-dice-s0-f3"


@pytest.mark.parametrize("overrides,message", [
    (["cv.folds=1", "cv.fold=0"], "cv.folds=1: expected an integer >= 2 (or null)"),
    (["cv.folds=abc", "cv.fold=0"], "cv.folds='abc': expected an integer >= 2 (or null)"),
    (["cv.folds=3"], "cv.fold=null: expected an integer in 0..2 with cv.folds=3 (every fold: -m cv.fold='range(0,3)')"),
    (["cv.fold=1"], "cv.fold=1 without cv.folds: set cv.folds=K (K >= 2) too"),
    (["cv.folds=3", "cv.fold=3"], "cv.fold=3: expected an integer in 0..2 (cv.folds=3)"),
    (["cv.folds=3", "cv.fold=-1"], "cv.fold=-1: expected an integer >= 0 (or null)"),
    (["cv.folds=3", "cv.fold=0", "cv.seed=-2"], "cv.seed=-2: expected an integer >= 0"),
])
def test_bad_cv_settings_fail_in_one_line_naming_the_option(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    assert str(err.value).startswith(message.split(":")[0]) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_valid_cv_settings_pass():
    validate(compose_cfg(["cv.folds=5", "cv.fold=4", "cv.seed=9"]))
    validate(compose_cfg([]))


def test_the_cv_studies_sweep_every_fold_in_their_own_experiment():
    real = compose_cfg(["experiment=acdc_cv", "dataset.root=/data/ACDC"], return_hydra_config=True)
    assert real.cv.folds == 5 and real.seeds == 1 and real.tracking.experiment == "acdc_cv"
    assert real.hydra.sweeper.params["cv.fold"] == "range(0,5)"
    assert real.hydra.sweeper.params["model"] == "unet,resunet,transunet"
    twin = compose_cfg(["experiment=phantom_acdc_cv"], return_hydra_config=True)
    assert twin.cv.folds == 3 and twin.dataset.root is None and twin.tracking.experiment == "phantom_acdc_cv"
    assert twin.hydra.sweeper.params["cv.fold"] == "range(0,3)" and twin.profile.image_size == 32
    assert twin.tracking.run_name == "unet-dice-s0-f0"
    validate(twin)
