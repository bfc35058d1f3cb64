"""Tests for rnnkit._lengths: per-sequence reversal and permutations, values and gradients."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit._lengths import permute, reverse_padded


@st.composite
def padded_batches(draw):
    T = draw(st.integers(1, 8))
    lengths = draw(st.lists(st.integers(0, T), min_size=1, max_size=6))
    D = draw(st.integers(1, 3))
    x = torch.randn(T, len(lengths), D, dtype=torch.float64, generator=torch.Generator().manual_seed(T))
    return x, torch.tensor(lengths)


@settings(max_examples=60, deadline=None)
@given(padded_batches())
def test_reverse_padded_reverses_each_sequence_within_its_length(batch):
    x, lengths = batch
    expected = x.clone()
    for b, n in enumerate(lengths.tolist()):
        expected[:n, b] = x[:n, b].flip(0)
    got = reverse_padded(x, lengths)
    assert torch.equal(got, expected)
    assert torch.equal(reverse_padded(got, lengths), x)


@settings(max_examples=30, deadline=None)
@given(padded_batches())
def test_reverse_padded_gradient_is_the_reversed_gradient(batch):
    x, lengths = batch
    x.requires_grad_()
    weights = torch.randn_like(x)
    (reverse_padded(x, lengths) * weights).sum().backward()
    assert torch.equal(x.grad, reverse_padded(weights, lengths))
    assert torch.autograd.gradcheck(lambda v: reverse_padded(v, lengths), (x.detach().requires_grad_(),))


def test_permute_matches_index_select_with_first_and_second_derivatives():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    index = torch.randperm(5, generator=g)
    inverse = torch.argsort(index)
    assert torch.equal(permute(x, 1, index, inverse), x.index_select(1, index))
    assert torch.autograd.gradcheck(lambda v: permute(v, 1, index, inverse), (x,))
    assert torch.autograd.gradgradcheck(lambda v: permute(v, 1, index, inverse) ** 2, (x,))
