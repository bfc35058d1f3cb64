"""Tests for rnnkit.packing: packed order against torch's PackedSequence, and each sequence reversed."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

from rnnkit._lengths import reverse_padded
from rnnkit.packing import Packing


@st.composite
def padded_batches(draw):
    T = draw(st.integers(1, 9))
    lengths = draw(st.lists(st.integers(0, T), min_size=1, max_size=7))
    x = torch.arange(T * len(lengths) * 2, dtype=torch.float64).view(T, len(lengths), 2)  # every entry distinct
    return x, torch.tensor(lengths)


@settings(max_examples=60, deadline=None)
@given(padded_batches())
def test_pack_is_torchs_packed_order_and_unpack_undoes_it(batch):
    x, lengths = batch
    packing = Packing(lengths, *x.shape[:2])
    packed = packing.pack(x)  # (N, 2)
    assert packed.shape[0] == int(lengths.sum())
    real = lengths > 0
    if real.any():  # torch refuses length-0 sequences; leaving them out changes no packed row
        reference = pack_padded_sequence(x[:, real], lengths[real], enforce_sorted=False)
        assert torch.equal(packed, reference.data)
        assert packing.batch_sizes == reference.batch_sizes.tolist()
    padding = torch.arange(x.shape[0])[:, None] >= lengths  # (T, B)
    assert torch.equal(packing.unpack(packed), x.masked_fill(padding[..., None], 0))


@settings(max_examples=60, deadline=None)
@given(padded_batches())
def test_reverse_reads_each_sequence_backwards_from_its_own_end(batch):
    x, lengths = batch
    packing = Packing(lengths, *x.shape[:2])
    packed = packing.pack(x)
    assert torch.equal(packing.reverse(packed), packing.pack(reverse_padded(x, lengths)))
    assert torch.equal(packing.reverse(packing.reverse(packed)), packed)


def test_rows_and_sorted_states():
    lengths = torch.tensor([2, 0, 3, 3])
    packing = Packing(lengths, 3, 4)
    assert packing.batch_sizes == [3, 3, 2]  # sequences 2, 3, 0 at step 0 (ties in batch order), then 2, 3
    assert packing.rows(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 3])).tolist() == [2, 5, 7]
    state = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]])  # (1, B, 1) in batch order
    assert packing.sort(state).view(-1).tolist() == [2.0, 3.0, 0.0, 1.0]
    assert torch.equal(packing.unsort(packing.sort(state)), state)


def test_full_length_packing_is_a_reshape():
    x = torch.randn(4, 3, 2)
    packing = Packing(None, 4, 3)
    assert torch.equal(packing.pack(x), x.reshape(12, 2))
    assert torch.equal(packing.unpack(packing.pack(x)), x)
    assert torch.equal(packing.reverse(packing.pack(x)), x.flip(0).reshape(12, 2))
