"""seg.engine.inference: several volumes per forward pass give the labels and metric rows of one volume
at a time (the path before batching), on the ACDC phantom's 3D test cases; HD95 on a phantom volume
against MONAI and against all surface distances."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg.engine.inference import batches, evaluate, predict_case
from seg.metrics import hausdorff, structure_rows, surface_distances


@pytest.fixture(scope="module")
def acdc_test_cases(phantom_cache):
    from seg.data import open_dataset
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["dataset=acdc", "profile.image_size=32"])
    data = open_dataset(cfg.dataset, seed=0, cache_dir=str(phantom_cache))
    return [data.test[i] for i in range(6)], data.class_names


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 1)).eval()


def test_volumes_batched_together_score_like_one_volume_at_a_time(acdc_test_cases):
    cases, names = acdc_test_cases
    assert all(c.is_3d for c in cases) and len({c.label.shape for c in cases}) > 1     # volumes of several sizes
    groups = list(batches(cases, 32))
    assert len(groups) < len(cases) and max(len(g) for g in groups) > 1                # several volumes per pass
    net, cpu = _net(), torch.device("cpu")
    rows, kept = evaluate(net, cases, names, cpu, None, 4, distances=True, keep=len(cases), batch_size=32)
    expected = []
    for case in cases:                                                                  # one volume at a time
        pred = predict_case(net, case, cpu, None, 4, batch_size=16)
        expected += structure_rows(case.case_id, pred, case.label, names, case.spacing, True)
    for (case, pred), alone in zip(kept, (predict_case(net, c, cpu, None, 4, batch_size=16) for c in cases)):
        assert pred.shape == case.label.shape and (pred == alone).mean() > 0.9999
    assert len(rows) == len(expected) == 3 * len(cases)
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (got["case_id"], got["structure"], key)


def test_hd95_on_a_phantom_volume_matches_monai_and_all_distances(acdc_test_cases):
    from monai.metrics import compute_hausdorff_distance
    from scipy import ndimage

    cases, _ = acdc_test_cases
    case = max(cases, key=lambda c: int((c.label == 3).sum()))
    gt = case.label == 3                                                   # the LV of the largest volume
    pred = ndimage.binary_dilation(np.roll(gt, 2, axis=2), iterations=2)  # shifted and grown: a model error
    pred[0, :4, :4] = True                                                 # and a false positive in a corner
    spacing = tuple(float(s) for s in case.spacing)
    d = surface_distances(pred, gt, spacing)
    for percentile in (95, None):
        ours = hausdorff(pred, gt, spacing, percentile)
        exact = max(d[0].max(), d[1].max()) if percentile is None else max(np.percentile(d[0], 95),
                                                                          np.percentile(d[1], 95))
        assert ours == exact
        theirs = compute_hausdorff_distance(torch.from_numpy(pred[None, None].astype(np.float32)),
                                            torch.from_numpy(gt[None, None].astype(np.float32)),
                                            include_background=True, percentile=percentile,
                                            spacing=list(spacing)).item()
        assert ours == pytest.approx(theirs, abs=1e-4)


class _Layouts(torch.nn.Module):
    """A small conv net recording, per forward pass, whether its 8 -> 8 3 x 3 kernel was stored channels_last
    (a kernel with one input channel, or a 1 x 1 one, is contiguous in both layouts); raises on demand."""

    def __init__(self, fail: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                       torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
        self.fail, self.seen = fail, []

    def forward(self, x):
        w = self.net[3].weight
        self.seen.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
        if self.fail:
            raise RuntimeError("forward failed")
        return self.net(x)


def test_evaluate_runs_in_the_inference_layout_and_gives_the_weights_back(acdc_test_cases):
    """layout=channels_last (the CPU's validation layout for U-Net / ResU-Net): every forward pass sees
    channels_last weights, the same parameter objects come back contiguous with the same values and the
    training mode, and the scores equal those of the stored layout."""
    cases, names = acdc_test_cases
    cpu = torch.device("cpu")
    net = _Layouts().train()
    params = {name: (p, p.detach().clone()) for name, p in net.named_parameters()}
    plain, _ = evaluate(net, cases, names, cpu, None, 4, distances=True, batch_size=32)
    assert net.seen and not any(net.seen)
    net.seen.clear()
    rows, _ = evaluate(net, cases, names, cpu, None, 4, distances=True, batch_size=32, layout=torch.channels_last)
    assert net.seen and all(net.seen)
    assert net.training
    for name, p in net.named_parameters():
        assert p is params[name][0] and p.is_contiguous() and torch.equal(p, params[name][1]), name
    assert len(rows) == len(plain)
    for got, want in zip(rows, plain):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (got["case_id"], key)


def test_a_failing_forward_pass_restores_layout_and_training_mode(acdc_test_cases):
    cases, names = acdc_test_cases
    net = _Layouts(fail=True).train()
    with pytest.raises(RuntimeError, match="forward failed"):
        evaluate(net, cases, names, torch.device("cpu"), None, 4, layout=torch.channels_last)
    assert net.seen == [True]
    assert net.training and net.net[3].weight.is_contiguous()
