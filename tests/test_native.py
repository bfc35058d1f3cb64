"""Parity of the native backend with ``nn.LSTM``/``nn.GRU`` run on a PackedSequence.

The reference packs the non-empty sequences (``enforce_sorted=False``) into a torch module that
holds the same weights; length-0 sequences have zero output and keep their initial state.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit import LSTM, _native
from rnnkit._kinds import KINDS
from rnnkit._native import run_layer, run_packed, run_stack
from rnnkit.packing import Packing

T, B, D, H = 7, 6, 5, 4
LENGTHS = [7, 0, 3, 7, 1, 5]  # unsorted, with an empty and full-length sequences


def _module(mode, bidirectional, proj_size, dtype, num_layers=1):
    kwargs = {"proj_size": proj_size} if proj_size else {}
    cls = nn.LSTM if mode == "LSTM" else nn.GRU
    return cls(D, H, num_layers=num_layers, bidirectional=bidirectional, **kwargs).to(dtype)


def _initial_state(mode, module, dtype, batch=B):
    dirs = 2 if module.bidirectional else 1
    h0 = torch.randn(dirs * module.num_layers, batch, module.proj_size or H, dtype=dtype)
    return (h0, torch.randn(dirs * module.num_layers, batch, H, dtype=dtype)) if mode == "LSTM" else (h0,)


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


def _compare(mode, module, lengths, with_hx, dtype, atol, rtol, steps=T, max_chunks=None):
    """``run_layer`` against the packed reference on a (steps, B, D) batch, B = len(lengths) or B."""
    module.zero_grad()
    batch = B if lengths is None else len(lengths)
    x = torch.randn(steps, batch, D, dtype=dtype)
    hx = _initial_state(mode, module, dtype, batch) if with_hx else None
    weights = [_leaves(w) for w in module.all_weights]
    x_ours, x_ref = _leaves([x, x])
    hx_ours = None if hx is None else tuple(_leaves(hx))
    hx_ref = None if hx is None else tuple(_leaves(hx))

    out, states = run_layer(KINDS[mode], x_ours, lengths, hx_ours, weights, has_biases=True, max_chunks=max_chunks)
    ref_lengths = torch.full((batch,), steps) if lengths is None else lengths
    ref_out, ref_states = _reference(mode, module, x_ref, ref_lengths, hx_ref)
    close = dict(atol=atol, rtol=rtol)
    torch.testing.assert_close(out, ref_out, **close)
    assert len(states) == len(ref_states)
    for s, r in zip(states, ref_states):
        torch.testing.assert_close(s, r, **close)
    if lengths is not None:
        pad = torch.arange(steps)[:, None] >= lengths
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


# Ties (three 4s, two 9s), empty sequences, and a longest sequence shorter than the 11 padded steps.
CHUNK_LENGTHS = [9, 4, 0, 4, 9, 1, 6, 4, 0, 2]


@pytest.mark.parametrize("max_chunks", [2, 3, 8])
@pytest.mark.parametrize("mode, bidirectional, with_hx, proj_size", CASES)
def test_chunked_matches_packed_float64(mode, bidirectional, with_hx, proj_size, max_chunks):
    module = _module(mode, bidirectional, proj_size, torch.float64)
    _compare(mode, module, torch.tensor(CHUNK_LENGTHS), with_hx, torch.float64, atol=1e-12, rtol=1e-10, steps=11,
             max_chunks=max_chunks)


@pytest.mark.parametrize("max_chunks", [1, 2, 3, 5, 8])
def test_chunk_bounds_are_length_quantiles(max_chunks):
    lengths = torch.tensor(CHUNK_LENGTHS)
    bounds = _native._chunk_bounds(lengths, max_chunks)
    assert bounds[0] == 0 and bounds[-1] == max(CHUNK_LENGTHS)
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    assert set(bounds[1:]) <= set(CHUNK_LENGTHS)
    assert 1 <= len(bounds) - 1 <= max_chunks


def test_cost_model_chunks_only_spread_lengths():
    g = torch.Generator().manual_seed(0)
    assert _native._chunk_bounds(torch.full((64,), 100)) == [0, 100]
    assert _native._chunk_bounds(torch.randint(98, 101, (64,), generator=g)) == [0, 100]
    assert len(_native._chunk_bounds(torch.randint(25, 101, (64,), generator=g))) - 1 > 2
    assert _native._chunk_bounds(torch.zeros(5, dtype=torch.long)) == [0]


def test_stack_with_chosen_chunks_matches_packed_float64():
    """A 2-layer bidirectional ``rnnkit.LSTM`` with lengths the cost model runs in several chunks."""
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(25, 101, (64,), generator=g)
    assert len(_native._chunk_bounds(lengths)) - 1 > 2
    reference = nn.LSTM(D, H, num_layers=2, bidirectional=True).double()
    ours = LSTM(D, H, num_layers=2, bidirectional=True, backend="native").double()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(100, 64, D, dtype=torch.float64)
    x_ours, x_ref = _leaves([x, x])
    out, states = ours(x_ours, lengths=lengths)
    ref, ref_states = reference(pack_padded_sequence(x_ref, lengths, enforce_sorted=False))
    ref, _ = pad_packed_sequence(ref, total_length=100)
    close = dict(atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out, ref, **close)
    for s, r in zip(states, ref_states):
        torch.testing.assert_close(s, r, **close)
    _loss(out, states).backward()
    _loss(ref, ref_states).backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, **close)
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, reference.get_parameter(name).grad, **close)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_chunks_run_only_the_sequences_still_running(monkeypatch, bidirectional):
    calls = []
    fused = _native._fused

    def recording_fused(kind, inputs, *args, **kwargs):
        calls.append(tuple(inputs[0].shape[:2]))  # (steps, sequences)
        return fused(kind, inputs, *args, **kwargs)

    monkeypatch.setattr(_native, "_fused", recording_fused)
    module = _module("LSTM", bidirectional, 0, torch.float64)
    lengths = torch.tensor(CHUNK_LENGTHS)
    run_layer(KINDS["LSTM"], torch.randn(11, len(lengths), D, dtype=torch.float64), lengths, None,
              [list(w) for w in module.all_weights], has_biases=True, max_chunks=3)
    bounds = _native._chunk_bounds(lengths, 3)
    chunks = [(stop - start, int((lengths > start).sum())) for start, stop in zip(bounds, bounds[1:])]
    assert calls == chunks * (2 if bidirectional else 1)
    assert sum(steps * n for steps, n in chunks) < 11 * len(lengths)


@pytest.mark.parametrize("max_chunks", [1, 3])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional, with_hx", [(False, True), (True, False), (True, True)])
def test_padding_steps_change_nothing_bitwise_float32(mode, bidirectional, with_hx, max_chunks):
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
        out, states = run_layer(KINDS[mode], x, lengths, hx, weights, has_biases=True, max_chunks=max_chunks)
        out_long, states_long = run_layer(KINDS[mode], x_long, lengths, hx, weights, has_biases=True, max_chunks=max_chunks)
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
    out, states = run_layer(KINDS[mode], x, lengths, None, [list(w) for w in module.all_weights], has_biases=False)
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
    out, states = run_stack(KINDS[mode], x, hx, module._flat_weights, has_biases=True, num_layers=2, dropout=0.5,
                            training=True, bidirectional=True)
    torch.manual_seed(5)
    ref_out, ref_states = module(x, None if hx is None else (hx if mode == "LSTM" else hx[0]))
    ref_states = ref_states if mode == "LSTM" else (ref_states,)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    assert len(states) == len(ref_states)
    for s, r in zip(states, ref_states):
        torch.testing.assert_close(s, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("mode", ["LayerNormLSTM", "RNN_TANH"])
def test_kinds_without_the_padding_flag_are_rejected(mode):
    x = torch.randn(T, B, D)
    with pytest.raises(ValueError, match=f"a gate that holds the state, which '{mode}' has not"):
        run_layer(KINDS[mode], x, torch.tensor(LENGTHS), None, [[torch.randn(4 * H, D), torch.randn(4 * H, H)]],
                  has_biases=False)
    with pytest.raises(ValueError, match="no fused op for 'LayerNormLSTM'"):
        run_stack(KINDS["LayerNormLSTM"], x, None, [torch.randn(4 * H, D), torch.randn(4 * H, H)], has_biases=False,
                  num_layers=1, dropout=0.0, training=False, bidirectional=False)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_run_packed_matches_packed_module(mode, bidirectional, with_hx):
    """torch's packed op on :class:`Packing` rows, length 0 included: the state passes through."""
    cls = {"LSTM": nn.LSTM, "GRU": nn.GRU}.get(mode, nn.RNN)
    extra = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if cls is nn.RNN else {}
    module = cls(D, H, num_layers=2, bidirectional=bidirectional, **extra).double()
    x = torch.randn(T, B, D, dtype=torch.float64)
    lengths = torch.tensor(LENGTHS)
    hx = _initial_state(mode, module, torch.float64) if with_hx else None
    packing = Packing(lengths, T, B)
    out, states = run_packed(KINDS[mode], packing.pack(x), packing, hx, module._flat_weights, has_biases=True,
                             num_layers=2, dropout=0.0, training=False, bidirectional=bidirectional)
    ref_out, ref_states = _reference(mode, module, x, lengths, hx)
    torch.testing.assert_close((packing.unpack(out), *states), (ref_out, *ref_states), atol=1e-12, rtol=1e-10)
    empty = Packing(torch.zeros(B, dtype=torch.long), T, B)
    out, states = run_packed(KINDS[mode], x.new_zeros(0, D), empty, hx, module._flat_weights, has_biases=True,
                             num_layers=2, dropout=0.0, training=False, bidirectional=bidirectional)
    assert out.shape == (0, (2 if bidirectional else 1) * H)
    for s, initial in zip(states, hx or _zero_like_states(mode, module, x)):
        assert torch.equal(s, initial)
