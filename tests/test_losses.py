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


# --- weights, per-class and per-image variants against hand-computed values -------------------------
# three pixels of a 3-class image (1, 3, 1, 3): logits per pixel and their labels 1, 2, 0
MC_LOGITS = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 1.0], [2.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
MC_TARGET = torch.tensor([[[1, 2, 0]]])
MC_ROWS = [[1.0, 2.0, 0.5], [0.0, 0.0, 1.0], [2.0, 0.0, 0.0]]


def _softmax(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def _nll(row, t):
    return -math.log(_softmax(row)[t])


def test_weighted_cross_entropy_uses_the_class_weights():
    w = [0.2, 1.0, 3.0]
    nll = [_nll(r, t) for r, t in zip(MC_ROWS, [1, 2, 0])]
    wt = [w[1], w[2], w[0]]
    weighted_sum = sum(a * b for a, b in zip(wt, nll))
    assert CrossEntropyLoss(3, class_weights=w)(MC_LOGITS, MC_TARGET).item() == pytest.approx(weighted_sum / sum(wt), abs=1e-6)
    assert CrossEntropyLoss(3, class_weights=w, reduction="sum")(MC_LOGITS, MC_TARGET).item() == pytest.approx(weighted_sum, abs=1e-6)
    assert CrossEntropyLoss(3)(MC_LOGITS, MC_TARGET).item() == pytest.approx(sum(nll) / 3, abs=1e-6)
    per_pixel = CrossEntropyLoss(3, class_weights=w, reduction="none")(MC_LOGITS, MC_TARGET)
    assert per_pixel.shape == (1, 1, 3)
    assert per_pixel.flatten().tolist() == pytest.approx([a * b for a, b in zip(wt, nll)], abs=1e-6)


def test_binary_class_weight_is_the_positive_weight():
    # pos_weight 3 multiplies the two positive pixels' terms (logit 0 and 0, label 1): -3 log sigmoid(0)
    expected = (3 * math.log(2) + math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1) + 3 * math.log(2)) / 4
    assert CrossEntropyLoss(1, class_weights=[3.0])(LOGITS, TARGET).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match=r"class_weights has 2 values; expected 1 \(\[pos_weight\]\)"):
        CrossEntropyLoss(1, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"class_weights has 2 values; expected 3 \(one per class\)"):
        CrossEntropyLoss(3, class_weights=[1.0, 2.0])


def test_wce_config_of_the_acdc_study_builds_a_loss_with_its_weights():
    from seg.config import build
    from tests.conftest import compose_cfg

    loss = build(compose_cfg(["experiment=acdc_multiclass", "loss=wce"]).loss)
    assert loss.weight.tolist() == pytest.approx([0.1, 1.0, 1.0, 1.0])
    logits, target = torch.zeros(1, 4, 1, 2), torch.tensor([[[0, 3]]])          # uniform softmax: nll = log 4
    assert loss(logits, target).item() == pytest.approx(math.log(4), abs=1e-6)   # weighted mean of equal terms
    assert CrossEntropyLoss(4, class_weights=[0.1, 1.0, 1.0, 1.0], reduction="sum")(logits, target).item() == \
        pytest.approx(1.1 * math.log(4), abs=1e-6)


def test_multiclass_focal_with_alpha_hand_value():
    alpha, gamma = [0.25, 1.0, 2.0], 2.0
    pts = [_softmax(r)[t] for r, t in zip(MC_ROWS, [1, 2, 0])]
    terms = [alpha[t] * -((1 - pt) ** gamma) * math.log(pt) for pt, t in zip(pts, [1, 2, 0])]
    assert FocalLoss(3, gamma=gamma, alpha=alpha)(MC_LOGITS, MC_TARGET).item() == pytest.approx(sum(terms) / 3, abs=1e-6)


def test_binary_focal_alpha_weighs_positives_by_alpha():
    pts = [_sig(0), 1 - _sig(2), 1 - _sig(-1), _sig(0)]
    a_t = [0.25, 0.75, 0.75, 0.25]                      # labels 1, 0, 0, 1
    expected = sum(a * -((1 - pt) ** 2) * math.log(pt) for a, pt in zip(a_t, pts)) / 4
    assert FocalLoss(1, gamma=2.0, alpha=0.25)(LOGITS, TARGET).item() == pytest.approx(expected, abs=1e-6)


def _dice(p, g, smooth=1.0, squared=False):
    inter = sum(a * b for a, b in zip(p, g))
    den = sum(a * a for a in p) + sum(b * b for b in g) if squared else sum(p) + sum(g)
    return 1 - (2 * inter + smooth) / (den + smooth)


def test_multiclass_dice_leaves_background_out_unless_asked():
    probs = [_softmax(r) for r in MC_ROWS]
    g = [[int(t == k) for t in (1, 2, 0)] for k in range(3)]
    per_class = [_dice([p[k] for p in probs], g[k]) for k in range(3)]
    none = DiceLoss(3, reduction="none")(MC_LOGITS, MC_TARGET)
    assert none.tolist() == pytest.approx(per_class[1:], abs=1e-6)
    assert DiceLoss(3)(MC_LOGITS, MC_TARGET).item() == pytest.approx(sum(per_class[1:]) / 2, abs=1e-6)
    assert DiceLoss(3, include_background=True)(MC_LOGITS, MC_TARGET).item() == pytest.approx(sum(per_class) / 3, abs=1e-6)
    assert DiceLoss(3, reduction="sum")(MC_LOGITS, MC_TARGET).item() == pytest.approx(sum(per_class[1:]), abs=1e-6)
    squared = [_dice([p[k] for p in probs], g[k], squared=True) for k in (1, 2)]
    assert DiceLoss(3, squared=True)(MC_LOGITS, MC_TARGET).item() == pytest.approx(sum(squared) / 2, abs=1e-6)


def test_dice_per_image_differs_from_batch_dice():
    # image 1 = LOGITS/TARGET; image 2: all logits -1, all labels 0 (an empty target)
    logits = torch.cat([LOGITS, torch.full((1, 1, 2, 2), -1.0)])
    target = torch.cat([TARGET, torch.zeros(1, 2, 2, dtype=torch.long)])
    p1, g1 = [_sig(0), _sig(2), _sig(-1), _sig(0)], [1, 0, 0, 1]
    p2, g2 = [_sig(-1)] * 4, [0] * 4
    per_image = [_dice(p1, g1), _dice(p2, g2)]
    assert DiceLoss(1, batch_dice=False, reduction="none")(logits, target).flatten().tolist() == pytest.approx(per_image, abs=1e-6)
    assert DiceLoss(1, batch_dice=False)(logits, target).item() == pytest.approx(sum(per_image) / 2, abs=1e-6)
    assert DiceLoss(1)(logits, target).item() == pytest.approx(_dice(p1 + p2, g1 + g2), abs=1e-6)


def test_ignore_index_in_multiclass_and_dice():
    target = MC_TARGET.clone()
    target[0, 0, 2] = 255                               # the third pixel (label 0) is ignored
    nll = [_nll(MC_ROWS[0], 1), _nll(MC_ROWS[1], 2)]
    assert CrossEntropyLoss(3, ignore_index=255)(MC_LOGITS, target).item() == pytest.approx(sum(nll) / 2, abs=1e-6)
    probs = [_softmax(r) for r in MC_ROWS[:2]]
    per_class = [_dice([p[k] for p in probs], [int(t == k) for t in (1, 2)]) for k in (1, 2)]
    assert DiceLoss(3, ignore_index=255)(MC_LOGITS, target).item() == pytest.approx(sum(per_class) / 2, abs=1e-6)
    binary = TARGET.clone()
    binary[0, 0, 1] = 255
    assert FocalLoss(1, gamma=0.0, ignore_index=255)(LOGITS, binary).item() == pytest.approx(
        (math.log(2) + math.log(1 + math.e ** -1) + math.log(2)) / 3, abs=1e-6)


def test_two_classes_is_softmax_cross_entropy_with_two_weights():
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]]).T.reshape(1, 2, 1, 2)       # pixels (0, 1) and (2, -1)
    target = torch.tensor([[[1, 1]]])
    nll = [_nll([0.0, 1.0], 1), _nll([2.0, -1.0], 1)]
    assert CrossEntropyLoss(2)(logits, target).item() == pytest.approx(sum(nll) / 2, abs=1e-6)
    loss = CrossEntropyLoss(2, class_weights=[0.5, 2.0], reduction="sum")
    assert loss(logits, target).item() == pytest.approx(2.0 * sum(nll), abs=1e-6)


def test_binary_cross_entropy_reductions_sum_and_none():
    terms = [math.log(2), math.log(1 + math.e ** 2), math.log(1 + math.e ** -1), math.log(2)]
    assert CrossEntropyLoss(1, reduction="sum")(LOGITS, TARGET).item() == pytest.approx(sum(terms), abs=1e-6)
    none = CrossEntropyLoss(1, reduction="none")(LOGITS, TARGET)
    assert none.shape == (1, 2, 2) and none.flatten().tolist() == pytest.approx(terms, abs=1e-6)


@pytest.mark.parametrize("num_classes,alpha", [(1, 0.0), (1, 1.0), (1, 0.25), (2, [0.5, 0.5]), (3, [1.0, 2.0, 3.0])])
def test_focal_alpha_accepted(num_classes, alpha):
    assert FocalLoss(num_classes, alpha=alpha).alpha.tolist() == pytest.approx(alpha)


@pytest.mark.parametrize("num_classes,alpha,message", [
    (1, 1.5, "binary focal loss expects a float in [0, 1]"),
    (1, -0.1, "binary focal loss expects a float in [0, 1]"),
    (1, [0.5], "binary focal loss expects a float in [0, 1]"),
    (2, 0.5, "multiclass focal loss expects 2 class weights"),
    (3, 0.5, "multiclass focal loss expects 3 class weights"),
    (3, [1.0, 2.0], "multiclass focal loss expects 3 class weights"),
])
def test_focal_alpha_refused_naming_what_is_expected(num_classes, alpha, message):
    with pytest.raises(ValueError) as err:
        FocalLoss(num_classes, alpha=alpha)
    assert message in str(err.value)


def test_weighted_sum_without_weights_is_the_plain_sum():
    ce, dice = CrossEntropyLoss(1), DiceLoss(1)
    total = WeightedSum({"ce": ce, "dice": dice})(LOGITS, TARGET).item()
    assert total == pytest.approx(ce(LOGITS, TARGET).item() + dice(LOGITS, TARGET).item(), abs=1e-6)


# --- the argument and shape checks, each condition alone (mutation testing: `or` -> `and` survived) ------

@pytest.mark.parametrize("cls", [CrossEntropyLoss, FocalLoss, DiceLoss])
@pytest.mark.parametrize("logits_shape,target_shape,message", [
    ((1, 1, 2, 2, 1), (1, 2, 2), "expected logits"),      # only the logits' rank is wrong
    ((1, 1, 2, 2), (1, 2, 2, 1), "expected logits"),      # only the target's rank is wrong
    ((2, 1, 2, 2), (1, 2, 2), "differ in batch"),         # only the batch size differs
    ((1, 1, 2, 2), (1, 2, 3), "differ in batch"),         # only the spatial size differs
])
def test_each_shape_mismatch_alone_is_refused(cls, logits_shape, target_shape, message):
    with pytest.raises(ValueError, match=message):
        cls(1)(torch.zeros(logits_shape), torch.zeros(target_shape, dtype=torch.long))


def test_dice_refuses_zero_smooth_and_background_on_the_binary_task():
    with pytest.raises(ValueError, match="smooth=0"):
        DiceLoss(1, smooth=0.0)
    with pytest.raises(ValueError, match="include_background=True needs num_classes > 1"):
        DiceLoss(1, include_background=True)
    assert DiceLoss(2, include_background=True).include_background      # two classes: allowed


def test_mean_over_a_single_valid_pixel_is_that_pixels_loss():
    """The mean divides by the number of valid pixels (at least 1), so one valid pixel gives its own loss."""
    target = torch.tensor([[[1, 255], [255, 255]]])
    loss = CrossEntropyLoss(1, ignore_index=255)(LOGITS, target).item()
    assert loss == pytest.approx(math.log(2), abs=1e-6)        # the pixel with logit 0, label 1


@pytest.mark.parametrize("cls", [CrossEntropyLoss, FocalLoss, DiceLoss])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_give_a_float32_loss_equal_to_the_float32_one(cls, dtype):
    """Under autocast the logits are fp16 / bf16: the loss is computed in float32 (no underflow in the logs)."""
    logits = LOGITS.to(dtype)
    got = cls(1)(logits, TARGET)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(cls(1)(logits.float(), TARGET).item(), abs=1e-6)


def test_focal_default_gamma_is_2_and_its_reductions_are_sum_and_none():
    pts = [_sig(0), 1 - _sig(2), 1 - _sig(-1), _sig(0)]
    terms = [-((1 - pt) ** 2) * math.log(pt) for pt in pts]
    assert FocalLoss(1)(LOGITS, TARGET).item() == pytest.approx(sum(terms) / 4, abs=1e-6)
    assert FocalLoss(1, reduction="sum")(LOGITS, TARGET).item() == pytest.approx(sum(terms), abs=1e-6)
    none = FocalLoss(1, reduction="none")(LOGITS, TARGET)
    assert none.shape == (1, 2, 2) and none.flatten().tolist() == pytest.approx(terms, abs=1e-6)
