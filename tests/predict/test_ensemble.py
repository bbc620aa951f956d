"""seg.predict.ensemble: the fold ensemble is the mean of the members' probabilities, given as logits that the
one inference path (seg.engine.inference) thresholds / argmaxes like a single model's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg.engine.inference import predict_images
from seg.predict.ensemble import FoldEnsemble, ensemble_model, members_key
from seg.predict.model import Model, ModelError


class Fixed(torch.nn.Module):
    """x (B, 1, S, S) -> the given logits (K, S, S) for every image."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.register_buffer("z", torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.z.expand(x.shape[0], *self.z.shape)


def test_binary_ensemble_logits_are_the_logit_of_the_mean_sigmoid():
    z1, z2 = np.array([[[2.0, -1.0], [0.5, -3.0]]]), np.array([[[-1.0, 0.5], [0.5, 4.0]]])
    out = FoldEnsemble([Fixed(z1), Fixed(z2)], 1)(torch.zeros(3, 1, 2, 2))
    mean = (1 / (1 + np.exp(-z1)) + 1 / (1 + np.exp(-z2))) / 2
    assert out.shape == (3, 1, 2, 2)
    assert torch.sigmoid(out[0]).numpy() == pytest.approx(mean, abs=1e-6)
    # pixel (0, 0): p = (0.881 + 0.269) / 2 = 0.575 > 0.5 -> foreground, though one member says background
    assert (out[0, 0] > 0).tolist() == [[True, False], [True, True]]


def test_multiclass_ensemble_is_the_mean_softmax_and_its_argmax():
    z1 = np.array([[[3.0]], [[0.0]], [[0.0]]])          # member 1: class 0 (p = 0.91)
    z2 = np.array([[[0.0]], [[2.0]], [[2.1]]])          # member 2: class 2 (p = 0.49), class 1 (0.45)
    out = FoldEnsemble([Fixed(z1), Fixed(z2)], 3)(torch.zeros(1, 1, 1, 1))
    p = lambda z: np.exp(z) / np.exp(z).sum(0)
    mean = (p(z1) + p(z2)) / 2
    assert torch.softmax(out[0], 0).numpy() == pytest.approx(mean, abs=1e-6)
    assert out[0].argmax(0).item() == mean.argmax(0).item() == 0      # mean p: 0.485, 0.246, 0.269


def test_a_one_member_ensemble_predicts_what_the_member_predicts():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 4, 3, padding=1)
    x = np.random.default_rng(0).standard_normal((5, 1, 16, 16)).astype(np.float32)
    alone = predict_images(net, x, (23, 19), torch.device("cpu"), None, 4)
    assert (predict_images(FoldEnsemble([net], 4), x, (23, 19), torch.device("cpu"), None, 4) == alone).all()


def _model(num_classes=1, size=32, name="acdc") -> Model:
    config = {"dataset": {"name": name, "source": {"transforms": None}}}
    return Model(torch.nn.Identity(), config, num_classes, size, ["x"], None, f"run {num_classes}{size}{name}", None)


def test_models_that_cannot_share_one_preprocessing_are_refused():
    with pytest.raises(ModelError, match="must share their input size"):
        ensemble_model([_model(size=32), _model(size=64)])
    with pytest.raises(ModelError, match="must share their number of classes"):
        ensemble_model([_model(1), _model(4)])
    one = _model()
    assert ensemble_model([one]) is one
    both = ensemble_model([_model(), _model()])
    assert isinstance(both.net, FoldEnsemble) and both.source.startswith("ensemble of 2 models")


def test_the_cache_key_names_the_members_in_any_order():
    assert members_key(["b", "a"]) == members_key(["a", "b"]) != members_key(["a", "c"])
