"""Tests for rnnkit.erc.losses against the loss written out pair by pair."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.erc.losses import supervised_contrastive


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
