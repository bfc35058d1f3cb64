"""The cells against torch.nn.LSTMCell / GRUCell / RNNCell, and the LayerNorm-LSTM cell against its equations."""

from __future__ import annotations

import pickle
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.cells import GRUCell, LayerNormLSTMCell, LSTMCell, RNNCell, RNNInputError

B, D, H = 4, 3, 5
PAIRS = [(LSTMCell, nn.LSTMCell), (GRUCell, nn.GRUCell), (RNNCell, nn.RNNCell),
         (partial(RNNCell, nonlinearity="relu"), partial(nn.RNNCell, nonlinearity="relu"))]


def _inputs(cls, batched=True, with_state=True):
    """Input and state (float64, requiring grad) for ``cls``: (h, c) for the LSTM kinds, h for the others."""
    batch = (B,) if batched else ()
    x = torch.randn(*batch, D, dtype=torch.float64, requires_grad=True)
    if not with_state:
        return x, None
    h = torch.randn(*batch, H, dtype=torch.float64, requires_grad=True)
    if cls not in (LSTMCell, LayerNormLSTMCell):
        return x, h
    return x, (h, torch.randn(*batch, H, dtype=torch.float64, requires_grad=True))


def _leaves(x, hx):
    return [x] + ([] if hx is None else [hx] if isinstance(hx, torch.Tensor) else list(hx))


def _grads(outputs, tensors):
    """Gradients of a random projection of ``outputs`` (fixed by the seed) with respect to ``tensors``."""
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    generator = torch.Generator().manual_seed(1)
    loss = sum((out * torch.randn(out.shape, generator=generator, dtype=out.dtype)).sum() for out in outputs)
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_cell_matches_torch(ours, theirs, bias, batched, with_state):
    cell = ours(D, H, bias=bias).double()
    reference = theirs(D, H, bias=bias).double()
    reference.load_state_dict(cell.state_dict())
    x, hx = _inputs(ours, batched, with_state)
    got, expected = cell(x, hx), reference(x, hx)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    leaves = _leaves(x, hx) + list(cell.parameters())
    reference_leaves = _leaves(x, hx) + list(reference.parameters())
    torch.testing.assert_close(_grads(got, leaves), _grads(expected, reference_leaves), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [LSTMCell, LayerNormLSTMCell])
def test_lstm_cells_return_plain_tuples(cls):
    """As torch's: code that rebuilds a state with ``type(state)(...)`` runs unchanged."""
    state = cls(D, H)(torch.randn(B, D))
    assert type(state) is type(nn.LSTMCell(D, H)(torch.randn(B, D))) is tuple
    state = cls(D, H)(torch.randn(B, D), type(state)(t.detach() for t in state))
    assert [s.shape for s in state] == [(B, H), (B, H)]


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_factory_kwargs_init_and_repr_match_torch(ours, theirs):
    for kwargs in ({}, {"bias": False}):
        torch.manual_seed(3)
        cell = ours(D, H, **kwargs, device="cpu", dtype=torch.float64)
        torch.manual_seed(3)
        reference = theirs(D, H, **kwargs, device="cpu", dtype=torch.float64)
        assert repr(cell) == repr(reference)
        assert list(cell.state_dict()) == list(reference.state_dict())
        for name, weight in reference.state_dict().items():  # the same random numbers in the same order
            assert torch.equal(cell.state_dict()[name], weight) and cell.state_dict()[name].dtype == torch.float64
        copy = pickle.loads(pickle.dumps(cell))
        x, hx = _inputs(ours)
        torch.testing.assert_close(copy(x, hx), cell(x, hx), rtol=0, atol=0)
        torch.testing.assert_close(copy(x, hx), reference(x, hx), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_loads_both_ways(ours, theirs, bias):
    reference = theirs(D, H, bias=bias)
    cell = ours(D, H, bias=bias)
    cell.load_state_dict(reference.state_dict(), strict=True)
    assert all(torch.equal(cell.state_dict()[k], v) for k, v in reference.state_dict().items())
    source, fresh = ours(D, H, bias=bias), theirs(D, H, bias=bias)
    fresh.load_state_dict(source.state_dict(), strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in source.state_dict().items())


@pytest.mark.parametrize("cls", [LSTMCell, GRUCell, RNNCell, LayerNormLSTMCell])
def test_init_is_uniform_within_one_over_sqrt_hidden(cls):
    cell = cls(D, 16)
    for name, weight in cell.named_parameters():
        if name.startswith("ln_"):
            assert torch.equal(weight, torch.full_like(weight, 1.0 if name.endswith("weight") else 0.0)), name
        else:
            assert weight.abs().max() <= 0.25 and weight.std() > 0.1, name


def _layernorm_lstm_step(cell, x, h, c):
    """Ba et al. 2016 eq. 20-22, written independently of the cell."""
    p = dict(cell.named_parameters())
    a = (F.layer_norm(x @ p["weight_ih"].T, (4 * H,), p["ln_ih_weight"], p["ln_ih_bias"])
         + F.layer_norm(h @ p["weight_hh"].T, (4 * H,), p["ln_hh_weight"], p["ln_hh_bias"]))
    if cell.bias:
        a = a + p["bias_ih"] + p["bias_hh"]
    a_i, a_f, a_g, a_o = a.split(H, -1)
    c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
    h = torch.sigmoid(a_o) * torch.tanh(F.layer_norm(c, (H,), p["ln_c_weight"], p["ln_c_bias"]))
    return h, c


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_layernorm_lstm_cell_matches_equations(bias, batched):
    cell = LayerNormLSTMCell(D, H, bias=bias).double()
    with torch.no_grad():  # move the layer-norm gains and shifts away from their identity init
        for name, weight in cell.named_parameters():
            if name.startswith("ln_"):
                weight.add_(0.3 * torch.randn_like(weight))
    x, (h, c) = _inputs(LayerNormLSTMCell, batched)
    got = cell(x, (h, c))
    expected = _layernorm_lstm_step(cell, x, h, c)
    torch.testing.assert_close(tuple(got), expected, rtol=1e-12, atol=1e-12)
    leaves = [x, h, c] + list(cell.parameters())
    torch.testing.assert_close(_grads(got, leaves), _grads(expected, leaves), rtol=1e-12, atol=1e-12)
    zero = torch.zeros_like(h)
    torch.testing.assert_close(tuple(cell(x)), _layernorm_lstm_step(cell, x, zero, zero))


def test_layernorm_lstm_cell_parameter_names():
    names = [name for name, _ in LayerNormLSTMCell(D, H).named_parameters()]
    assert names == ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight", "ln_ih_bias",
                     "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias"]


@pytest.mark.parametrize("cls", [LSTMCell, GRUCell, RNNCell, LayerNormLSTMCell])
def test_constructor_errors(cls):
    with pytest.raises(ValueError, match=r"hidden_size must be greater than zero, got 0"):
        cls(D, 0)
    with pytest.raises(ValueError, match=r"input_size must be greater than zero, got -1"):
        cls(-1, H)
    with pytest.raises(TypeError, match=r"input_size should be of type int, got: float"):
        cls(3.0, H)


def test_rnn_cell_nonlinearity():
    """Checked when the cell is built; torch's cell takes any string and raises in forward."""
    with pytest.raises(ValueError, match=r"Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'."):
        RNNCell(D, H, nonlinearity="sigmoid")
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: sigmoid"):
        nn.RNNCell(D, H, nonlinearity="sigmoid")(torch.randn(B, D))


def _pair_of(cls, shape):
    return (torch.zeros(shape), torch.zeros(shape)) if cls is LSTMCell else torch.zeros(shape)


# the cell's class, a call's arguments, rnnkit's message (after the class name)
BAD_CALLS = [
    (lambda cls: (torch.randn(2, B, D), None), r"expected input to be 1-D \(D,\) or 2-D \(B, D\), got 3-D"),
    (lambda cls: (torch.randn(B, D + 1), None), r"input.size\(-1\) must be equal to input_size. Expected 3, got 4"),
    (lambda cls: (torch.randn(B, D, dtype=torch.float64), None),
     r"RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    (lambda cls: (torch.randn(B, D), _pair_of(cls, (B + 1, H))), r"must have shape \(4, 5\), got \(5, 5\)"),
    (lambda cls: (torch.randn(B, D), _pair_of(cls, (B, H + 1))), r"must have shape \(4, 5\), got \(4, 6\)"),
    (lambda cls: (torch.randn(B, D), _pair_of(cls, (1, B, H))), r"must have shape \(4, 5\), got \(1, 4, 5\)"),
    (lambda cls: (torch.randn(D), _pair_of(cls, (1, H))), r"must have shape \(5,\), got \(1, 5\)"),
]


@pytest.mark.parametrize("ours, theirs", [(LSTMCell, nn.LSTMCell), (GRUCell, nn.GRUCell), (RNNCell, nn.RNNCell)])
@pytest.mark.parametrize("call, message", BAD_CALLS)
def test_forward_errors_are_torchs(ours, theirs, call, message):
    """rnnkit's message in :class:`RNNInputError`, which is an instance of whatever torch raises for the mistake."""
    x, hx = call(ours)
    with pytest.raises(Exception) as expected:
        theirs(D, H)(x, hx)
    with pytest.raises(RNNInputError, match=rf"{ours.__name__}: .*{message}") as raised:
        ours(D, H)(x, hx)
    assert isinstance(raised.value, type(expected.value))


def test_layernorm_lstm_cell_errors():
    cell = LayerNormLSTMCell(D, H)
    with pytest.raises(RNNInputError, match=r"LayerNormLSTMCell: hx must be a pair \(h, c\), got \(4, 5\)"):
        cell(torch.randn(B, D), torch.zeros(B, H))
    with pytest.raises(RNNInputError, match=r"LayerNormLSTMCell: c must have shape \(4, 5\), got \(5, 5\)"):
        cell(torch.randn(B, D), (torch.zeros(B, H), torch.zeros(B + 1, H)))
