import json
import math

import pytest
import torch

from parsenet.metrics import ConfusionMatrix, SegmentationMetrics, metrics_table

# Worked on paper. 4 classes; class 3 is predicted only on void pixels, so it is
# absent from both ground truth and predictions once void is dropped.
TARGET = torch.tensor([[0, 0, 0, 1, 1], [2, 2, 2, 255, 255]])
PRED = torch.tensor([[0, 0, 1, 1, 2], [2, 2, 0, 3, 0]])
# n[i, j] (gt i, predicted j):  row 0: 2 1 0 0 | row 1: 0 1 1 0 | row 2: 1 0 2 0 | row 3: 0 0 0 0
# t = (3, 2, 3, 0), p = (3, 2, 3, 0), diagonal = (2, 1, 2, 0), 8 pixels.
MATRIX = [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]


def test_hand_checked_confusion_and_metrics():
    cm = ConfusionMatrix(4)
    cm.update(PRED[None], TARGET[None])
    assert cm.matrix.tolist() == MATRIX
    m = cm.compute()
    assert m.pixels == 8
    assert m.pixel_acc == pytest.approx(5 / 8)
    assert m.per_class_acc[:3] == pytest.approx((2 / 3, 1 / 2, 2 / 3))
    # IoU: class 0: 2 / (3 + 3 - 2); class 1: 1 / (2 + 2 - 1); class 2: 2 / (3 + 3 - 2).
    assert m.per_class_iou[:3] == pytest.approx((1 / 2, 1 / 3, 1 / 2))
    assert math.isnan(m.per_class_iou[3]) and math.isnan(m.per_class_acc[3])
    assert m.mean_acc == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)  # 11/18: class 3 left out
    assert m.mean_iou == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)  # 4/9: class 3 left out
    assert m.fw_iou == pytest.approx((3 * 1 / 2 + 2 * 1 / 3 + 3 * 1 / 2) / 8)  # 11/24


def test_class_predicted_but_absent_from_ground_truth_counts_as_zero_iou():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    m = cm.compute()
    # Class 2: no ground truth, one false positive: acc 0/0 (NaN), IoU 0/1 = 0. Class 1: absent everywhere.
    assert m.per_class_iou[0] == pytest.approx(0.5) and m.per_class_iou[2] == 0.0
    assert math.isnan(m.per_class_iou[1])
    assert m.mean_iou == pytest.approx(0.25)
    assert m.mean_acc == pytest.approx(0.5)
    assert math.isnan(m.per_class_acc[2])


def test_scores_are_argmaxed():
    scores = torch.nn.functional.one_hot(PRED.clamp(max=3), 4).permute(0, 2, 1).float()  # (2, 4, 5)
    cm = ConfusionMatrix(4)
    cm.update(scores, TARGET)
    assert cm.matrix.tolist() == MATRIX


def test_invariant_to_batching_and_order():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (6, 7, 9), generator=g)
    target[target == 4] = 255
    pred = torch.randint(0, 4, (6, 7, 9), generator=g)
    whole = ConfusionMatrix(4)
    whole.update(pred, target)
    pieces = ConfusionMatrix(4)
    for i in (5, 2, 0, 3, 1, 4):
        pieces.update(pred[i : i + 1], target[i : i + 1])
    assert torch.equal(whole.matrix, pieces.matrix)
    assert whole.matrix.sum() == (target != 255).sum()


def test_reset_and_empty():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[1]]), torch.tensor([[1]]))
    cm.reset()
    m = cm.compute()
    assert m.pixels == 0 and math.isnan(m.pixel_acc) and math.isnan(m.mean_iou)


def test_all_reduce_is_a_no_op_outside_distributed():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    cm.all_reduce()
    assert cm.matrix.tolist() == MATRIX


def test_custom_ignore_index():
    cm = ConfusionMatrix(2, ignore_index=11)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 11, 1]))
    assert cm.matrix.tolist() == [[1, 0], [0, 1]]


def test_to_dict_is_strict_json_and_round_trips():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    m = cm.compute()
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert d["per_class_iou"][3] is None
    back = SegmentationMetrics.from_dict(d)
    assert back.mean_iou == m.mean_iou and math.isnan(back.per_class_iou[3])


def test_metrics_table_shows_both_columns_in_percent():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    m = cm.compute()
    table = metrics_table({"FCN": m, "ParseNet": m}, ["a", "b", "c", "d"])
    assert "FCN" in table and "ParseNet" in table
    assert "62.5" in table  # pixel accuracy 5/8
    assert "44.4" in table  # mean IoU 4/9
    assert "n/a" in table.splitlines()[-1]  # class d: undefined


def test_rejects_zero_classes():
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        ConfusionMatrix(0)


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"prediction shape \(1, 3\) differs from target shape \(1, 2\)"):
        ConfusionMatrix(3).update(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


def test_rejects_scores_with_wrong_class_count():
    with pytest.raises(ValueError, match=r"scores of shape \(1, 2, 4, 4\).*expected \(B, 3, H, W\)"):
        ConfusionMatrix(3).update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_rejects_target_outside_classes():
    with pytest.raises(ValueError, match="target label 7 is outside the 3 classes .* ignore label 255"):
        ConfusionMatrix(3).update(torch.tensor([0, 1]), torch.tensor([0, 7]))


def test_rejects_prediction_outside_classes():
    with pytest.raises(ValueError, match="predicted label 3 is outside the 3 classes"):
        ConfusionMatrix(3).update(torch.tensor([0, 3]), torch.tensor([0, 1]))


def test_metrics_table_rejects_wrong_class_names():
    m = ConfusionMatrix(2).compute()
    with pytest.raises(ValueError, match="column 'x' has 2 classes but 1 class names"):
        metrics_table({"x": m}, ["a"])
