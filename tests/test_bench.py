"""Smoke tests of the benchmark helpers (benchmarks/run.py): tiny inputs, no full benchmark, no speed asserted."""
from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchmarks.run import (GOALS, README_END, README_START, LoopProbe, bench_loop_step, cycle_efficiency,
                            finalize_ceiling, loop_breakdown, loop_shares, main, matmul_gflops, nearest_width,
                            parse_args, rate, ratios, readme_block, section_malloc, summary_keys, sum_epochs,
                            train_flops, update_readme, write_md)
from seg.config import build
from tests.conftest import compose_cfg


def test_matmul_roofline_is_a_positive_rate():
    gflops = matmul_gflops(64, repeats=2, window=0.01)
    assert math.isfinite(gflops) and gflops > 0


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"repeats": 0}, {"window": 0.0}])
def test_matmul_roofline_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="need n >= 1"):
        matmul_gflops(**{"n": 8, "repeats": 1, "window": 0.01, **kwargs})


def test_train_flops_counts_forward_and_weight_gradient_of_a_conv():
    # 3x3 conv 1 -> 2 channels on 8x8 (padding 1): forward 2 * 2 * 1 * 9 * 64 FLOPs; backward computes
    # the weight gradient (same count) but no input gradient (the input needs none).
    model = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    x, y = torch.randn(1, 1, 8, 8), torch.randn(1, 2, 8, 8)
    flops = train_flops(model, x, y, lambda out, target: (out - target).pow(2).mean())
    assert flops == 2 * (2 * 2 * 1 * 9 * 64)
    assert all(p.grad is None for p in model.parameters())       # gradients dropped afterwards


def test_rate_counts_items_per_second():
    assert rate(lambda: 3, window=0.01, repeats=2) > 0


def test_nearest_width_picks_the_closest_parameter_count():
    def make(width):
        return nn.Linear(10, width)                             # 11 * width parameters
    assert nearest_width(make, target=50, widths=range(1, 10)) == (5, 55)


def test_parse_args_rejects_an_unknown_section(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--sections", "roofline,nope"])
    assert "nope" in capsys.readouterr().err
    assert parse_args(["--sections", "step, data"]).sections == ["step", "data"]


def test_loop_probe_splits_an_epoch_into_its_parts():
    probe = LoopProbe()
    probe.spans = [                     # (kind, start, end, info) as the wrappers record; forward: images predicted
        ("train", 0.0, 8.0, {"seen": 32, "data_wait": 1.0}),
        ("forward", 8.5, 9.0, 1), ("metrics", 9.0, 9.2, None), ("eval", 8.0, 10.0, "val"),
        ("log", 10.0, 10.5, None),
        ("train", 11.0, 18.0, {"seen": 32, "data_wait": 0.5}),
        ("eval", 19.5, 20.0, "val"),
        ("eval", 20.0, 25.0, "test"),
    ]
    first, second = probe.epochs()
    assert first["wall_s"] == 11.0 and first["train_s"] == 8.0 and first["compute_s"] == 7.0
    assert first["val_s"] == 2.0 and first["val_forward_s"] == 0.5 and first["val_read_s"] == pytest.approx(1.3)
    assert first["log_s"] == 0.5 and first["other_s"] == pytest.approx(0.5) and first["val_cases"] == 1
    assert second["wall_s"] == 9.0                              # up to the test evaluation
    b = loop_breakdown(second, step_ips=32 / 6.0)               # bare network: 6 s of the 6.5 s compute
    assert b["overhead_s"]["step_extra"] == pytest.approx(0.5)
    assert b["bottleneck"] == "other" and b["overhead_s"]["other"] == pytest.approx(1.5)
    assert b["suite"] is None
    b = loop_breakdown(first, step_ips=32 / 6.0, forward_ips=4.0)  # 1 val case: 0.25 s of bare forward
    assert b["val_network_s"] == 0.25 and b["overhead_s"]["val_forward"] == pytest.approx(0.25)
    assert b["suite"] == pytest.approx((6.0 + 0.25) / 11.0)
    assert b["bottleneck"] == b["suite_bottleneck"] == "val_read"
    b = loop_breakdown(first, step_ips=32 / 6.0, forward_ips=0.5)  # a slow network forward: 2 s
    assert b["bottleneck"] == "val_network" and b["suite_bottleneck"] == "val_read"
    b = loop_breakdown(first, step_ips=32 / 6.0, loop_step_ips=32 / 6.6)  # train_epoch pre-loaded: 6.6 s
    assert b["overhead_s"]["step_extra"] == pytest.approx(1.0) and b["loop_step_s"] == pytest.approx(0.6)
    assert b["loop_step_share"] == pytest.approx(0.6 / 11.0)


def test_bench_loop_step_runs_train_epoch_on_preloaded_batches():
    cfg = compose_cfg(["profile.image_size=32", "trainer.batch_size=2"])
    torch.manual_seed(0)
    ips = bench_loop_step(cfg, build(cfg.model), batches=2)
    assert math.isfinite(ips) and ips > 0


def fake_result() -> dict:
    """A bench.json-like dict with every section, numbers invented for the writer."""
    epoch = {"wall_s": 10.0, "train_s": 8.0, "data_s": 0.2, "compute_s": 7.8, "val_s": 1.8, "val_forward_s": 1.0,
             "val_metrics_s": 0.3, "val_read_s": 0.5, "log_s": 0.1, "other_s": 0.1, "seen": 96, "val_cases": 29}
    return {
        "machine": {"cpu": "Test CPU 9000", "cores": 2, "torch_threads": 2, "torch": "2.13.0", "python": "3.11",
                    "platform": "Linux", "date_utc": "2026-11-23 12:00 UTC", "cuda": None, "malloc": "retain",
                    "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [2.0, 2.0, 2.0]},
        "total_s": 300.0, "section_s": {"roofline": 3.0},
        "sections": {
            "roofline": {"gflops_by_n": {"1024": 90.0, "2048": 100.0}, "ceiling_gflops": 100.0, "threads": 2,
                         "first_gflops": 100.0, "checks": [{"after": "step", "gflops": 95.0}]},
            "step": {"rows": [{"model": "unet cpu", "name": "unet", "profile": "cpu", "params": 1094269, "size": 96,
                               "batch": 16, "fwd_gflops_per_img": 0.48, "train_gflops_per_img": 1.43,
                               "img_per_s": 20.0, "achieved_gflops": 28.6, "mfu": 0.286}]},
            "loop": {"goal": 0.9, "dataset": "phantom_xray", "store": "temp store",
                     "val_every": 2,
                     "rows": [{"model": "unet cpu", "size": 96, "batch": 16, "workers": 0, "amp": "auto",
                               "loss": "dice", "grad_clip": 1.0, "step_img_per_s": 12.0, "loop_img_per_s": 9.6,
                               "train_img_per_s": 12.0, "ratio": 0.8, "train_ratio": 1.0, "epochs": [epoch],
                               "val_every": 2, "epochs_run": 5, "ratio_val_every_1": 0.75,
                               "ratio_measured_epochs": 0.78, "ratio_per_epoch": [0.74, None, 0.91, 0.8],
                               "measured": epoch,
                               "breakdown": loop_breakdown(epoch, 12.0),
                               "shares": loop_shares(loop_breakdown(epoch, 12.0))}]},
            "malloc": {"model": "unet cpu", "epochs": 5, "measured_epochs": 4, "rounds": 2, "speedup": 1.25,
                       "cpu_speedup": 1.2,
                       "runs": {"system": [{"wall_s": 25.0}, {"wall_s": 27.0}], "retain": [{"wall_s": 20.0},
                                                                                         {"wall_s": 22.0}]},
                       "median": {"system": {"wall_s": 26.0, "user_s": 40.0, "system_s": 4.0, "minor_faults": 950000.0,
                                             "max_rss_mb": 880.0},
                                  "retain": {"wall_s": 21.0, "user_s": 36.0, "system_s": 0.5, "minor_faults": 2000.0,
                                             "max_rss_mb": 890.0}}},
            "eval3d": {"dataset": "acdc (phantom)", "model": "unet cpu", "epochs": 3, "profile_epochs": 16,
                       "run_s": 40.0, "train_and_eval_s": 30.0, "fit_s": 24.0, "val_s": 3.0, "test_s": 6.0,
                       "test_forward_s": 4.0, "test_metrics_s": 1.5, "test_read_s": 0.5, "share_measured": 0.3,
                       "share_projected": 0.15, "share_projected_val_every_2": 0.09, "goal": 0.1,
                       "train_images_per_epoch": 208.0, "val_images_per_epoch": 74.0, "forward_vs_step": 0.26,
                       "val_forward_share_of_network": 0.084, "eval_layout": "channels_last", "memory_format": "auto"},
            "peers": {"size": 96, "batch": 16, "rounds": 3, "iters": 4, "monai": "1.6.1", "target_params": 1094269,
                      "smp_note": "smp not installed",
                      "rows": [{"model": "ours: U-Net cpu preset", "spec": "ours", "params": 1094269,
                                "train_gflops_per_img": 1.43, "img_per_s": 20.0, "mfu": 0.286,
                                "achieved_gflops": 28.6, "ours_over_theirs": 1.0, "ours_over_theirs_per_gflop": 1.0},
                               {"model": "MONAI BasicUNet", "spec": "features=(24, ...)", "params": 1113841,
                                "train_gflops_per_img": 2.35, "img_per_s": 8.0, "mfu": 0.19, "achieved_gflops": 18.8,
                                "ours_over_theirs": 2.5, "ours_over_theirs_per_gflop": 1.52}]},
            "data": {"goal": 3.0, "step_reference": "unet cpu",
                     "rows": [{"dataset": "phantom_xray", "train_samples": 96, "size": 96, "setup_s": 0.1,
                               "reader_img_per_s": 500.0, "augmented_img_per_s": 300.0, "loader_img_per_s": 280.0,
                               "workers": 0, "step_img_per_s": 20.0, "ratio": 14.0}]},
            "metrics": {"script": "benchmarks/bench_metrics.py", "returncode": 0, "seconds": 30.0,
                        "markdown": "HD95 TABLE HERE",
                        "result": {"slowest_ratio": 7.1, "goal_ratio": 5.0, "max_abs_diff_mm": 3.8e-7,
                                   "results": [{"case": "256x256 large structure + fp (r 110 px)", "ratio": 7.1},
                                               {"case": "10x256x256 small organ (r 15 px)", "ratio": 9.0}],
                                   "overlap": [{"metric": "Dice", "ratio": 2.6, "max_abs_diff": 3e-8}]}},
            "predict": {"skipped": "benchmarks/bench_predict.py is not present"},
            "gpu": {"available": False, "note": "No GPU on this machine."},
        },
    }


def test_finalize_ceiling_takes_the_best_roofline_and_recomputes_mfu():
    res = fake_result()
    res["sections"]["roofline"]["checks"].append({"after": "loop", "gflops": 143.0})
    assert finalize_ceiling(res["sections"]) == 143.0
    assert res["sections"]["step"]["rows"][0]["mfu"] == pytest.approx(28.6 / 143.0)
    assert res["sections"]["peers"]["rows"][1]["mfu"] == pytest.approx(8.0 * 2.35 / 143.0)


def test_ratios_compare_each_measured_ratio_with_its_goal():
    by_name = {r["name"]: r for r in ratios(fake_result())}
    loop = by_name["loop / step, unet cpu"]
    assert loop["value"] == 0.8 and loop["goal"] == GOALS["loop"] and loop["met"] is False
    assert "bottleneck: val_forward" in loop["note"] and loop["note"].startswith("trainer.val_every=2;")
    assert by_name["data loader / step, phantom_xray"]["met"] is True
    assert by_name["HD95 MONAI time / ours (slowest case)"]["met"] is True
    assert by_name["ours / MONAI BasicUNet img/s"]["value"] == 2.5


def test_write_md_renders_every_section_from_the_json():
    md = write_md(fake_result())
    assert "Test CPU 9000, 2 cores (torch threads: 2)" in md and "torch 2.13.0" in md and "2026-11-23 12:00 UTC" in md
    assert "| loop / step, unet cpu | 0.800 | >= 0.9 | **missed** |" in md
    assert "| unet cpu | 1,094,269 | 96 | 16 | 0.48 | 1.43 | 20.00 | 28.6 | 28.6% |" in md
    assert "Re-measured after each section: step 95.0 GFLOP/s." in md
    assert "Ceiling (the best of these): **100.0 GFLOP/s**" in md
    assert "| MONAI BasicUNet | features=(24, ...) | 1,113,841 |" in md
    assert "| phantom_xray | 96 | 96 | 0.1 | 500 | 300 | 280 | 0 | 20.00 | **14.0** |" in md
    assert "HD95 TABLE HERE" in md and "smp not installed" in md
    assert "Not measured: benchmarks/bench_predict.py is not present." in md
    assert "No GPU on this machine." in md
    assert "Oversubscribed" not in md                            # load 2.0 on 2 cores


def test_write_md_warns_when_the_machine_is_oversubscribed():
    res = fake_result()
    res["machine"]["loadavg_end"] = [9.5, 5.0, 3.0]
    md = write_md(res)
    assert "**Oversubscribed**: a 1-minute load average of 9.5 on 2 cores. With 2 torch threads" in md
    res["machine"]["torch_threads"] = 1
    assert "With 1 torch thread there are no thread barriers" in write_md(res)


def test_write_md_says_which_sections_did_not_run_or_failed():
    res = fake_result()
    res["sections"] = {"roofline": {"error": "RuntimeError: boom"}}
    md = write_md(res)
    assert "Failed: `RuntimeError: boom`" in md
    assert md.count("Not run (--sections).") == 9


def test_render_rederives_a_saved_bench_json(tmp_path, capsys):
    res = fake_result()
    res["sections"]["loop"]["rows"][0]["breakdown"] = {"stale": True}     # an older bench.json's derivation
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(res))
    assert main(["--render", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| loop / step, unet cpu | 0.800 | >= 0.9 | **missed** | trainer.val_every=2; shares of the epochs: " in out
    assert "; bottleneck: val_forward" in out


def _probe(start: float, end: float, wall: float, cpu: float = 0.0, call_cpu: float = 0.0, images: int = 16):
    return ("probe", start, end, {"images": images, "wall_s": wall, "cpu_s": cpu, "call_cpu_s": call_cpu})


def test_loop_probe_leaves_its_bare_step_probes_out_of_the_epochs():
    """Bare steps run after the loop's training steps (inside the train span): not in the wall or train time;
    each epoch's bare img/s is its own probes' images / their summed seconds."""
    probe = LoopProbe()
    probe.spans = [_probe(2.0, 3.0, 1.0), _probe(5.0, 7.0, 2.0),           # epoch 1: 32 images in 3 s
                   ("train", 0.0, 8.0, {"seen": 32, "data_wait": 1.0}), ("eval", 8.0, 10.0, "val"),
                   _probe(14.0, 14.5, 0.5),
                   ("train", 12.0, 18.0, {"seen": 32, "data_wait": 0.5}), ("eval", 20.0, 25.0, "test")]
    probe.spans.sort(key=lambda s: s[1])
    first, second = probe.epochs()
    assert first["wall_s"] == 9.0 and first["train_s"] == 5.0 and first["compute_s"] == 4.0
    assert first["other_s"] == 2.0 and first["validated"] is True                 # 10 -> 12: outside every span
    assert first["bare"] == pytest.approx(32 / 3.0) and first["bare_images"] == 32
    assert first["bare_wall_s"] == [1.0, 2.0]
    assert second["wall_s"] == 7.5 and second["train_s"] == 5.5 and second["validated"] is False
    assert second["bare"] == pytest.approx(16 / 0.5)
    total = sum_epochs([first, second])
    assert total["wall_s"] == 16.5 and total["seen"] == 64 and total["val_s"] == 2.0
    # val_every=2: one validated (9 s) + one unvalidated (7.5 s) epoch per 64 images; every epoch validated: 32 / 9 s
    assert cycle_efficiency([first, second], 2, step_ips=8.0) == pytest.approx(64 / 16.5 / 8.0)
    assert cycle_efficiency([first, second], 1, step_ips=8.0) == pytest.approx(32 / 9 / 8.0)
    assert cycle_efficiency([first], 2, step_ips=8.0) is None               # no unvalidated epoch measured
    assert LoopProbe().epochs() == []


def test_loop_probe_pairs_a_bare_step_with_every_training_step():
    """The hook itself: two warm-up calls at fit start, one bare step after every optimizer step, each recorded
    and left out of the epoch's wall, train and CPU time."""
    class SlowBare:
        batch, calls = 4, 0

        def __call__(self):
            self.calls += 1
            time.sleep(0.05)
            return 0.05, 0.002

    bare = SlowBare()
    probe = LoopProbe(bare)
    probe.on_fit_start(None)
    assert bare.calls == 2 and probe.spans == []                            # the warm-up is not recorded
    probe.on_epoch_start(None)
    start = time.perf_counter()
    for _ in range(3):
        time.sleep(0.01)                                                    # the loop's own step
        probe.after_step(None, 0.5, 4)
    end = time.perf_counter()
    probe.on_span("train", start, end, {"seen": 12, "data_wait": 0.0})
    probe.on_epoch_end(None, {})
    probe.on_fit_end(None)
    (epoch,) = probe.epochs()
    assert bare.calls == 5 and epoch["bare_images"] == 12 and epoch["bare"] == pytest.approx(12 / 0.15)
    assert epoch["bare_cpu"] == pytest.approx(12 / 0.006)
    probes = [s for s in probe.spans if s[0] == "probe"]
    away = sum(s[2] - s[1] for s in probes)                                 # each call slept 50 ms
    assert len(probes) == 3 and away >= 0.15
    assert epoch["train_s"] == pytest.approx(end - start - away)            # the loop's own 3 x 10 ms and more
    assert epoch["train_s"] >= 0.03
    (opened,), (ended,) = [m for m in probe.marks if m[0] == "open"], [m for m in probe.marks if m[0] == "end"]
    assert epoch["wall_s"] == pytest.approx(ended[1] - start - away)
    assert epoch["cpu_s"] == pytest.approx(ended[2] - opened[2] - sum(s[3]["call_cpu_s"] for s in probes))


def test_loop_shares_split_the_wall_time_into_four_parts():
    epoch = {"wall_s": 10.0, "train_s": 8.0, "data_s": 0.5, "compute_s": 7.5, "val_s": 1.2, "val_forward_s": 0.8,
             "val_metrics_s": 0.2, "val_read_s": 0.2, "log_s": 0.1, "other_s": 0.7, "seen": 96, "val_cases": 24}
    shares = loop_shares(loop_breakdown(epoch, 96 / 7.0, forward_ips=60.0))
    assert shares == pytest.approx({"data": 0.05, "step": 0.75, "val": 0.12, "checkpoint_log": 0.08})


def test_summary_keys_name_each_preset_and_the_slowest_hd95_case():
    keys = summary_keys(fake_result())
    assert keys["loop_efficiency_unet_cpu"] == 0.8 and keys["loop_val_every_1_ratio_unet_cpu"] == 0.75
    assert set(keys["loop_shares_unet_cpu"]) == {"data", "step", "val", "checkpoint_log"}
    assert keys["hd95_speedup"] == 7.1
    assert keys["hd95_speedup_256x256_large_structure_fp_r_110_px"] == 7.1
    assert keys["eval3d_share_acdc_cpu"] == 0.3 and keys["eval3d_share_acdc_cpu_projected"] == 0.15
    assert keys["ours_over_monai_basicunet_per_gflop"] == 1.52
    assert [k for k in keys if "loop_efficiency" in k] == ["loop_efficiency_unet_cpu"]


def test_eval3d_share_is_rendered_with_its_goal_as_an_upper_bound():
    res = fake_result()
    md = write_md(res)
    assert "## 3c. 3D evaluation's share of a cpu-profile ACDC run" in md
    assert "| unet cpu on acdc (phantom) | 3 | 30.0 | 3.0 | 6.0 | 4.0 | 1.5 | 0.5 | **30.0%** | 15.0% | 9.0% |" in md
    assert "| 3D evaluation share of an ACDC cpu-profile run (3 epochs) | 0.300 | <= 0.1 | **missed** |" in md
    assert ("Validation's forward passes alone (74 slices per epoch against 208 training slices, one slice's forward "
            "pass (channels_last, memory_format=auto) costing 0.26 of its training step) are 8.4% of an epoch's "
            "network work: the floor of the share at trainer.val_every=1. Goal <= 10%.") in md
    del res["sections"]["eval3d"]["forward_vs_step"]                  # a bench.json from before: no such sentence
    assert "Validation's forward passes alone" not in write_md(res) and "Goal <= 10%." in write_md(res)
    assert "| loop / step, unet cpu | 0.800 | >= 0.9 | **missed** | trainer.val_every=2; shares of the epochs:" in md
    assert "| unet cpu | **0.80** | 0.75 | 0.78 | 0.74 - 0.91 |" in md     # single epochs: the spread, None left out
    res["sections"]["eval3d"].update(epochs=16, share_measured=0.095)   # a full cpu-profile run: nothing to project
    md = write_md(res)
    assert "| unet cpu on acdc (phantom) | 16 | 30.0 | 3.0 | 6.0 | 4.0 | 1.5 | 0.5 | **9.5%** | (measured) | 9.0% |" in md
    assert ("| 3D evaluation share of an ACDC cpu-profile run (16 epochs) | 0.095 | <= 0.1 | met | goal: at most 10%; "
            "projected (val_every=2: 9%); test pass 6.0 s") in md
    assert "cpu profile, 16 epochs (the profile's own count), timed by the same hook" in md


def test_malloc_section_compares_the_two_policies_by_their_median_runs(monkeypatch):
    """section_malloc starts benchmarks/bench_malloc.py once per policy and round with $SEGSWEEP_MALLOC set,
    alternating; speed-up = median wall under system / median under retain; rendered with the machine's policy."""
    walls = {"system": iter([30.0, 26.0]), "retain": iter([20.0, 24.0])}
    seen = []

    def fake_run(cmd, env, **kw):
        mode = env["SEGSWEEP_MALLOC"]
        seen.append((mode, cmd[cmd.index("--epochs") + 1]))
        out = {"measured_epochs": 4, "wall_s": next(walls[mode]), "user_s": 10.0, "system_s": 2.0 if mode == "system"
               else 0.5, "minor_faults": 9e5 if mode == "system" else 10.0, "max_rss_mb": 800.0}
        return SimpleNamespace(returncode=0, stdout="chatter\n" + json.dumps(out) + "\n", stderr="")

    monkeypatch.setattr("benchmarks.run.subprocess.run", fake_run)
    out = section_malloc(quick=False)
    assert seen == [("system", "5"), ("retain", "5"), ("system", "5"), ("retain", "5")]
    assert out["speedup"] == pytest.approx(28.0 / 22.0) and out["cpu_speedup"] == pytest.approx(12.0 / 10.5)
    res = fake_result()
    md = write_md(res)
    assert "malloc: freed memory kept for reuse (seg.runtime.retain_freed_memory)" in md
    assert "| unet cpu | system | 26.0 | 40.0 | 4.0 | 950,000 | 880 | 25.0 s, 27.0 s |" in md
    assert "Wall time system / retain: **x1.25** (CPU time x1.20)." in md
    ratio = {r["name"]: r for r in ratios(res)}["training loop, glibc's policy / freed memory kept (wall time), unet cpu"]
    assert ratio["value"] == 1.25 and "950,000 vs 2,000" in ratio["note"]
    assert summary_keys(res)["malloc_retain_speedup_unet_cpu"] == 1.25


def test_readme_table_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{README_START}\nold numbers\n{README_END}\nafter\n")
    res = fake_result()
    res["machine"]["commit"] = "0123456789abcdef"
    update_readme(readme, readme_block(res))
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith("\nafter\n") and "old numbers" not in text
    assert "commit 0123456789ab" in text and "| loop / step, unet cpu | 0.800 | >= 0.9 | **missed** |" in text
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no generated performance table"):
        update_readme(readme, readme_block(res))


def test_gpu_benchmark_exits_cleanly_without_cuda(tmp_path, capsys, monkeypatch):
    """No CUDA: status 0, a message saying why, nothing measured or written (not even RESULTS.md)."""
    from benchmarks import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    assert gpu.main(["--out", str(tmp_path / "out"), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "No CUDA device: torch.cuda.is_available() is False" in out and "nothing was measured" in out
    assert not (tmp_path / "out").exists() and results.read_text() == "# results\n"


def test_gpu_peak_table_matches_device_names():
    from benchmarks.gpu import peak_for

    assert peak_for("NVIDIA H100 80GB HBM3") == ("NVIDIA H100 SXM", pytest.approx(
        {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}))
    assert peak_for("NVIDIA H100 PCIe")[0] == "NVIDIA H100 PCIe"
    assert peak_for("NVIDIA H200")[1]["bf16"] == 989.4
    assert peak_for("NVIDIA A100-SXM4-80GB")[1]["bf16"] == 312.0
    assert peak_for("Some Future Card") is None


def test_gpu_report_renders_its_parts():
    from benchmarks.gpu import write_md

    res = {"machine": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.13.0", "cuda": "12.8", "cudnn": 91000,
                       "python": "3.11", "commit": "abcdef1234567890", "date_utc": "2026-11-26 18:00 UTC"},
           "step": {"card": "NVIDIA H100 SXM", "peaks_tflops": {"bf16": 989.4}, "matmul_bf16_tflops": 700.0,
                    "matmul_fp32_tflops": 50.0, "matmul_tf32_tflops": 300.0, "amp_speedup_unet": 2.5,
                    "amp_speedup_unet_contiguous": 1.4, "amp_speedup_unet_vs_fp32_contiguous": 2.3,
                    "best_bf16_mfu": 0.3,
                    "profile": {"model": "unet paper", "dtype": "bfloat16", "batch": 16, "steps": 5, "wall_s": 0.1,
                                "gpu_busy_share": 0.8, "kernel_s": 0.08,
                                "share_by_kind": {"convolution": 0.6, "normalization": 0.25, "elementwise / other": 0.15},
                                "top_ops": [{"op": "aten::convolution_backward", "share": 0.4, "calls": 90}]},
                    "rows": [{"model": "unet paper", "variant": "bf16 AMP", "size": 256, "batch": 16,
                              "img_per_s": 1000.0, "speedup_vs_fp32": 2.4, "achieved_tflops": 288.5,
                              "mfu": 0.2916, "of_matmul": 0.41}]},
           "train": {"dataset": "covid_infection (phantom)", "model": "unet", "profile": "cpu", "epochs": 3,
                     "tolerance": 0.05, "abs_diff": {"dice": 0.01, "iou": 0.012}, "match": True,
                     "runs": {"off": {"best_val": 0.5, "seconds": 20.0, "test": {"dice": 0.6, "iou": 0.45, "hd95": 9.0}},
                              "fp16": {"best_val": 0.51, "seconds": 15.0,
                                       "test": {"dice": 0.61, "iou": 0.462, "hd95": 8.5}}},
                     "abs_diff_layout": {"dice": 0.002}},
           "predict": {"images": 64, "seconds": 8.0, "img_per_s": 8.0, "returncode": 0, "files_written": 129},
           "errors": {}}
    md = write_md(res)
    assert "NVIDIA H100 80GB HBM3, torch 2.13.0, CUDA 12.8" in md and "commit abcdef123456" in md
    assert "| unet paper | bf16 AMP | 256 | 16 | 1000.0 | 2.40 | 288.5 | 29.2% | 41% |" in md
    assert ("fp16 AMP / fp32 on U-Net paper, both channels_last (training's CUDA layout): **2.50x** (contiguous: "
            "1.40x; fp16 channels_last / fp32 contiguous: 2.30x) (goal >= 2: met); best bf16 MFU: **30.0%** "
            "(goal >= 40%: missed)") in md
    assert "ceiling bf16 700, TF32 300, fp32 50 TFLOP/s" in md
    assert ("GPU kernels busy 80% of the wall time; kernel time by operator kind: convolution 60%, normalization 25%, "
            "elementwise / other 15%; top operators: `aten::convolution_backward` 40%.") in md
    assert "fp16 channels_last vs contiguous: |dice| difference 0.0020." in md
    assert "| fp16 | 0.5100 | 0.6100 | 0.4620 | 8.50 | 15 |" in md and "(tolerance 0.05: match)" in md
    assert "64 phantom PNGs in 8.0 s" in md


def test_the_gpu_section_is_replaced_not_appended_and_a_cpu_bench_keeps_it():
    from benchmarks.gpu import gpu_section, with_gpu_section
    from benchmarks.run import results_text

    first, second = "## GPU (benchmarks/gpu.py)\n\nH100, run one\n", "## GPU (benchmarks/gpu.py)\n\nH200, run two\n"
    text = with_gpu_section("# segsweep benchmarks\n\nCPU tables\n", first)
    assert text == "# segsweep benchmarks\n\nCPU tables\n\n" + first
    again = with_gpu_section(text, second)           # make bench-gpu once more: one section, the new one
    assert again.count("## GPU (benchmarks/gpu.py)") == 1 and "run one" not in again and gpu_section(again) == second
    assert gpu_section("# no GPU section\n") is None
    # make bench without CUDA: new CPU tables, the last GPU section kept; with CUDA: bench's own section 8 only
    cpu_run = results_text("# segsweep benchmarks\n\nnew CPU tables\n", again, gpu_measured=False)
    assert cpu_run == ("<!-- generated by `make bench` (python -m benchmarks.run): do not edit -->\n\n"
                       "# segsweep benchmarks\n\nnew CPU tables\n\n" + second)
    assert gpu_section(results_text("# b\n", again, gpu_measured=True)) is None
    assert gpu_section(results_text("# b\n", "", gpu_measured=False)) is None


def test_loop_probe_measures_each_epochs_cpu_time_between_its_marks():
    """Marks at each epoch start (close the previous epoch, open this one) and at fit end: an epoch's CPU time
    runs from its "open" mark to the next "close" mark, the CPU time of the bare-step calls inside it left out."""
    probe = LoopProbe()
    probe.marks = [("close", -0.5, 0.0), ("open", -0.5, 1.0),
                   ("close", 11.0, 10.0), ("open", 11.0, 10.0),          # epoch 1: 9 s, 1 s of it a probe
                   ("close", 19.0, 16.0)]                                 # epoch 2: 6 s
    probe.spans = [("train", 0.0, 8.0, {"seen": 32, "data_wait": 1.0}),
                   _probe(3.0, 4.0, 0.9, cpu=1.6, call_cpu=1.0, images=8), ("eval", 8.0, 10.0, "val"),
                   ("train", 12.0, 18.0, {"seen": 32, "data_wait": 0.5}), ("eval", 20.0, 25.0, "test")]
    first, second = probe.epochs()
    assert first["cpu_s"] == 8.0 and second["cpu_s"] == 6.0
    assert first["bare_cpu"] == pytest.approx(8 / 1.6) and second["bare"] is None and second["bare_cpu"] is None
    assert sum_epochs([first, second])["cpu_s"] == 14.0
    # by CPU time, every epoch validated: 32 images / 8 s against a bare 4 img/s -> 1.0
    assert cycle_efficiency([first, second], 1, 4.0, "cpu_s") == pytest.approx(1.0)
    assert cycle_efficiency([first, second], 2, 4.0, "cpu_s") == pytest.approx(64 / 14 / 4.0)


def test_the_last_epoch_ends_at_its_epoch_end_hooks_not_at_the_test_pass():
    """What fit does once at its end (waiting for the last background checkpoint write) and the reload of
    best.pt before the test pass are per-run costs: the last epoch's wall and CPU time stop at its "end" mark
    (the probe's on_epoch_end, after MLflow logging); earlier epochs still run to the next training start."""
    probe = LoopProbe()
    probe.marks = [("open", -0.5, 1.0), ("end", 10.6, 8.8), ("close", 11.5, 9.0), ("open", 11.5, 9.0),
                   ("end", 19.0, 15.0), ("close", 20.5, 15.9)]             # fit end: 1.5 s of flush + reload
    probe.spans = [("train", 0.0, 8.0, {"seen": 32, "data_wait": 1.0}), ("eval", 8.0, 10.0, "val"),
                   ("log", 10.0, 10.6, None),
                   ("train", 11.5, 18.0, {"seen": 32, "data_wait": 0.5}), _probe(12.0, 12.5, 0.5, call_cpu=0.5),
                   ("log", 18.5, 19.0, None), ("eval", 21.0, 25.0, "test")]
    first, second = probe.epochs()
    assert first["wall_s"] == 11.5 and first["cpu_s"] == 8.0          # to the next training start
    assert second["wall_s"] == 7.0 and second["other_s"] == pytest.approx(0.5)
    assert second["cpu_s"] == pytest.approx(5.5)                        # "open" 9.0 -> "end" 15.0, probe left out
    probe.marks = [m for m in probe.marks if m[0] != "end"]              # without the marks: to the test pass
    assert probe.epochs()[1]["wall_s"] == 9.0


def test_bare_step_trains_its_model_and_reports_wall_and_cpu_seconds():
    from benchmarks.run import BareStep

    torch.manual_seed(0)
    net = nn.Conv2d(1, 1, 3, padding=1)
    before = net.weight.detach().clone()
    step = BareStep(net, 1, 1, 16, 2)
    wall, cpu = step()
    assert step.batch == 2 and step.x.shape == (2, 1, 16, 16) and step.y.shape == (2, 1, 16, 16)
    assert wall > 0 and cpu >= 0 and math.isfinite(wall) and math.isfinite(cpu)
    assert not torch.equal(net.weight, before)                      # one Adam step on the fixed batch
    multi = BareStep(nn.Conv2d(1, 3, 1), 1, 3, 8, 4)               # multiclass: cross-entropy on (B, S, S) labels
    assert multi.y.shape == (4, 8, 8) and multi.y.dtype == torch.int64 and multi()[0] > 0
