"""The layers against torch.nn.LSTM / GRU / RNN (padded, packed, per sequence) and against the cells.

Ground truth with lengths is torch's module holding the same state_dict, run on a
PackedSequence (``enforce_sorted=False``) or on each sequence alone.
"""

from __future__ import annotations

import doctest
import pickle
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit.layers
from rnnkit.cells import LayerNormLSTMCell, RNNInputError
from rnnkit.layers import GRU, LSTM, RNN, LayerNormLSTM
from rnnkit.packing import Packing

T, B, D, H = 7, 4, 3, 5
LENGTHS = [5, 7, 1, 3]  # unsorted, one full length
TOL = {"rtol": 1e-10, "atol": 1e-10}
OURS = {"LSTM": LSTM, "GRU": GRU, "RNN_TANH": partial(RNN, nonlinearity="tanh"),
        "RNN_RELU": partial(RNN, nonlinearity="relu"), "LayerNormLSTM": LayerNormLSTM}
TORCH = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": partial(nn.RNN, nonlinearity="tanh"),
         "RNN_RELU": partial(nn.RNN, nonlinearity="relu")}
TORCH_MODES = list(TORCH)
# LayerNormLSTM has no fused kernel, so no native backend
MODES_AND_BACKENDS = [(mode, backend) for mode in TORCH for backend in ("native", "equations")] + [
    ("LayerNormLSTM", "equations")]


def _pair(mode, backend, proj_size=0, **kwargs):
    """Our layer in float64 and torch's with the same weights."""
    extra = {"proj_size": proj_size} if proj_size else {}
    ours = OURS[mode](D, H, **kwargs, **extra, backend=backend).double()
    reference = TORCH[mode](D, H, **kwargs, **extra).double()
    reference.load_state_dict(ours.state_dict(), strict=True)
    return ours, reference


def _initial_state(model, batch=B, requires_grad=True):
    """Random ``(h_0,)`` or ``(h_0, c_0)`` for ``model``, shaped (L * dirs, B, ·)."""
    num = model.num_layers * (2 if model.bidirectional else 1)
    shapes = [(num, batch, model.proj_size or model.hidden_size)]
    if _has_cell(model):
        shapes.append((num, batch, model.hidden_size))
    return tuple(torch.randn(shape, dtype=torch.float64, requires_grad=requires_grad) for shape in shapes)


def _has_cell(model):
    return model.mode in ("LSTM", "LayerNormLSTM")


def _hx(model, states):
    """The ``hx`` argument from ``(h_0,)`` / ``(h_0, c_0)``: a pair for the LSTM kinds, a tensor otherwise."""
    return None if states is None else tuple(states) if _has_cell(model) else states[0]


def _states(result_hx):
    return (result_hx,) if isinstance(result_hx, torch.Tensor) else tuple(result_hx)


def _run_packed(model, x, lengths, states, batch_first):
    """torch's ground truth: the padded batch packed unsorted, run, and padded back to T steps."""
    packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    out, hx_n = model(packed, _hx(model, states))
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    return out, _states(hx_n)


def _run_alone(model, x, lengths, states):
    """Each sequence of time-major ``x`` run by itself; length 0 gives zeros and the initial state."""
    if states is None:
        states = tuple(torch.zeros_like(s) for s in _initial_state(model, len(lengths), requires_grad=False))
    dirs = 2 if model.bidirectional else 1
    outs, finals = [], []
    for b, length in enumerate(lengths):
        initial = tuple(s[:, b : b + 1] for s in states)
        if length == 0:
            out, final = x.new_zeros(0, 1, dirs * (model.proj_size or model.hidden_size)), initial
        else:
            out, final = model(x[:length, b : b + 1], _hx(model, initial))
            final = _states(final)
        outs.append(F.pad(out, (0, 0, 0, 0, 0, x.shape[0] - length)))
        finals.append(final)
    return torch.cat(outs, 1), tuple(torch.cat(s, 1) for s in zip(*finals))


def _grads(outputs, leaves):
    """Gradients of a fixed random projection of ``outputs`` with respect to ``leaves``."""
    generator = torch.Generator().manual_seed(1)
    loss = sum((out * torch.randn(out.shape, generator=generator, dtype=out.dtype)).sum() for out in outputs)
    return torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


def _params(model):
    return [p for _, p in sorted(model.named_parameters())]


@pytest.mark.parametrize("mode", TORCH_MODES)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("backend", ["native", "equations"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_parity_with_torch(mode, num_layers, bidirectional, batch_first, backend, with_lengths, with_hx):
    ours, reference = _pair(mode, backend, num_layers=num_layers, bidirectional=bidirectional,
                            batch_first=batch_first)
    x = torch.randn((B, T, D) if batch_first else (T, B, D), dtype=torch.float64, requires_grad=True)
    states = _initial_state(ours) if with_hx else None
    lengths = torch.tensor(LENGTHS) if with_lengths else None

    out, hx_n = ours(x, _hx(ours, states), lengths=lengths)
    if with_lengths:
        expected_out, expected_hx_n = _run_packed(reference, x, lengths, states, batch_first)
    else:
        expected_out, expected_hx_n = reference(x, _hx(reference, states))
    got, expected = (out, *_states(hx_n)), (expected_out, *_states(expected_hx_n))
    torch.testing.assert_close(got, expected, **TOL)
    if with_lengths:
        padding = torch.arange(T)[None, :] >= lengths[:, None]  # (B, T)
        assert torch.all((out if batch_first else out.transpose(0, 1))[padding] == 0)

    leaves = [x, *(states or ())]
    torch.testing.assert_close(_grads(got, leaves + _params(ours)), _grads(expected, leaves + _params(reference)),
                               **TOL)


@pytest.mark.parametrize("backend", ["native", "equations"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_proj_size_parity(backend, bidirectional, with_lengths):
    ours, reference = _pair("LSTM", backend, proj_size=2, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    states = _initial_state(ours)
    assert states[0].shape[-1] == 2 and states[1].shape[-1] == H
    if with_lengths:
        out, hx_n = ours(x, _hx(ours, states), lengths=torch.tensor(LENGTHS))
        expected = _run_packed(reference, x, LENGTHS, states, batch_first=False)
    else:
        out, hx_n = ours(x, _hx(ours, states))
        expected_out, expected_hx_n = reference(x, _hx(reference, states))
        expected = (expected_out, tuple(expected_hx_n))
    assert out.shape == (T, B, 2 * (1 + bidirectional)) and hx_n[0].shape[-1] == 2 and hx_n[1].shape[-1] == H
    got, expected = (out, *hx_n), (expected[0], *expected[1])
    torch.testing.assert_close(got, expected, **TOL)
    leaves = [x, *states]
    torch.testing.assert_close(_grads(got, leaves + _params(ours)), _grads(expected, leaves + _params(reference)),
                               **TOL)


@pytest.mark.parametrize("mode", TORCH_MODES)
@pytest.mark.parametrize("backend", ["native", "equations"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_each_sequence_alone(mode, backend, bidirectional):
    ours, reference = _pair(mode, backend, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(T, B, D, dtype=torch.float64)
    states = _initial_state(ours, requires_grad=False)
    out, hx_n = ours(x, _hx(ours, states), lengths=torch.tensor(LENGTHS))
    expected_out, expected_hx_n = _run_alone(reference, x, LENGTHS, states)
    torch.testing.assert_close((out, *_states(hx_n)), (expected_out, *expected_hx_n), **TOL)


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(TORCH_MODES),
    backend=st.sampled_from(["native", "equations"]),
    num_layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    sizes=st.tuples(st.integers(1, 4), st.integers(1, 4)),  # D, H
    lengths=st.integers(1, 6).flatmap(  # (T, lengths), each length in [0, T]
        lambda t: st.tuples(st.just(t), st.lists(st.integers(0, t), min_size=1, max_size=4))),
    with_hx=st.booleans(),
)
def test_random_shapes_and_lengths(mode, backend, num_layers, bidirectional, sizes, lengths, with_hx):
    (input_size, hidden_size), (steps, lengths) = sizes, lengths
    ours = OURS[mode](input_size, hidden_size, num_layers, bidirectional=bidirectional, backend=backend).double()
    reference = TORCH[mode](input_size, hidden_size, num_layers, bidirectional=bidirectional).double()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(steps, len(lengths), input_size, dtype=torch.float64, requires_grad=True)
    states = _initial_state(ours, len(lengths)) if with_hx else None
    out, hx_n = ours(x, _hx(ours, states), lengths=lengths)
    expected = _run_alone(reference, x, lengths, states)
    got, expected = (out, *_states(hx_n)), (expected[0], *expected[1])
    torch.testing.assert_close(got, expected, **TOL)
    if with_hx or max(lengths) > 0:  # otherwise nothing depends on x
        leaves = [x, *(states or ())]
        torch.testing.assert_close(_grads(got, leaves), _grads(expected, leaves), **TOL)


@pytest.mark.parametrize("mode, backend", MODES_AND_BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_in_packed_out(mode, backend, bidirectional, enforce_sorted):
    ours = OURS[mode](D, H, 2, bidirectional=bidirectional, backend=backend).double()
    x = torch.randn(T, B, D, dtype=torch.float64)
    lengths = torch.tensor(sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    states = _initial_state(ours, requires_grad=False)
    out, hx_n = ours(packed, _hx(ours, states))
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    for got, expected in ((out.sorted_indices, packed.sorted_indices), (out.unsorted_indices, packed.unsorted_indices)):
        assert (got is None and expected is None) or torch.equal(got, expected)
    padded_out, padded_hx_n = ours(x, _hx(ours, states), lengths=lengths)
    unpacked, unpacked_lengths = pad_packed_sequence(out, total_length=T)
    assert torch.equal(unpacked_lengths, lengths)
    torch.testing.assert_close((unpacked, *_states(hx_n)), (padded_out, *_states(padded_hx_n)), rtol=0, atol=0)
    if mode in TORCH:
        reference = TORCH[mode](D, H, 2, bidirectional=bidirectional).double()
        reference.load_state_dict(ours.state_dict())
        expected_out, expected_hx_n = reference(packed, _hx(reference, states))
        torch.testing.assert_close((out.data, *_states(hx_n)), (expected_out.data, *_states(expected_hx_n)), **TOL)


@pytest.mark.parametrize("mode, backend", MODES_AND_BACKENDS)
def test_mask_equals_lengths(mode, backend):
    ours = OURS[mode](D, H, 2, batch_first=True, bidirectional=True, backend=backend).double()
    x = torch.randn(B, T, D, dtype=torch.float64)
    lengths = torch.tensor(LENGTHS)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    by_mask, by_lengths = ours(x, mask=mask), ours(x, lengths=lengths)
    torch.testing.assert_close((by_mask[0], *_states(by_mask[1])), (by_lengths[0], *_states(by_lengths[1])),
                               rtol=0, atol=0)


@pytest.mark.parametrize("mode, backend", MODES_AND_BACKENDS)
def test_step_by_step_equals_whole(mode, backend):
    ours = OURS[mode](D, H, 2, backend=backend).double()
    x = torch.randn(T, B, D, dtype=torch.float64)
    initial = _initial_state(ours, requires_grad=False)
    for lengths in (None, torch.tensor(LENGTHS)):
        state, steps = _hx(ours, initial), []
        for t in range(T):
            # with lengths, each step has length 1 while the sequence lasts and 0 after it
            y, state = ours(x[t : t + 1], state, lengths=None if lengths is None else (t < lengths).long())
            steps.append(y)
        whole, whole_state = ours(x, _hx(ours, initial), lengths=lengths)
        torch.testing.assert_close((torch.cat(steps), *_states(state)), (whole, *_states(whole_state)), **TOL)


@pytest.mark.parametrize("mode, backend", MODES_AND_BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_length_zero_gives_zero_output_and_initial_state(mode, backend, bidirectional):
    ours = OURS[mode](D, H, 2, bidirectional=bidirectional, backend=backend).double()
    x = torch.randn(T, B, D, dtype=torch.float64)
    states = _initial_state(ours)
    out, hx_n = ours(x, _hx(ours, states), lengths=[3, 0, 7, 0])
    empty = [1, 3]
    assert torch.all(out[:, empty] == 0)
    for initial, final in zip(states, _states(hx_n)):
        assert torch.equal(final[:, empty], initial[:, empty])
    upstream = [torch.randn_like(s) for s in states]
    grads = torch.autograd.grad(_states(hx_n), states, upstream)
    for grad, up in zip(grads, upstream):
        assert torch.equal(grad[:, empty], up[:, empty])  # the state passes straight through


@pytest.mark.parametrize("mode", TORCH_MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_backends_agree(mode, bidirectional):
    native = OURS[mode](D, H, 3, bidirectional=bidirectional, backend="native").double()
    equations = OURS[mode](D, H, 3, bidirectional=bidirectional, backend="equations").double()
    equations.load_state_dict(native.state_dict())
    x = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    states = _initial_state(native)
    results = []
    for model in (native, equations):
        out, hx_n = model(x, _hx(model, states), lengths=[0, 7, 2, 5])
        got = (out, *_states(hx_n))
        results.append((got, _grads(got, [x, *states, *_params(model)])))
    torch.testing.assert_close(results[0], results[1], **TOL)


def _layernorm_reference(model, x, lengths, states):
    """A LayerNorm-LSTM layer stack as a loop over LayerNormLSTMCell, one sequence at a time."""
    dirs, params = 2 if model.bidirectional else 1, dict(model.named_parameters())
    outs, finals = [], []
    for b, length in enumerate(lengths):
        seq, final = x[:length, b], []  # (length, D)
        for layer in range(model.num_layers):
            cell, outputs = LayerNormLSTMCell(seq.shape[-1], model.hidden_size), []
            names = [name for name, _ in cell.named_parameters()]
            for d, suffix in enumerate(["", "_reverse"][:dirs]):
                weights = {name: params[f"{name}_l{layer}{suffix}"] for name in names}
                state = tuple(s[layer * dirs + d, b] for s in states)
                ys = [None] * length
                for t in range(length) if d == 0 else reversed(range(length)):
                    state = functional_call(cell, weights, (seq[t], state))
                    ys[t] = state[0]
                outputs.append(torch.stack(ys) if length else seq.new_zeros(0, model.hidden_size))
                final.append(state)
            seq = torch.cat(outputs, -1)  # (length, dirs * H)
        outs.append(F.pad(seq, (0, 0, 0, x.shape[0] - length)))
        finals.append(final)
    h_n = torch.stack([torch.stack([s[0] for s in final]) for final in finals], 1)
    c_n = torch.stack([torch.stack([s[1] for s in final]) for final in finals], 1)
    return torch.stack(outs, 1), h_n, c_n


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_layernorm_lstm_matches_cell_loop(bidirectional, with_lengths):
    model = LayerNormLSTM(D, H, 2, bidirectional=bidirectional).double()
    with torch.no_grad():  # move the layer-norm gains and shifts away from their identity init
        for name, weight in model.named_parameters():
            if name.startswith("ln_"):
                weight.add_(0.3 * torch.randn_like(weight))
    x = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    states = _initial_state(model)
    lengths = [5, 0, 7, 2] if with_lengths else [T] * B
    out, hx_n = model(x, tuple(states), lengths=lengths if with_lengths else None)
    got, expected = (out, *hx_n), _layernorm_reference(model, x, lengths, states)
    torch.testing.assert_close(got, expected, **TOL)
    leaves = [x, *states, *model.parameters()]
    torch.testing.assert_close(_grads(got, leaves), _grads(expected, leaves), **TOL)


@pytest.mark.parametrize("mode", TORCH_MODES)
@pytest.mark.parametrize("backend", ["native", "equations"])
@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched_input(mode, backend, with_hx):
    ours, reference = _pair(mode, backend, num_layers=2, bidirectional=True)
    x = torch.randn(T, D, dtype=torch.float64)
    states = tuple(s[:, 0] for s in _initial_state(ours, requires_grad=False)) if with_hx else None
    out, hx_n = ours(x, _hx(ours, states))
    expected_out, expected_hx_n = reference(x, _hx(reference, states))
    torch.testing.assert_close((out, *_states(hx_n)), (expected_out, *_states(expected_hx_n)), **TOL)


@pytest.mark.parametrize("mode, kwargs", [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}), ("RNN_RELU", {}),
                                          ("LSTM", {"bias": False}), ("GRU", {"bias": False}),
                                          ("RNN_TANH", {"bias": False})])
def test_state_dict_round_trip_with_torch(mode, kwargs):
    config = dict(num_layers=2, bidirectional=True, **kwargs)
    theirs = TORCH[mode](D, H, **config)
    ours = OURS[mode](D, H, **config)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())
    source, target = OURS[mode](D, H, **config), TORCH[mode](D, H, **config)
    target.load_state_dict(source.state_dict(), strict=True)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_layernorm_lstm_state_dict():
    source = LayerNormLSTM(D, H, 2, bidirectional=True)
    target = LayerNormLSTM(D, H, 2, bidirectional=True)
    target.load_state_dict(source.state_dict(), strict=True)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())
    lstm_keys = set(LSTM(D, H, 2, bidirectional=True).state_dict())
    extra = set(source.state_dict()) - lstm_keys
    assert lstm_keys < set(source.state_dict())
    assert extra == {f"ln_{part}_{kind}_l{k}{sfx}" for part in ("ih", "hh", "c") for kind in ("weight", "bias")
                     for k in (0, 1) for sfx in ("", "_reverse")}
    assert torch.equal(source.ln_c_weight_l1_reverse, torch.ones(H)) and source.ln_ih_bias_l0.shape == (4 * H,)


@pytest.mark.parametrize("mode", list(OURS))
def test_init_matches_torch_bounds(mode):
    model = OURS[mode](D, 16, 2)
    for name, weight in model.named_parameters():
        if not name.startswith("ln_"):
            assert weight.abs().max() <= 0.25 and weight.std() > 0.1, name


def test_backend_selection():
    assert LSTM(D, H).backend == GRU(D, H).backend == RNN(D, H).backend == "native"
    assert LayerNormLSTM(D, H).backend == "equations"
    assert LSTM(D, H, backend="equations").backend == "equations"


@pytest.mark.parametrize("mode", TORCH_MODES)
@pytest.mark.parametrize("backend", ["native", "equations"])
def test_dropout_between_layers_only_in_training(mode, backend):
    model = OURS[mode](D, H, 2, dropout=1.0, backend=backend).double()
    x = torch.randn(T, B, D, dtype=torch.float64)
    top = OURS[mode](H, H, backend=backend).double()
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in model.state_dict().items() if "_l1" in k})
    for lengths in (None, torch.tensor(LENGTHS)):
        # p = 1 zeroes the first layer's output, so the second layer sees only zeros
        out, hx_n = model.train()(x, lengths=lengths)
        expected, top_hx_n = top(torch.zeros(T, B, H, dtype=torch.float64), lengths=lengths)
        torch.testing.assert_close(out, expected, **TOL)
        torch.testing.assert_close(_states(hx_n)[0][1], _states(top_hx_n)[0][0], **TOL)
        no_dropout = OURS[mode](D, H, 2, backend=backend).double()
        no_dropout.load_state_dict(model.state_dict())
        torch.testing.assert_close(model.eval()(x, lengths=lengths)[0], no_dropout(x, lengths=lengths)[0], **TOL)


@pytest.mark.parametrize("mode, backend", MODES_AND_BACKENDS)
@pytest.mark.parametrize("with_hx", [False, True])
def test_run_packed_on_packed_rows(mode, backend, with_hx):
    """The public entry for callers that put the real steps in packed order themselves: forward's numbers."""
    ours = OURS[mode](D, H, 2, bidirectional=True, backend=backend).double()
    x = torch.randn(T, B, D, dtype=torch.float64)
    states = _initial_state(ours, requires_grad=False) if with_hx else None
    lengths = torch.tensor([5, 0, 7, 2])
    packing = Packing(lengths, T, B)
    out, hx_n = ours.run_packed(packing.pack(x), packing, states)
    expected_out, expected_hx_n = ours(x, _hx(ours, states), lengths=lengths)
    assert isinstance(hx_n, tuple) and out.shape == (int(lengths.sum()), 2 * H)
    torch.testing.assert_close((packing.unpack(out), *hx_n), (expected_out, *_states(expected_hx_n)), **TOL)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match=r"dropout=0.5 has no effect with num_layers=1"):
        LSTM(D, H, dropout=0.5)


CONSTRUCTOR_MISTAKES = [  # mode, arguments, the exception type torch raises too, rnnkit's message
    ("LSTM", {"hidden_size": 0}, ValueError, r"hidden_size must be greater than zero, got 0"),
    ("GRU", {"input_size": 0}, ValueError, r"input_size must be greater than zero, got 0"),
    ("GRU", {"input_size": 3.0}, TypeError, r"input_size should be of type int, got: float"),
    ("LSTM", {"num_layers": 0}, ValueError, r"num_layers must be greater than zero, got 0"),
    ("RNN_TANH", {"num_layers": 1.5}, TypeError, r"num_layers should be of type int, got: float"),
    ("LSTM", {"dropout": 1.5}, ValueError, r"dropout must be a number in \[0, 1\], got 1.5"),
    ("GRU", {"dropout": -0.1}, ValueError, r"dropout must be a number in \[0, 1\], got -0.1"),
    ("LSTM", {"proj_size": -1}, ValueError, r"proj_size must be >= 0 and smaller than hidden_size=5, got -1"),
    ("LSTM", {"proj_size": 5}, ValueError, r"proj_size must be >= 0 and smaller than hidden_size=5, got 5"),
    ("LSTM", {"batch_first": "False"}, TypeError, r"batch_first should be of type bool, got: str"),
    ("LSTM", {"bias": "True"}, TypeError, r"bias should be of type bool, got: str"),
    ("RNN_RELU", {"batch_first": 1}, TypeError, r"batch_first should be of type bool, got: int"),
    ("GRU", {"bias": 0}, TypeError, r"bias should be of type bool, got: int"),
    ("GRU", {"proj_size": 2}, ValueError, r"proj_size argument is only supported for LSTM, not GRU"),
    ("RNN_TANH", {"proj_size": 0}, ValueError, r"proj_size argument is only supported for LSTM, not RNN"),
]


@pytest.mark.parametrize("mode, kwargs, error, message", CONSTRUCTOR_MISTAKES)
def test_constructor_errors_are_torchs(mode, kwargs, error, message):
    arguments = {"input_size": D, "hidden_size": H, **kwargs}
    with pytest.raises(error, match=message):
        OURS[mode](**arguments)
    with pytest.raises(error):
        TORCH[mode](**arguments)


def test_bidirectional_must_be_a_bool():
    """Stricter than torch, which takes any truthy value: ``bidirectional="False"`` would build two directions."""
    assert nn.LSTM(D, H, bidirectional="False").bidirectional == "False"
    for value in ("False", 1):
        with pytest.raises(TypeError, match=rf"bidirectional should be of type bool, got: {type(value).__name__}"):
            LSTM(D, H, bidirectional=value)


def test_unknown_nonlinearity():
    message = r"Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'."
    for cls in (RNN, nn.RNN):
        with pytest.raises(ValueError, match=message):
            cls(D, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'native', 'equations', got 'cudnn'"):
        LSTM(D, H, backend="cudnn")


def test_layernorm_lstm_has_no_native_backend():
    with pytest.raises(ValueError, match=r"LayerNormLSTM has no native backend: use backend='equations' or 'auto'"):
        LayerNormLSTM(D, H, backend="native")


X = torch.randn(T, B, D)
BAD_CALLS = [  # mode, args, kwargs, the exception type torch raises (None: not a torch argument), rnnkit's message
    ("LSTM", (torch.randn(T, B, 1, D),), {}, ValueError,
     r"LSTM: expected input to be 2-D \(T, D\) unbatched or 3-D batched, got 4-D"),
    ("RNN_TANH", (torch.randn(D),), {}, ValueError, r"RNN: expected input to be 2-D \(T, D\) unbatched or 3-D"),
    ("GRU", (torch.randn(T, B, D + 1),), {}, RuntimeError,
     r"GRU: input.size\(-1\) must be equal to input_size. Expected 3, got 4"),
    ("RNN_RELU", (torch.randn(T, D + 1),), {}, RuntimeError, r"RNN: input.size\(-1\) must be equal to input_size"),
    ("LSTM", (X.double(),), {}, ValueError,
     r"LSTM: RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    ("GRU", (X, torch.zeros(1, B, H, dtype=torch.float64)), {}, RuntimeError,
     r"GRU: RNN hx dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    ("LSTM", (X, torch.zeros(2, B, H)), {}, None, r"LSTM: hx must be a pair \(h_0, c_0\), got \(2, 4, 5\)"),
    ("LSTM", (X, (torch.zeros(2, B, H), torch.zeros(2, B, H))), {}, RuntimeError,
     r"LSTM: h_0 must have shape \(1, 4, 5\), got \(2, 4, 5\)"),
    ("LSTM", (X, (torch.zeros(1, B, H), torch.zeros(1, B + 1, H))), {}, RuntimeError,
     r"LSTM: c_0 must have shape \(1, 4, 5\), got \(1, 5, 5\)"),
    ("GRU", (X, torch.zeros(1, B, H + 1)), {}, RuntimeError, r"GRU: hx must have shape \(1, 4, 5\), got \(1, 4, 6\)"),
    ("RNN_TANH", (X, torch.zeros(1, B + 1, H)), {}, RuntimeError,
     r"RNN: hx must have shape \(1, 4, 5\), got \(1, 5, 5\)"),
    ("GRU", (X[:, 0], torch.zeros(1, 1, H)), {}, RuntimeError, r"GRU: hx must have shape \(1, 5\), got \(1, 1, 5\)"),
    ("RNN_TANH", (X, torch.zeros(B, H)), {}, RuntimeError, r"RNN: hx must have shape \(1, 4, 5\), got \(4, 5\)"),
    ("LSTM", (torch.randn(0, B, D),), {}, RuntimeError,
     r"LSTM: expected sequence length to be larger than 0, got an input with 0 steps"),
    ("GRU", (X,), {"lengths": [1, 2, 3]}, None, r"lengths has 3 entries but the batch has 4 sequences"),
    ("GRU", (X,), {"lengths": [1, 2, 3, 8]}, None, r"lengths must be <= the padded length 7, got 8"),
    ("GRU", (X,), {"lengths": [1, 2, 3, -1]}, None, r"lengths must be >= 0, got -1"),
    ("GRU", (X,), {"lengths": torch.tensor([1.0, 2, 3, 4])}, None,
     r"lengths must be an integer tensor, got dtype torch.float32"),
    ("GRU", (X,), {"lengths": torch.ones(2, 2, dtype=torch.long)}, None, r"lengths must be 1-D, got shape \(2, 2\)"),
    ("GRU", (X,), {"lengths": [3] * B, "mask": torch.ones(B, T, dtype=torch.bool)}, None,
     r"pass lengths or mask, not both"),
    ("GRU", (X,), {"mask": torch.ones(B, T)}, None, r"mask must be a bool tensor, got torch.float32"),
    ("GRU", (X,), {"mask": torch.ones(T, B, dtype=torch.bool)}, None,
     r"mask must have shape \(B, T\) = \(4, 7\), got \(7, 4\)"),
    ("GRU", (X,), {"mask": torch.arange(T).repeat(B, 1) > 2}, None,
     r"mask must be True on a prefix of each sequence \(real steps first, then padding\)"),
    ("GRU", (pack_padded_sequence(X, [7, 5, 3, 1]),), {"lengths": [7, 5, 3, 1]}, None,
     r"lengths and mask cannot be given with a PackedSequence, which carries its own lengths"),
]


@pytest.mark.parametrize("mode, args, kwargs, torch_error, message", BAD_CALLS)
@pytest.mark.parametrize("backend", ["native", "equations"])
def test_forward_errors(mode, args, kwargs, torch_error, message, backend):
    """The exception type torch raises for the same mistake (:class:`RNNInputError` is both a ValueError and a
    RuntimeError), with rnnkit's message; ValueError for rnnkit's own arguments."""
    with pytest.raises(torch_error or ValueError, match=message) as raised:
        OURS[mode](D, H, backend=backend)(*args, **kwargs)
    if torch_error is not None:
        assert isinstance(raised.value, RNNInputError)
        with pytest.raises(torch_error):
            TORCH[mode](D, H)(*args, **kwargs)


@pytest.mark.parametrize("mode", TORCH_MODES)
def test_states_are_plain_tuples(mode):
    """What torch returns, so code that rebuilds a state with ``type(h)(...)`` runs unchanged."""
    for backend in ("native", "equations"):
        ours, reference = _pair(mode, backend)
        x = torch.randn(T, B, D, dtype=torch.float64)
        (_, state), (_, expected) = ours(x), reference(x)
        assert type(state) is type(expected)
        rebuilt = type(state)(t.detach() for t in state) if isinstance(state, tuple) else state.detach()
        torch.testing.assert_close(ours(x, rebuilt)[0], reference(x, expected)[0], **TOL)


@pytest.mark.parametrize("mode", TORCH_MODES)
@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True, "bias": False}])
def test_factory_kwargs_and_init_match_torch(mode, kwargs):
    extra = {"proj_size": 2} if mode == "LSTM" and kwargs else {}
    torch.manual_seed(3)
    ours = OURS[mode](D, H, **kwargs, **extra, device="cpu", dtype=torch.float64)
    torch.manual_seed(3)
    reference = TORCH[mode](D, H, **kwargs, **extra, device="cpu", dtype=torch.float64)
    assert list(ours.state_dict()) == list(reference.state_dict())
    for name, weight in reference.state_dict().items():  # the same random numbers in the same order
        assert torch.equal(ours.state_dict()[name], weight) and ours.state_dict()[name].dtype == torch.float64


@pytest.mark.parametrize("mode", TORCH_MODES)
def test_rnnbase_attributes(mode):
    extra = {"proj_size": 2} if mode == "LSTM" else {}
    ours = OURS[mode](D, H, 2, bidirectional=True, **extra)
    reference = TORCH[mode](D, H, 2, bidirectional=True, **extra)
    assert ours.mode == reference.mode
    assert ours._flat_weights_names == reference._flat_weights_names
    assert ours._all_weights == reference._all_weights
    assert [[w.shape for w in ws] for ws in ours.all_weights] == [[w.shape for w in ws] for ws in reference.all_weights]
    assert all(w is getattr(ours, name) for w, name in zip(ours._flat_weights, ours._flat_weights_names))
    before = {name: p.clone() for name, p in ours.named_parameters()}
    assert ours.flatten_parameters() is None
    assert all(torch.equal(p, before[name]) for name, p in ours.named_parameters())
    if mode.startswith("RNN_"):
        assert ours.nonlinearity == reference.nonlinearity


@pytest.mark.parametrize("mode", TORCH_MODES)
@pytest.mark.parametrize("backend", ["native", "equations"])
def test_repr_is_torchs_and_the_backend(mode, backend):
    extra = {"proj_size": 2} if mode == "LSTM" else {}
    kwargs = {"num_layers": 2, "bias": False, "batch_first": True, "dropout": 0.5, "bidirectional": True, **extra}
    ours, reference = OURS[mode](D, H, **kwargs, backend=backend), TORCH[mode](D, H, **kwargs)
    assert repr(ours) == repr(reference)[:-1] + f", backend='{backend}')"


@pytest.mark.parametrize("mode, backend", MODES_AND_BACKENDS)
def test_pickle_round_trip(mode, backend):
    ours = OURS[mode](D, H, 2, bidirectional=True, backend=backend).double()
    copy = pickle.loads(pickle.dumps(ours))
    x = torch.randn(T, B, D, dtype=torch.float64)
    assert repr(copy) == repr(ours)
    torch.testing.assert_close(copy(x, lengths=LENGTHS), ours(x, lengths=LENGTHS), rtol=0, atol=0)


@pytest.mark.parametrize("mode", TORCH_MODES)
def test_empty_batch(mode):
    """B = 0 is an empty result, as in torch, on both backends."""
    for backend in ("native", "equations"):
        ours, reference = _pair(mode, backend, num_layers=2, bidirectional=True)
        x = torch.randn(T, 0, D, dtype=torch.float64)
        got, expected = ours(x), reference(x)
        torch.testing.assert_close((got[0], *_states(got[1])), (expected[0], *_states(expected[1])))
        assert ours(x, lengths=torch.zeros(0, dtype=torch.long))[0].shape == (T, 0, 2 * H)


def test_docstring_examples_run():
    failed, attempted = doctest.testmod(rnnkit.layers)
    assert attempted > 0 and failed == 0


@pytest.mark.parametrize("mode, backend", MODES_AND_BACKENDS)
def test_torch_func_transforms_over_a_layer_with_lengths(mode, backend):
    """vmap over the batch of inputs and jacrev of the output: the native backend's fused ops have no batching
    rule, so under a transform the layer runs its equations; the results are those of the plain calls."""
    model = OURS[mode](D, H, num_layers=2, bidirectional=True, backend=backend).double()
    lengths = torch.tensor(LENGTHS)

    def run(x):
        return model(x, lengths=lengths)[0]  # (T, B, 2H)

    xs = torch.randn(3, T, B, D, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(run)(xs), torch.stack([run(x) for x in xs]), **TOL)
    x = xs[0].requires_grad_()
    torch.testing.assert_close(torch.func.jacrev(run)(x), torch.autograd.functional.jacobian(run, x), **TOL)
