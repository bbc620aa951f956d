"""seg.report.runs: which runs a report covers and which form one row (smoke runs, sweeps, settings)."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
from mlflow import MlflowClient

from seg import report
from seg.report import runs as rr

IDS = [f"Test/COVID-19/case_{i:02d}.png" for i in range(6)]
DICE = [0.5, 0.6, 0.7, 0.8, 0.55, 0.65]


@pytest.fixture(scope="module")
def store(empty_store, tmp_path_factory, synth):
    """phantom_xray: OLD_SWEEP (2 configurations x 2 seeds, 16 epochs), SWEEP (the same, seed 1 of unet + dice
    FAILED, a RUNNING one, a parent run), a newer smoke sweep; resumed_xray: a sweep that skipped a run."""
    root = tmp_path_factory.mktemp("sel")
    shutil.copy(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("phantom_xray", artifact_location=(root / "art").as_uri())
    ids, t0 = {}, synth.T0
    cases = synth.cases_frame(IDS, DICE)
    for sweep, start in ((synth.OLD_SWEEP, t0 - 86_400_000), (synth.SWEEP, t0)):
        for model in ("unet", "resunet"):
            for seed in (0, 1):
                status = "FAILED" if (sweep, model, seed) == (synth.SWEEP, "unet", 1) else "FINISHED"
                ids[(sweep, model, seed)] = synth.log_run(
                    client, exp, root / "st" / f"{sweep}{model}{seed}", model, "dice", seed, sweep, cases=cases,
                    status=status, start=start + seed, val=0.7 if model == "unet" else 0.6,
                    params=synth.params_for(model, "dice", seed, **({"trainer.epochs": 1} if sweep == synth.OLD_SWEEP
                                                                     else {})))
    ids["running"] = synth.log_run(client, exp, root / "st" / "running", "unet", "dice", 3, synth.SWEEP,
                                   status="RUNNING", start=t0 + 5)
    parent = client.create_run(exp, tags={"segsweep.parent": "true", "sweep_id": synth.SWEEP}, run_name="sweep",
                               start_time=t0 + 10)
    client.log_metric(parent.info.run_id, "test/dice", 0.99)
    client.set_terminated(parent.info.run_id, "FINISHED")
    ids["parent"] = parent.info.run_id
    for seed in (0, 1):                                                   # a newer smoke sweep
        ids[("smoke", seed)] = synth.log_run(
            client, exp, root / "st" / f"smoke{seed}", "unet", "dice", seed, "2026-11-02_10-00-00", cases=cases,
            start=t0 + 60_000, params=synth.params_for("unet", "dice", seed, **{"trainer.limit_train_batches": 2}))
    # a resumed sweep: SWEEP ran resunet + dice and skipped unet + dice, FINISHED earlier in OLD_SWEEP
    resumed = client.create_experiment("resumed_xray", artifact_location=(root / "art_r").as_uri())
    skipped = synth.log_run(client, resumed, root / "st" / "r_old", "unet", "dice", 0, synth.OLD_SWEEP, cases=cases,
                            start=t0 - 86_400_000)
    fresh = synth.log_run(client, resumed, root / "st" / "r_new", "resunet", "dice", 0, synth.SWEEP, cases=cases)
    parent = client.create_run(resumed, tags={"segsweep.parent": "true", "sweep_id": synth.SWEEP}, run_name="sweep")
    children = root / "st" / "children.csv"
    pd.DataFrame([{"job": "0", "status": "SKIPPED", "run_id": skipped},
                  {"job": "1", "status": "FINISHED", "run_id": fresh}]).to_csv(children, index=False)
    client.log_artifact(parent.info.run_id, str(children))
    client.set_terminated(parent.info.run_id, "FINISHED")
    ids["resumed"] = (skipped, fresh)
    return {"uri": uri, "client": client, "ids": ids, "root": root}


def test_report_splits_configurations_on_exactly_what_config_hash_hashes():
    """A key config_hash ignores never splits a row; a key it hashes does (one list: seg.config.HASH_EXCLUDED)."""
    from seg.sweep import config_hash

    base = {"model": {"name": "unet"}, "seed": 0, "trainer": {"epochs": 2}}
    for key in rr.HASH_EXCLUDED:
        assert config_hash({**base, key: "a"}, []) == config_hash({**base, key: "b"}, [])
    for key in rr.TRAINER_HASH_EXCLUDED:
        assert config_hash({**base, "trainer": {"epochs": 2, key: 0}}, []) == config_hash(base, [])
    assert config_hash({**base, "trainer": {"epochs": 3}}, []) != config_hash(base, [])


def test_default_is_the_latest_sweep_with_a_non_smoke_run(store, synth):
    sel = report.select_runs(store["client"], store["uri"], ["phantom_xray"])
    runs = sel.tasks["phantom_xray"]
    assert {r.sweep_id for r in runs} == {synth.SWEEP}
    assert store["ids"]["parent"] not in {r.run_id for r in runs}          # a parent is not a configuration
    assert any("2026-11-02_10-00-00 hold only smoke runs" in n for n in sel.notes)
    smoke = report.select_runs(store["client"], store["uri"], ["phantom_xray"], include_smoke=True)
    assert {r.sweep_id for r in smoke.tasks["phantom_xray"]} == {"2026-11-02_10-00-00"}
    info = {s.sweep_id: s for s in sel.sweeps["phantom_xray"]}
    assert info["2026-11-02_10-00-00"].smoke and not info[synth.SWEEP].smoke and info[synth.OLD_SWEEP].n_runs == 4
    every = report.select_runs(store["client"], store["uri"], ["phantom_xray"], all_sweeps=True)
    assert len(every.smoke_left_out["phantom_xray"]) == 2                  # smoke runs out of --all-sweeps too
    run = next(r for r in every.smoke_left_out["phantom_xray"])
    assert run.smoke == "trainer.limit_train_batches=2"


def test_runs_whose_settings_differ_are_separate_rows_naming_the_key(store, synth):
    every = report.select_runs(store["client"], store["uri"], ["phantom_xray"], all_sweeps=True)
    configs = rr.group_configs(every.tasks["phantom_xray"])
    assert [c.label for c in configs] == ["unet + dice [trainer.epochs=1]", "unet + dice [trainer.epochs=16]",
                                          "resunet + dice [trainer.epochs=1]", "resunet + dice [trainer.epochs=16]"]
    sixteen = next(c for c in configs if c.label == "unet + dice [trainer.epochs=16]")
    assert [r.seed for r in sixteen.runs] == ["0"]                         # seed 1 FAILED, seed 3 RUNNING
    assert any("settings differ from other runs of unet + dice: trainer.epochs=16" in f for f in sixteen.flags)
    # paths, tracking, the seed and smoke switches do not split a configuration
    a = rr.Run("a", "a", "t", "FINISHED", {}, {}, synth.params_for("unet", "dice", 0), None, None)
    b = rr.Run("b", "b", "t", "FINISHED", {}, {}, {**synth.params_for("unet", "dice", 5), "paths.root": "/elsewhere",
                                                   "paths.cache": "/elsewhere/outputs/cache",
                                                   "dataset.source.root": "/elsewhere/outputs/cache/phantom",
                                                   "trainer.checkpoint_every_s": "0"},   # when files are written
               None, None)
    assert a.settings == b.settings and "dataset.source.root" in a.settings
    long = "dataset.source.transforms.augmentation.elastic_alpha"
    c = rr.Run("c", "c", "t", "FINISHED", {}, {}, {**a.params, long: "3"}, None, None)
    assert rr.differing_keys([a.settings, c.settings]) == [long]            # named in full, never cut off


def test_failed_running_runs_are_listed_not_averaged_and_the_header_names_the_scope(store, synth, tmp_path):
    report.build_report(store["uri"], tmp_path / "out", ["phantom_xray"])
    res = pd.read_csv(tmp_path / "out" / "results.csv").set_index("run_id")
    ids = store["ids"]
    assert not res.loc[ids[(synth.SWEEP, "unet", 1)], "included"] and not res.loc[ids["running"], "included"]
    s = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("model")
    assert s.loc["unet", "n_runs"] == 1 and s.loc["resunet", "n_runs"] == 2
    assert s.loc["unet", "flags"] == "fewer seeds: 1 of 2 (missing seed 1)"
    md = (tmp_path / "out" / "report.md").read_text()
    assert (f"Scope: sweep {synth.SWEEP} (the latest with a non-smoke run); 2 configuration(s), seeds 0, 1 "
            f"(1 to 2 run(s) per configuration).") in md
    assert f"Other sweeps of this experiment: 2026-11-02_10-00-00 (2 run(s), 1 configuration(s), smoke), " \
           f"{synth.OLD_SWEEP} (4 run(s), 2 configuration(s)); pick one with --sweep-id ID" in md
    section = md.split("### Runs not averaged")[1]
    assert "loss is NaN" in section and "RUNNING" in section


def test_a_resumed_sweep_includes_the_runs_it_skipped(store, synth):
    skipped, fresh = store["ids"]["resumed"]
    sel = report.select_runs(store["client"], store["uri"], ["resumed_xray"])
    assert {r.run_id for r in sel.tasks["resumed_xray"]} == {skipped, fresh}
    assert any("skipped them as already FINISHED" in n for n in sel.notes)
    old = report.select_runs(store["client"], store["uri"], ["resumed_xray"], sweep_id=synth.OLD_SWEEP)
    assert {r.run_id for r in old.tasks["resumed_xray"]} == {skipped}


def test_only_smoke_runs_fail_with_the_flag_to_use(new_store, synth):
    uri, client, root = new_store()
    exp = client.create_experiment("phantom_xray", artifact_location=(root / "art").as_uri())
    synth.log_run(client, exp, root / "a", "unet", "dice", 0, cases=synth.cases_frame(IDS, DICE),
                  params=synth.params_for("unet", "dice", 0, **{"debug.sigterm_after_epoch": 1}))
    with pytest.raises(report.ReportError, match=r"1 smoke run\(s\) left out: add --include-smoke"):
        report.select_runs(client, uri)
    sel = report.select_runs(client, uri, include_smoke=True)
    assert len(sel.tasks["phantom_xray"]) == 1
    run, _ = report.best_by_validation(uri, "phantom_xray")             # predict: smoke runs when nothing else
    assert run.run_id == sel.tasks["phantom_xray"][0].run_id
    with pytest.raises(report.ReportError, match="add --include-smoke"):
        report.best_by_validation(uri, "phantom_xray", include_smoke=False)
    other = client.create_run(exp, tags={"model": "unet", "loss": "bce", "seed": "0", "sweep_id": synth.SWEEP},
                              run_name="interrupted-before-its-test-pass")
    client.set_terminated(other.info.run_id, "FINISHED")                 # not a smoke run, but no test metrics
    run, _ = report.best_by_validation(uri, "phantom_xray")
    assert run.run_id == sel.tasks["phantom_xray"][0].run_id            # still the smoke run, not an error
    with pytest.raises(report.ReportError, match="no FINISHED run with test metrics"):
        report.best_by_validation(uri, "phantom_xray", include_smoke=False)


def test_best_by_validation_takes_a_sweep_and_tag_filter(store, synth):
    run, config = report.best_by_validation(store["uri"], "phantom_xray", sweep_id=synth.SWEEP)
    assert config.label == "unet + dice" and run.run_id == store["ids"][(synth.SWEEP, "unet", 0)]
    run, config = report.best_by_validation(store["uri"], "phantom_xray", sweep_id=synth.OLD_SWEEP,
                                            tags={"model": "resunet"})
    assert config.model == "resunet" and run.sweep_id == synth.OLD_SWEEP
    with pytest.raises(report.ReportError, match="has metric 'best/val/iou'"):
        report.best_by_validation(store["uri"], "phantom_xray", monitor="val/iou")
