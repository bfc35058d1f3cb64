"""Tests for rnnkit._lengths: per-sequence reversal and permutations, values and gradients."""

from __future__ import annotations

import pytest
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


@settings(max_examples=40, deadline=None)
@given(padded_batches(), st.randoms(use_true_random=False))
def test_reverse_padded_with_an_order_reverses_the_permuted_batch(batch, rng):
    x, lengths = batch
    order = torch.tensor(rng.sample(range(len(lengths)), len(lengths)))
    got = reverse_padded(x, lengths[order], order)
    assert torch.equal(got, reverse_padded(x[:, order], lengths[order]))
    assert torch.autograd.gradcheck(lambda v: reverse_padded(v, lengths[order], order), (x.detach().requires_grad_(),))


@pytest.mark.parametrize("dim", [0, 1, 2])
@pytest.mark.parametrize("contiguous", [True, False])
def test_permute_matches_index_select_with_first_and_second_derivatives(dim, contiguous):
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(4, 5, 3, dtype=torch.float64, generator=g)
    x = (x if contiguous else x.transpose(0, 2).contiguous().transpose(0, 2)).requires_grad_()
    index = torch.randperm(x.shape[dim], generator=g)
    inverse = torch.argsort(index)
    assert torch.equal(permute(x, dim, index, inverse), x.index_select(dim, index))
    assert torch.autograd.gradcheck(lambda v: permute(v, dim, index, inverse), (x,))
    assert torch.autograd.gradgradcheck(lambda v: permute(v, dim, index, inverse) ** 2, (x,))


def test_permute_of_an_empty_batch_keeps_its_shape():
    x = torch.randn(3, 0, 2)
    empty = torch.zeros(0, dtype=torch.long)
    assert permute(x, 1, empty, empty).shape == (3, 0, 2)
