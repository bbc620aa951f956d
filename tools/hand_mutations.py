"""The hand-made mutations of issue 20, each applied to a scratch copy and run against its fast test.

    python tools/hand_mutations.py           # every change; exit 1 if any survives its test
    python tools/hand_mutations.py --list    # the table only

Each entry is a one-line change of a line the reported numbers rest on (the review's table, plus the
ones found since) and the fast test that must fail on it. The change is applied to a copy of the
project under outputs/mutate/hand/ (the working tree is never touched); an entry whose text is no
longer in its file is reported as stale, which also fails, so the table cannot silently go out of date.
Part of `make mutate`; the table is in docs/mutation.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "outputs" / "mutate" / "hand"
COPY = ["seg", "tests", "conf", "experiments", "benchmarks", "pytest.ini", "run.py"]

# (what the change does, file, original text, mutated text, the test that must fail)
CHANGES = [
    ("best.pt saved every epoch", "seg/engine/hooks.py", "        if improved:\n", "        if True:\n",
     "tests/engine/test_loop.py::test_best_pt_holds_the_peak_epoch_not_the_last"),
    ("every validated epoch 'improved'", "seg/engine/loop.py",
     "improved = score > self.best or self.best_epoch < 0", "improved = True",
     "tests/engine/test_loop.py::test_best_pt_holds_the_peak_epoch_not_the_last"),
    ("best weights not reloaded before the test pass", "seg/train.py",
     '    model.load_state_dict(best["state_dict"])\n', "    pass\n",
     "tests/test_train.py::test_the_test_pass_scores_the_best_epochs_weights_not_the_last"),
    ("mask Resize with INTER_LINEAR", "seg/data/transforms.py",
     "mask_interpolation=cv2.INTER_NEAREST_EXACT)", "mask_interpolation=cv2.INTER_LINEAR)",
     "tests/data/test_readers.py::test_mask_upscale_50_to_96_is_pixel_centre_nearest_without_new_classes"),
    ("mask Resize with INTER_NEAREST (half-pixel shift)", "seg/data/transforms.py",
     "mask_interpolation=cv2.INTER_NEAREST_EXACT)", "mask_interpolation=cv2.INTER_NEAREST)",
     "tests/data/test_readers.py::test_mask_upscale_50_to_96_is_pixel_centre_nearest_without_new_classes"),
    ("mask Affine with INTER_LINEAR", "seg/data/transforms.py",
     "interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,",
     "interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_LINEAR,",
     "tests/data/test_readers.py::test_every_mask_step_interpolates_nearest"),
    ("mask Elastic with INTER_LINEAR", "seg/data/transforms.py",
     "                                            mask_interpolation=cv2.INTER_NEAREST,",
     "                                            mask_interpolation=cv2.INTER_LINEAR,",
     "tests/data/test_readers.py::test_every_mask_step_interpolates_nearest"),
    ("fpr_empty counting the inverted condition (report)", "seg/report/stats.py",
     '(~d["pred_empty"]).astype(float)', '(d["pred_empty"]).astype(float)',
     "tests/report/test_report_output.py::test_summary_csv_holds_the_contract_columns_with_hand_computed_values"),
    ("fpr_empty counting the inverted condition (metrics)", "seg/metrics.py",
     'fp = sum(not r["pred_empty"] for r in empty_rows)', 'fp = sum(r["pred_empty"] for r in empty_rows)',
     "tests/test_metrics.py::test_summarize_headline_is_the_mean_of_structure_means_not_the_pooled_mean"),
    ("headline = pooled mean over case x structure", "seg/metrics.py",
     "out[metric] = float(np.mean(means)) if means else math.nan",
     "out[metric] = float(np.nanmean([r[metric] for r in rows if metric in r])) if means else math.nan",
     "tests/test_metrics.py::test_summarize_headline_is_the_mean_of_structure_means_not_the_pooled_mean"),
    ("scheduler excluded from config_hash", "seg/sweep.py",
     "keep = {k: v for k, v in resolved.items() if k not in HASH_EXCLUDED}",
     'keep = {k: v for k, v in resolved.items() if k not in HASH_EXCLUDED + ("scheduler",)}',
     "tests/test_sweeps.py::test_config_hash_changes_with_the_scheduler"),
    ("path replacement dropped from config_hash", "seg/sweep.py",
     '        text = text.replace(path, f"<path{i}>")\n', "        pass\n",
     "tests/test_sweeps.py::test_config_hash_survives_a_moved_project_or_cache_but_not_another_dataset"),
    ("resume=false ignored", "seg/train.py",
     "previous_runs(cfg.tracking.uri, cfg.tracking.experiment, chash) if cfg.resume else (None, None)",
     "previous_runs(cfg.tracking.uri, cfg.tracking.experiment, chash)",
     "tests/test_sweeps.py::test_resume_false_trains_a_finished_configuration_again_in_process"),
    ("ACDC reader's label-range guard removed", "seg/data/datasets/acdc.py",
     "    if bad.size:\n        raise ValueError(f\"{path}: label values", "    if False:\n        raise ValueError(f\"{path}: label values",
     "tests/data/test_validation.py::test_a_bad_test_file_fails_when_the_dataset_is_built_naming_it"),
    ("report's run filter without the status check", "seg/report/runs.py",
     'return self.status == "FINISHED" and _finite(self.metrics.get("test/dice"))',
     'return _finite(self.metrics.get("test/dice"))',
     "tests/report/test_report_included.py::test_a_run_not_finished_is_not_averaged_even_with_test_dice"),
    ("weighted cross-entropy ignoring class_weights (multiclass)", "seg/losses.py",
     "weight=self.weight, reduction=self.reduction,", "weight=None, reduction=self.reduction,",
     "tests/test_losses.py::test_weighted_cross_entropy_uses_the_class_weights"),
    ("weighted cross-entropy ignoring class_weights (binary pos_weight)", "seg/losses.py",
     "pos_weight=self.weight) * valid", "pos_weight=None) * valid",
     "tests/test_losses.py::test_binary_class_weight_is_the_positive_weight"),
    ("folded BatchNorm without its gamma", "seg/engine/inference.py",
     "                scale = scale * bn.weight\n", "                pass\n",
     "tests/engine/test_fold.py::test_folded_forward_computes_the_eval_forward"),
    ("folded BatchNorm without its beta", "seg/engine/inference.py",
     "                bias = bias + bn.bias\n", "                pass\n",
     "tests/engine/test_fold.py::test_folded_forward_computes_the_eval_forward"),
    ("BatchNorm in training mode folded", "seg/engine/inference.py",
     "                    or bn.training or bn.running_mean", "                    or bn.running_mean",
     "tests/engine/test_fold.py::test_what_cannot_fold_is_left_alone"),
    ("fold never undone", "seg/engine/inference.py",
     "            del conv.forward, bn.forward", "            pass",
     "tests/engine/test_fold.py::test_fold_is_undone_after_prediction_and_training_gets_its_batchnorms_and_gradients_back"),
    ("a nested fold folding again (and undoing the outer one)", "seg/engine/inference.py",
     "type(bn) is not nn.BatchNorm2d or conv in _FOLDED", "type(bn) is not nn.BatchNorm2d",
     "tests/engine/test_fold.py::test_nested_folds_leave_the_outer_one_in_place"),
    ("prediction without the fold", "seg/engine/inference.py",
     "with _eval_mode(net), torch.inference_mode(), folded_batchnorm(net):",
     "with _eval_mode(net), torch.inference_mode():",
     "tests/engine/test_fold.py::test_fold_is_undone_after_prediction_and_training_gets_its_batchnorms_and_gradients_back"),
]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(WORK)}


def run_one(change: tuple, python: str) -> tuple[str, str]:
    """-> (status, detail): killed / SURVIVED / STALE (the original text is no longer in the file)."""
    what, rel, old, new, test = change
    src = (ROOT / rel).read_text()
    if src.count(old) != 1:
        return "STALE", f"{rel}: the original text occurs {src.count(old)} times (expected once)"
    (WORK / rel).write_text(src.replace(old, new))
    try:
        proc = subprocess.run([python, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                               test], cwd=WORK, capture_output=True, text=True, env=_env())
    finally:
        (WORK / rel).write_text(src)
    if proc.returncode == 1:
        return "killed", proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 0:
        return "SURVIVED", proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return "ERROR", f"pytest exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-300:]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    args = parser.parse_args(argv)
    if args.list:
        for what, rel, _, _, test in CHANGES:
            print(f"{what} ({rel}) -> {test}")
        return 0
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    for item in COPY:
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy2)(ROOT / item, WORK / item)
    where = subprocess.run([sys.executable, "-c", "import seg; print(seg.__file__)"], cwd=WORK, env=_env(),
                           capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(WORK)):
        raise SystemExit(f"the scratch copy's tests would import seg from {where}, not from {WORK}")
    tests = sorted({c[4] for c in CHANGES})
    control = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests],
                             cwd=WORK, env=_env(), capture_output=True, text=True)
    if control.returncode != 0:                  # a test that fails anyway proves nothing about a change
        print(control.stdout[-2000:])
        raise SystemExit("the tests fail on the unchanged code: fix them first")
    print(f"control: the {len(tests)} tests pass on the unchanged code ({control.stdout.strip().splitlines()[-1]})",
          flush=True)
    lines = ["| change | file | test that must fail | result |", "|---|---|---|---|"]
    failed = 0
    for change in CHANGES:
        start = time.perf_counter()
        status, detail = run_one(change, sys.executable)
        failed += status != "killed"
        print(f"{status:8s} {change[0]}  ({time.perf_counter() - start:.0f} s; {detail})", flush=True)
        lines.append(f"| {change[0]} | {change[1]} | {change[4]} | {status} |")
    (WORK.parent / "hand.md").write_text("\n".join(lines) + "\n")
    print(f"{len(CHANGES) - failed} of {len(CHANGES)} hand-made changes fail their test; table: {WORK.parent / 'hand.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
