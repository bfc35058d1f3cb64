import json
import random

import numpy as np
import pytest
import torch

from rnnkit.erc.metrics import compute_metrics

LABELS = ["neutral", "joy", "anger", "sadness"]


def counts(y_true, y_pred, c):
    tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
    fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
    fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
    return tp, fp, fn


def f1_from(tp, fp, fn):
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)


def random_example(n, k, seed):
    rng = random.Random(seed)
    y_true = [rng.randrange(k) for _ in range(n)]
    # Mostly right, so that every metric is away from 0.
    y_pred = [t if rng.random() < 0.6 else rng.randrange(k) for t in y_true]
    return y_true, y_pred


def test_two_class_example_worked_by_hand():
    # a: predicted once, right once, 2 true -> P 1, R 1/2, F1 2/3
    # b: predicted 3 times, right twice, 2 true -> P 2/3, R 1, F1 4/5
    metrics = compute_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"], neutral="a")
    assert metrics["accuracy"] == pytest.approx(75.0)
    assert metrics["weighted_f1"] == pytest.approx(100 * (2 * (2 / 3) + 2 * (4 / 5)) / 4)
    # Without "a" only class b counts: micro F1 equals its F1.
    assert metrics["micro_f1_no_neutral"] == pytest.approx(80.0)
    assert metrics["report"]["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1-score": 2 / 3, "support": 2})
    assert metrics["confusion"] == [[1, 1], [0, 2]]


@pytest.mark.parametrize("seed", range(4))
def test_matches_counting(seed):
    y_true, y_pred = random_example(60, len(LABELS), seed)
    metrics = compute_metrics(y_true, y_pred, LABELS, neutral="neutral")
    n = len(y_true)

    per_class = {name: f1_from(*counts(y_true, y_pred, c)) for c, name in enumerate(LABELS)}
    support = {name: y_true.count(c) for c, name in enumerate(LABELS)}
    weighted = sum(per_class[name][2] * support[name] for name in LABELS) / n
    assert metrics["weighted_f1"] == pytest.approx(100 * weighted)
    assert metrics["accuracy"] == pytest.approx(100 * sum(t == p for t, p in zip(y_true, y_pred)) / n)

    # Micro F1 without neutral: pool the counts of every other class, then one F1.
    pooled = [sum(values) for values in zip(*(counts(y_true, y_pred, c) for c in range(1, len(LABELS))))]
    assert metrics["micro_f1_no_neutral"] == pytest.approx(100 * f1_from(*pooled)[2])

    for name in LABELS:
        precision, recall, f1 = per_class[name]
        row = metrics["report"][name]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1-score"] == pytest.approx(f1)
        assert row["support"] == support[name]

    expected = [[0] * len(LABELS) for _ in LABELS]
    for t, p in zip(y_true, y_pred):
        expected[t][p] += 1
    assert metrics["confusion"] == expected


def test_micro_f1_no_neutral_punishes_predicting_neutral():
    y_true = [0] * 8 + [1, 2]
    metrics = compute_metrics(y_true, [0] * 10, LABELS, neutral="neutral")
    assert metrics["accuracy"] == pytest.approx(80.0)
    assert metrics["micro_f1_no_neutral"] == 0.0


def test_neutral_can_be_any_label():
    y_true, y_pred = random_example(40, 3, seed=9)
    metrics = compute_metrics(y_true, y_pred, ["happy", "sad", "none"], neutral="none")
    pooled = [sum(values) for values in zip(*(counts(y_true, y_pred, c) for c in (0, 1)))]
    assert metrics["micro_f1_no_neutral"] == pytest.approx(100 * f1_from(*pooled)[2])


def test_absent_classes_score_zero_without_errors():
    # "sadness" (3) never occurs; "anger" (2) is predicted but never true.
    metrics = compute_metrics([0, 1, 1, 0], [0, 1, 2, 0], LABELS)
    assert metrics["report"]["sadness"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    assert metrics["report"]["anger"]["precision"] == 0.0
    assert [row[3] for row in metrics["confusion"]] == [0, 0, 0, 0] and metrics["confusion"][3] == [0, 0, 0, 0]
    assert len(metrics["confusion"]) == 4


def test_perfect_predictions():
    y = [0, 1, 2, 3, 3]
    metrics = compute_metrics(y, y, LABELS, neutral="neutral")
    assert metrics["weighted_f1"] == metrics["accuracy"] == metrics["micro_f1_no_neutral"] == pytest.approx(100.0)


def test_no_neutral_key_without_neutral():
    assert "micro_f1_no_neutral" not in compute_metrics([0, 1], [0, 1], ["a", "b"])


def test_accepts_tensors_and_arrays_and_is_json_serialisable():
    y_true, y_pred = random_example(30, 4, seed=2)
    from_lists = compute_metrics(y_true, y_pred, LABELS, neutral="neutral")
    from_tensors = compute_metrics(torch.tensor(y_true), torch.tensor(y_pred), tuple(LABELS), neutral="neutral")
    from_arrays = compute_metrics(np.array(y_true, dtype=np.int32), np.array(y_pred), LABELS, neutral="neutral")
    assert from_tensors == from_lists == from_arrays
    assert json.loads(json.dumps(from_lists)) == from_lists


@pytest.mark.parametrize(
    "y_true, y_pred, labels, neutral, message",
    [
        ([0], [0, 1], ["a", "b"], None, "y_true has 1 entries but y_pred has 2"),
        ([], [], ["a", "b"], None, "y_true and y_pred are empty; there is nothing to score"),
        ([0, 2], [0, 1], ["a", "b"], None, r"y_true holds 2, which is not a label index in \[0, 2\)"),
        ([0, 1], [-1, 1], ["a", "b"], None, r"y_pred holds -1, which is not a label index in \[0, 2\)"),
        ([0.0, 1.0], [0, 1], ["a", "b"], None, "y_true must hold integer label indices, got dtype float64"),
        ([[0, 1]], [0, 1], ["a", "b"], None, r"y_true must be 1-D, got shape \(1, 2\)"),
        ([0], [0], [], None, r"labels must be a non-empty list of class names, got \[\]"),
        ([0], [0], ["a", "a"], None, r"labels must be unique, got \['a', 'a'\]"),
        ([0], [0], ["a", "b"], "neutral", r"neutral must be one of the labels \['a', 'b'\], got 'neutral'"),
    ],
)
def test_errors(y_true, y_pred, labels, neutral, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        compute_metrics(y_true, y_pred, labels, neutral=neutral)
