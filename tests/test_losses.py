"""Tests for rnnkit.erc.losses: the ERC loss against torch's cross-entropy, the contrastive loss against the
loss written out pair by pair."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.erc.data import Dialogue, Utterance
from rnnkit.erc.losses import class_weights, erc_loss, supervised_contrastive


def _by_pairs(features, labels, temperature):
    """Khosla et al. (2020), eq. 2, one anchor and one positive at a time."""
    z = torch.nn.functional.normalize(features, dim=-1)
    terms = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in others)
        terms.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / temperature) / denominator)
                          for p in positives) / len(positives))
    return sum(terms) / len(terms)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=12), st.integers(1, 5), st.sampled_from([0.1, 0.5, 1.0]))
def test_supervised_contrastive_matches_the_loss_written_pair_by_pair(labels, width, temperature):
    if len(set(labels)) == len(labels):
        labels = labels + labels[:1]  # at least one positive pair
    features = torch.randn(len(labels), width, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(len(labels) * width))
    got = supervised_contrastive(features, torch.tensor(labels), temperature)
    assert math.isclose(float(got), _by_pairs(features, labels, temperature), rel_tol=1e-9, abs_tol=1e-12)


def test_supervised_contrastive_ignores_scale_and_is_zero_without_positives():
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 0, 2, 1, 3])
    torch.testing.assert_close(supervised_contrastive(3 * features, labels), supervised_contrastive(features, labels))
    alone = torch.randn(3, 3, requires_grad=True)
    loss = supervised_contrastive(alone, torch.tensor([0, 1, 2]))
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_supervised_contrastive_pulls_positives_together():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    loss = supervised_contrastive(features, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    step = features.detach() - 0.1 * features.grad
    assert float(supervised_contrastive(step, torch.tensor([0, 0, 1, 1]))) < float(loss.detach())


def test_class_weights_follow_the_label_counts():
    dialogue = Dialogue("d", tuple(Utterance("A", "x", label) for label in ["joy", "joy", "neutral", "joy", None]))
    labels = ["joy", "neutral", "sadness"]  # counts 3, 1 and 0 (counted as 1): mean 5/3
    assert class_weights([dialogue], labels, 0.0) is None
    torch.testing.assert_close(class_weights([dialogue], labels, 1.0), torch.tensor([5 / 9, 5 / 3, 5 / 3]))
    torch.testing.assert_close(class_weights([dialogue], labels, 0.5), torch.tensor([5 / 9, 5 / 3, 5 / 3]).sqrt())


def test_weighted_loss_is_the_weighted_mean_over_labeled_utterances():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, requires_grad=True)  # (B, U, L)
    labels = torch.tensor([[0, 3, -100], [1, 1, -100]])
    batch = SimpleNamespace(labels=labels)
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    flat = logits.reshape(6, 4), labels.reshape(6)
    expected = torch.nn.functional.cross_entropy(*flat, weight=weights)  # torch's mean divides by the weight sum
    torch.testing.assert_close(erc_loss(lambda b: logits, batch, weights), expected)
    torch.testing.assert_close(erc_loss(lambda b: logits, batch), torch.nn.functional.cross_entropy(*flat))
    unlabeled = SimpleNamespace(labels=torch.full((2, 3), -100))
    loss = erc_loss(lambda b: logits, unlabeled, weights)
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_label_smoothing_mixes_the_uniform_distribution_into_the_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4)  # (B, U, L)
    labels = torch.tensor([[0, 3, -100], [1, 1, -100]])
    batch = SimpleNamespace(labels=labels)
    log_p = logits.reshape(6, 4).log_softmax(-1)[labels.reshape(6) >= 0]  # (4, L) the labeled utterances
    targets = 0.9 * torch.nn.functional.one_hot(labels[labels >= 0], 4) + 0.1 / 4  # (4, L)
    expected = -(targets * log_p).sum(-1).mean()
    torch.testing.assert_close(erc_loss(lambda b: logits, batch, label_smoothing=0.1), expected)


def test_contrastive_weight_adds_the_supervised_contrastive_loss_of_the_labeled_utterances():
    torch.manual_seed(0)
    logits, fused = torch.randn(2, 3, 4), torch.randn(2, 3, 5)  # (B, U, L), (B, U, F)
    labels = torch.tensor([[0, 3, -100], [0, 3, -100]])
    batch = SimpleNamespace(labels=labels)

    def model(b, features=False):
        return (logits, fused) if features else logits

    keep = labels.reshape(6) >= 0
    expected = erc_loss(model, batch) + 0.5 * supervised_contrastive(fused.reshape(6, 5)[keep], labels[labels >= 0])
    torch.testing.assert_close(erc_loss(model, batch, contrastive=0.5), expected)
    assert not torch.allclose(erc_loss(model, batch, contrastive=0.5), erc_loss(model, batch))
