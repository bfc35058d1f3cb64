"""Parity of the native backend with ``nn.LSTM``/``nn.GRU`` run on a PackedSequence.

The reference packs the non-empty sequences (``enforce_sorted=False``) into a torch module that
holds the same weights; length-0 sequences have zero output and keep their initial state.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit._native import run_layer, run_stack

T, B, D, H = 7, 6, 5, 4
LENGTHS = [7, 0, 3, 7, 1, 5]  # unsorted, with an empty and full-length sequences


def _module(mode, bidirectional, proj_size, dtype, num_layers=1):
    kwargs = {"proj_size": proj_size} if proj_size else {}
    cls = nn.LSTM if mode == "LSTM" else nn.GRU
    return cls(D, H, num_layers=num_layers, bidirectional=bidirectional, **kwargs).to(dtype)


def _initial_state(mode, module, dtype):
    dirs = 2 if module.bidirectional else 1
    h0 = torch.randn(dirs * module.num_layers, B, module.proj_size or H, dtype=dtype)
    return (h0, torch.randn(dirs * module.num_layers, B, H, dtype=dtype)) if mode == "LSTM" else (h0,)


def _leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _reference(mode, module, x, lengths, hx):
    """``module`` on the packed non-empty sequences, scattered back into the padded batch."""
    keep = (lengths > 0).nonzero().squeeze(1)
    packed = pack_padded_sequence(x[:, keep], lengths[keep], enforce_sorted=False)
    if hx is None:
        hx = _zero_like_states(mode, module, x)
    sub_hx = tuple(s[:, keep] for s in hx)
    out, states = module(packed, sub_hx if mode == "LSTM" else sub_hx[0])
    out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    output = out.new_zeros(x.shape[0], x.shape[1], out.shape[-1]).index_copy(1, keep, out)
    states = states if mode == "LSTM" else (states,)
    return output, tuple(init.index_copy(1, keep, s) for init, s in zip(hx, states))


def _zero_like_states(mode, module, x):
    n = (2 if module.bidirectional else 1) * module.num_layers
    h0 = x.new_zeros(n, x.shape[1], module.proj_size or H)
    return (h0, x.new_zeros(n, x.shape[1], H)) if mode == "LSTM" else (h0,)


def _loss(output, states):
    """A weighted sum that gives every output element and state its own gradient."""
    g = torch.Generator().manual_seed(1)
    total = 0
    for t in (output, *states):
        total = total + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    return total


def _compare(mode, module, lengths, with_hx, dtype, atol, rtol):
    module.zero_grad()
    x = torch.randn(T, B, D, dtype=dtype)
    hx = _initial_state(mode, module, dtype) if with_hx else None
    weights = [_leaves(w) for w in module.all_weights]
    x_ours, x_ref = _leaves([x, x])
    hx_ours = None if hx is None else tuple(_leaves(hx))
    hx_ref = None if hx is None else tuple(_leaves(hx))

    out, states = run_layer(mode, x_ours, lengths, hx_ours, weights, has_biases=True)
    ref_lengths = torch.full((B,), T) if lengths is None else lengths
    ref_out, ref_states = _reference(mode, module, x_ref, ref_lengths, hx_ref)
    close = dict(atol=atol, rtol=rtol)
    torch.testing.assert_close(out, ref_out, **close)
    assert len(states) == len(ref_states)
    for s, r in zip(states, ref_states):
        torch.testing.assert_close(s, r, **close)
    if lengths is not None:
        pad = torch.arange(T)[:, None] >= lengths
        assert torch.all(out[pad] == 0)

    _loss(out, states).backward()
    _loss(ref_out, ref_states).backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, **close)
    ref_params = [p for layer in module.all_weights for p in layer]
    for p, r in zip([w for layer in weights for w in layer], ref_params):
        torch.testing.assert_close(p.grad, r.grad, **close)
    if with_hx:
        for s, r in zip(hx_ours, hx_ref):
            torch.testing.assert_close(s.grad, r.grad, **close)


CASES = [
    (mode, bidirectional, with_hx, proj_size)
    for mode in ("LSTM", "GRU")
    for bidirectional in (False, True)
    for with_hx in (False, True)
    for proj_size in ((0, 3) if mode == "LSTM" else (0,))
]


@pytest.mark.parametrize("mode, bidirectional, with_hx, proj_size", CASES)
def test_matches_packed_float64(mode, bidirectional, with_hx, proj_size):
    module = _module(mode, bidirectional, proj_size, torch.float64)
    _compare(mode, module, torch.tensor(LENGTHS), with_hx, torch.float64, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("mode, bidirectional, with_hx", [c[:3] for c in CASES if c[3] == 0])
def test_matches_packed_float32(mode, bidirectional, with_hx):
    # float32 LSTM runs on oneDNN, the packed reference on torch's own kernel: equal up to rounding.
    module = _module(mode, bidirectional, 0, torch.float32)
    _compare(mode, module, torch.tensor(LENGTHS), with_hx, torch.float32, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode, bidirectional, with_hx", [("LSTM", True, False), ("GRU", True, True)])
def test_lengths_none_is_full_length(mode, bidirectional, with_hx):
    module = _module(mode, bidirectional, 0, torch.float64)
    _compare(mode, module, None, with_hx, torch.float64, atol=1e-12, rtol=1e-10)
    _compare(mode, module, torch.full((B,), T), with_hx, torch.float64, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional, with_hx", [(False, True), (True, False), (True, True)])
def test_padding_steps_change_nothing_bitwise_float32(mode, bidirectional, with_hx):
    """Extra padding steps, filled with huge values, leave output and states bit for bit alike.

    This is the saturation argument checked on the kernel itself: sigmoid(+-BIG) is exactly
    1.0 / 0.0, so the LSTM cell state (and a zero reverse-direction state) is frozen exactly.
    """
    module = _module(mode, bidirectional, 0, torch.float32)
    weights = [list(w) for w in module.all_weights]
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(T, B, D)
    hx = _initial_state(mode, module, torch.float32) if with_hx else None
    x_long = torch.cat([x, torch.zeros(9, B, D)])  # (T + 9, B, D)
    x_long[torch.arange(T + 9)[:, None] >= lengths] = 1e30
    with torch.no_grad():
        out, states = run_layer(mode, x, lengths, hx, weights, has_biases=True)
        out_long, states_long = run_layer(mode, x_long, lengths, hx, weights, has_biases=True)
    assert torch.equal(out_long[:T], out)
    assert torch.equal(out_long[T:], torch.zeros_like(out_long[T:]))
    for s, s_long in zip(states, states_long):
        assert torch.equal(s, s_long)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_no_biases(mode, bidirectional):
    cls = nn.LSTM if mode == "LSTM" else nn.GRU
    module = cls(D, H, bias=False, bidirectional=bidirectional).double()
    x = torch.randn(T, B, D, dtype=torch.float64)
    lengths = torch.tensor(LENGTHS)
    out, states = run_layer(mode, x, lengths, None, [list(w) for w in module.all_weights], has_biases=False)
    ref_out, ref_states = _reference(mode, module, x, lengths, None)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    for s, r in zip(states, ref_states):
        torch.testing.assert_close(s, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("mode, proj_size", [("LSTM", 0), ("LSTM", 3), ("GRU", 0)])
@pytest.mark.parametrize("with_hx", [False, True])
def test_run_stack_matches_module(mode, proj_size, with_hx):
    module = _module(mode, True, proj_size, torch.float64, num_layers=2)
    module.dropout = 0.5  # active in training mode; the same seed must give torch's own dropout masks
    x = torch.randn(T, B, D, dtype=torch.float64)
    hx = _initial_state(mode, module, torch.float64) if with_hx else None
    torch.manual_seed(5)
    out, states = run_stack(mode, x, hx, module._flat_weights, has_biases=True, num_layers=2, dropout=0.5,
                            training=True, bidirectional=True)
    torch.manual_seed(5)
    ref_out, ref_states = module(x, None if hx is None else (hx if mode == "LSTM" else hx[0]))
    ref_states = ref_states if mode == "LSTM" else (ref_states,)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    assert len(states) == len(ref_states)
    for s, r in zip(states, ref_states):
        torch.testing.assert_close(s, r, atol=1e-12, rtol=1e-10)


def test_unknown_mode_is_rejected():
    x = torch.randn(T, B, D)
    with pytest.raises(ValueError, match="native backend runs mode 'LSTM' or 'GRU', got 'LayerNormLSTM'"):
        run_layer("LayerNormLSTM", x, None, None, [[torch.randn(4 * H, D), torch.randn(4 * H, H)]],
                  has_biases=False)
