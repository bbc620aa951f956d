"""Losses against hand-computed values, identities and edge cases (seg/losses.py)."""
import math

import pytest
import torch

from seg.losses import CrossEntropyLoss, DiceLoss, FocalLoss, WeightedSum

# one 2x2 binary image: logits and target
LOGITS = torch.tensor([[[[0.0, 2.0], [-1.0, 0.0]]]])       # (1, 1, 2, 2)
TARGET = torch.tensor([[[1, 0], [0, 1]]])                   # (1, 2, 2)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_bce_hand_value():
    expected = (math.log(2) + math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1) + math.log(2)) / 4
    assert CrossEntropyLoss(1)(LOGITS, TARGET).item() == pytest.approx(expected, abs=1e-6)


def test_dice_hand_value_binary():
    p = [_sig(0), _sig(2), _sig(-1), _sig(0)]
    g = [1, 0, 0, 1]
    inter = sum(a * b for a, b in zip(p, g))
    expected = 1 - (2 * inter + 1) / (sum(p) + sum(g) + 1)
    assert DiceLoss(1, smooth=1.0)(LOGITS, TARGET).item() == pytest.approx(expected, abs=1e-6)


def test_focal_hand_value_binary():
    pts = [_sig(0), 1 - _sig(2), 1 - _sig(-1), _sig(0)]
    expected = sum(-((1 - pt) ** 2) * math.log(pt) for pt in pts) / 4
    assert FocalLoss(1, gamma=2.0)(LOGITS, TARGET).item() == pytest.approx(expected, abs=1e-6)


def test_multiclass_ce_hand_value():
    logits = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    target = torch.tensor([[[1]]])
    expected = -math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
    assert CrossEntropyLoss(3)(logits, target).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_focal_gamma0_equals_ce(num_classes):
    torch.manual_seed(0)
    logits = torch.randn(2, num_classes, 8, 8)
    target = torch.randint(0, max(num_classes, 2), (2, 8, 8))
    assert FocalLoss(num_classes, gamma=0.0)(logits, target).item() == pytest.approx(
        CrossEntropyLoss(num_classes)(logits, target).item(), abs=1e-6)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_dice_of_perfect_prediction_is_about_zero(num_classes):
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 4:12, 4:12] = 1
    if num_classes > 1:
        target[:, 6:10, 6:10] = 3
        target[0, 0:3, 0:3] = 2
    onehot = torch.nn.functional.one_hot(target, max(num_classes, 2)).permute(0, 3, 1, 2).float()
    logits = (onehot[:, 1:2] if num_classes == 1 else onehot) * 40 - 20
    assert DiceLoss(num_classes, smooth=1e-5)(logits, target).item() < 1e-4


def test_dice_on_empty_target_is_defined():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    empty_pred = torch.full((2, 1, 8, 8), -30.0)
    full_pred = torch.full((2, 1, 8, 8), 30.0)
    loss_fn = DiceLoss(1, smooth=1.0)
    assert loss_fn(empty_pred, target).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(full_pred, target).item() == pytest.approx(1 - 1 / (128 + 1), abs=1e-6)
    assert not math.isnan(DiceLoss(4)(torch.randn(2, 4, 8, 8), target).item())


def test_ignore_index_excludes_pixels():
    target = TARGET.clone()
    target[0, 0, 1] = 255                                  # ignore the (0, 1) pixel (logit 2, label 0)
    expected = (math.log(2) + math.log(1 + math.e ** -1) + math.log(2)) / 3
    assert CrossEntropyLoss(1, ignore_index=255)(LOGITS, target).item() == pytest.approx(expected, abs=1e-6)


def test_gradcheck_dice_and_focal():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 4, 4))
    for loss_fn in (DiceLoss(3, include_background=True), FocalLoss(3, gamma=2.0), DiceLoss(1), FocalLoss(1, alpha=0.25)):
        t = target.clamp(max=1) if loss_fn.num_classes == 1 else target
        logits = torch.randn(2, loss_fn.num_classes, 4, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: loss_fn(x, t), (logits,), eps=1e-6, atol=1e-5)


def test_weighted_sum():
    ce, dice = CrossEntropyLoss(1), DiceLoss(1)
    total = WeightedSum({"ce": ce, "dice": dice}, {"ce": 0.5, "dice": 2.0})(LOGITS, TARGET)
    assert total.item() == pytest.approx(0.5 * ce(LOGITS, TARGET).item() + 2 * dice(LOGITS, TARGET).item(), abs=1e-6)
    with pytest.raises(ValueError, match="weights keys"):
        WeightedSum({"ce": ce}, {"dice": 1.0})


@pytest.mark.parametrize("cls", [CrossEntropyLoss, FocalLoss, DiceLoss])
def test_bad_arguments_name_the_option(cls):
    with pytest.raises(ValueError, match="reduction"):
        cls(1, reduction="avg")
    with pytest.raises(ValueError, match="num_classes"):
        cls(0)
    with pytest.raises(ValueError, match="channels"):
        cls(4)(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
