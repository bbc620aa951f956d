"""seg.engine.inference.fold_batchnorm: every inference forward pass runs with each eval-mode BatchNorm2d folded
into the Conv2d before it. The folded network computes what the unfolded one does (the three architectures, a
bias-less conv, a BatchNorm without affine parameters), from the parameters as they are at each evaluation; it
is undone after (training gets its BatchNorms and gradients back), also when a forward pass raises; nested
folds leave the outer one in place; and seg.predict's model stays folded."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg.data.base import Case
from seg.engine.inference import _FOLDED, evaluate, fold_batchnorm, folded_batchnorm, predict_images
from seg.runtime import weights_layout


@pytest.fixture
def bn_calls(monkeypatch):
    """How many times a BatchNorm ran its normalisation (F.batch_norm) since the fixture started."""
    calls = []
    real = F.batch_norm
    monkeypatch.setattr(F, "batch_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _randomise_bn(net: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters far from their initial 0 / 1, so that folding them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
                    m.bias.copy_(torch.randn(m.num_features, generator=g))


def _pairs(net: nn.Module) -> int:
    """(Conv2d, BatchNorm2d) neighbours inside an nn.Sequential plus the pairs modules name in fold_pairs, counted
    from the module tree."""
    n = 0
    for m in net.modules():
        if isinstance(m, nn.Sequential):
            kids = list(m.children())
            n += sum(type(a) is nn.Conv2d and type(b) is nn.BatchNorm2d for a, b in zip(kids, kids[1:]))
        n += len(getattr(m, "fold_pairs", ()))
    return n


def _model(name: str) -> nn.Module:
    from seg.config import build
    from tests.conftest import compose_cfg

    torch.manual_seed(0)
    net = build(compose_cfg([f"model={name}", "profile=cpu", "profile.image_size=32"]).model)
    _randomise_bn(net)
    return net.eval()


@pytest.mark.parametrize("name, pairs", [("unet", 18), ("resunet", 14), ("transunet", 9)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_folded_forward_computes_the_eval_forward(name, pairs, layout, bn_calls):
    """U-Net (every conv-BN-ReLU), ResU-Net (the projection shortcuts and the BN after each unit's first conv,
    named by fold_pairs; the pre-activation BN on each unit's input stays) and
    TransUNet (the decoder; its encoder has GroupNorm): the same logits to float rounding, with the BatchNorms
    that follow a conv no longer normalising, and the folded weights in the layout of the stored ones."""
    net = _model(name)
    assert _pairs(net) == pairs
    total_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.randn(3, 1, 32, 32)
    with weights_layout(net, layout), torch.no_grad():
        want = net(x)
        assert len(bn_calls) == total_bn
        bn_calls.clear()
        with folded_batchnorm(net):
            got = net(x)
            folded = [m for m in net.modules() if m in _FOLDED]
            assert len(folded) == pairs
            assert all(m.forward.keywords["weight"].is_contiguous(memory_format=layout) for m in folded)
        assert len(bn_calls) == total_bn - pairs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_bias_free_conv_and_bn_without_affine_fold_to_the_same_values(bn_calls):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5, affine=False), nn.ReLU(),
                        nn.Conv2d(5, 4, 3, padding=1, groups=1), nn.BatchNorm2d(4))
    _randomise_bn(net, seed=3)
    net.eval()
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        want = net(x)
        with folded_batchnorm(net):
            bn_calls.clear()
            got = net(x)
    assert bn_calls == []
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_what_cannot_fold_is_left_alone(bn_calls):
    """A BatchNorm in training mode (batch statistics), one without running statistics, one after a ReLU, and
    a Conv2d subclass (e.g. TransUNet's weight-standardised conv, whose forward differs) keep their forwards."""
    class Sub(nn.Conv2d):
        pass

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4),
                        Sub(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    net.eval()
    undo = fold_batchnorm(net)
    assert not any(m in _FOLDED for m in net.modules())
    undo()
    train = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)).train()
    undo = fold_batchnorm(train)
    assert train[0] not in _FOLDED
    train(torch.randn(2, 1, 8, 8))
    assert len(bn_calls) == 1 and float(train[1].running_mean.abs().sum()) > 0     # it normalised and updated
    undo()


def test_fold_is_undone_after_prediction_and_training_gets_its_batchnorms_and_gradients_back(bn_calls):
    net = _model("unet").train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    predict_images(net, x, (32, 32), torch.device("cpu"), None, 1)
    assert bn_calls == []                                               # every BN of the U-Net was folded
    assert net.training and not any(m in _FOLDED for m in net.modules())
    assert not any("forward" in vars(m) for m in net.modules())          # the class forwards are back
    after = net.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    net(torch.from_numpy(x)).mean().backward()
    assert len(bn_calls) == 18                                          # training normalises again
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_each_evaluation_folds_the_parameters_it_is_given(bn_calls):
    """A training step changes the weights in place between two evaluations: the second prediction is the
    unfolded network's with the new weights, not the first fold's."""
    net = nn.Sequential(_model("unet"), nn.Conv2d(1, 3, 1)).eval()    # 3 classes from the U-Net's 1 logit
    x = np.random.default_rng(1).standard_normal((6, 1, 32, 32)).astype(np.float32)
    cpu = torch.device("cpu")

    def unfolded():          # argmax of the plain eval forward, as predict_images labels it
        with torch.no_grad():
            return net(torch.from_numpy(x)).argmax(1).to(torch.uint8).numpy()

    before = predict_images(net, x, (32, 32), cpu, None, 3)
    assert (before == unfolded()).mean() > 0.999
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(-1.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(0.7)
    after = predict_images(net, x, (32, 32), cpu, None, 3)
    assert (after == unfolded()).mean() > 0.999
    assert (after != before).mean() > 0.05                              # the change did move the labels


def test_nested_folds_leave_the_outer_one_in_place(bn_calls):
    net = _model("unet")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad(), folded_batchnorm(net):
        with folded_batchnorm(net):
            net(x)
        net(x)
        assert bn_calls == []
    net(x)
    assert len(bn_calls) == 18


def test_a_raising_forward_pass_undoes_the_fold():
    rng = np.random.default_rng(3)
    case = Case("v", rng.standard_normal((3, 1, 32, 32)).astype(np.float32),
                rng.integers(0, 2, (3, 40, 40)).astype(np.uint8), (5.0, 1.0, 1.0), is_3d=True)

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.folded = _model("unet"), []

        def forward(self, x):
            self.folded.append(sum(m in _FOLDED for m in self.body.modules()))
            raise RuntimeError("forward failed")

    net = Boom().train()
    with pytest.raises(RuntimeError, match="forward failed"):
        evaluate(net, [case], ["fg"], torch.device("cpu"), None, 1, layout=torch.channels_last)
    assert net.folded == [18]                                           # folded while it ran
    assert net.training and not any(m in _FOLDED or "forward" in vars(m) for m in net.modules())


def test_seg_predict_models_stay_folded(tmp_path, bn_calls):
    """model_from_checkpoint folds for good: its network only predicts, so no forward pays for the fold."""
    from omegaconf import OmegaConf

    from seg.engine.checkpoint import best_payload
    from seg.predict import model_from_checkpoint
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["dataset=covid_infection", "model=unet", "profile=cpu", "profile.image_size=32"])
    net = _model("unet")
    payload = best_payload(net, OmegaConf.to_container(cfg, resolve=True), 0, "val/dice", 0.0)
    model = model_from_checkpoint(payload, "test", torch.device("cpu"))
    assert sum(m in _FOLDED for m in model.net.modules()) == 18
    x = np.random.default_rng(2).standard_normal((2, 1, 32, 32)).astype(np.float32)
    predict_images(model.net, x, (32, 32), torch.device("cpu"), None, 1)
    assert bn_calls == [] and sum(m in _FOLDED for m in model.net.modules()) == 18
