"""The equations backend's two paths: the fast one (hand-written backward) and the reference one (plain torch
operations), checked against each other and against torch's layers, to the second derivative and under
``torch.func``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import jacrev, vmap

from rnnkit import _equations
from rnnkit.packing import Packing

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU", "LayerNormLSTM")
FAST_MODES = ("LSTM", "GRU", "LayerNormLSTM")
LENGTHS = [5, 2, 0, 4]  # a length 0 too: its state passes through
D, H = 3, 4


def _weights(mode: str, dirs: int, proj_size: int = 0) -> list[list[torch.Tensor]]:
    """Random float64 weights in torch's order per direction, LayerNorm gains and shifts appended."""
    G = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1, "LayerNormLSTM": 4}[mode] * H
    P = proj_size or H
    shapes = [(G, D), (G, P), (G,), (G,)] + ([(P, H)] if proj_size else [])
    if mode == "LayerNormLSTM":
        shapes += [(G,), (G,), (G,), (G,), (H,), (H,)]
    return [[(0.5 * torch.randn(shape, dtype=torch.float64)).requires_grad_() for shape in shapes]
            for _ in range(dirs)]


def _state(mode: str, dirs: int, B: int, proj_size: int = 0) -> tuple[torch.Tensor, ...]:
    h0 = torch.randn(dirs, B, proj_size or H, dtype=torch.float64, requires_grad=True)
    if mode in ("GRU", "RNN_TANH", "RNN_RELU"):
        return (h0,)
    return h0, torch.randn(dirs, B, H, dtype=torch.float64, requires_grad=True)


def _layer(mode, lengths, dirs, proj_size=0):
    """(function of x and the state, x, state, weights) for one layer on packed rows of ``lengths``."""
    packing = Packing(torch.tensor(lengths), max(lengths), len(lengths))
    x = torch.randn(sum(lengths), D, dtype=torch.float64, requires_grad=True)
    weights, state = _weights(mode, dirs, proj_size), _state(mode, dirs, len(lengths), proj_size)

    def run(x, *state):
        output, finals = _equations.run_packed(mode, x, packing, state, weights, has_biases=True)
        return output, *finals

    return run, x, state, weights


@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("dirs", [1, 2])
def test_the_reference_path_computes_what_the_fast_path_does(mode, dirs):
    proj_size = 2 if mode == "LSTM" else 0
    packing = Packing(torch.tensor(LENGTHS), max(LENGTHS), len(LENGTHS))
    x = torch.randn(sum(LENGTHS), D, dtype=torch.float64, requires_grad=True)
    weights, state = _weights(mode, dirs, proj_size), _state(mode, dirs, len(LENGTHS), proj_size)
    recurrence = _equations._RECURRENCES[mode]
    leaves = [x, *state, *(w for ws in weights for w in ws)]
    fast, reference = (path(x, packing, state, weights, True) for path in (recurrence.fast, recurrence.reference))
    cotangents = [torch.randn_like(t) for t in fast]
    results = [(*outputs, *torch.autograd.grad(outputs, leaves, cotangents)) for outputs in (fast, reference)]
    for fast, reference in zip(*results):
        torch.testing.assert_close(fast, reference)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dirs", [1, 2])
def test_gradients_of_gradients_are_right(mode, dirs):
    run, x, state, _ = _layer(mode, LENGTHS, dirs)
    assert gradcheck(run, (x, *state))
    assert gradgradcheck(run, (x, *state))


@pytest.mark.parametrize("mode", MODES)
def test_batched_gradients_and_jacobians(mode):
    """vmap over the backward (gradcheck's batched check, vectorized jacobians) and jacrev over the forward."""
    run, x, state, _ = _layer(mode, LENGTHS, 2)
    assert gradcheck(run, (x, *state), check_batched_grad=True)
    expected = torch.autograd.functional.jacobian(lambda x: run(x, *state)[0], x)
    torch.testing.assert_close(torch.autograd.functional.jacobian(lambda x: run(x, *state)[0], x, vectorize=True),
                               expected)
    torch.testing.assert_close(jacrev(lambda x: run(x, *state)[0])(x), expected)


@pytest.mark.parametrize("mode", MODES)
def test_vmap_over_the_forward(mode):
    run, x, state, _ = _layer(mode, LENGTHS, 2)
    xs = torch.randn(3, *x.shape, dtype=torch.float64)
    torch.testing.assert_close(vmap(lambda x: run(x, *state)[0])(xs), torch.stack([run(x, *state)[0] for x in xs]))


def test_a_graph_kept_for_a_second_backward_gives_the_same_gradient():
    run, x, state, weights = _layer("LSTM", LENGTHS, 2)
    loss = run(x, *state)[0].sum()
    first = torch.autograd.grad(loss, [x, weights[0][1]], retain_graph=True)
    second = torch.autograd.grad(loss, [x, weights[0][1]])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("dirs", [1, 2])
def test_a_gradient_penalty_matches_torch(mode, dirs):
    """d/dθ |d loss/dx|² through torch's own layer and through the equations, on the same packed batch."""
    torch_cls = {"LSTM": nn.LSTM, "GRU": nn.GRU}.get(mode, nn.RNN)
    kwargs = {"nonlinearity": mode[4:].lower()} if mode.startswith("RNN") else {}
    reference = torch_cls(D, H, bidirectional=dirs == 2, **kwargs).double()
    weights = [[p for p in reference._flat_weights[d * 4 : (d + 1) * 4]] for d in range(dirs)]
    lengths = [5, 2, 4]  # torch's packed layers take no length 0
    packing = Packing(torch.tensor(lengths), max(lengths), len(lengths))
    x = torch.randn(sum(lengths), D, dtype=torch.float64, requires_grad=True)
    padded = packing.unpack(x)  # (T, B, D)
    packed = nn.utils.rnn.pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)

    def penalty(out):
        (dx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        return dx.pow(2).sum()

    expected_out = nn.utils.rnn.pad_packed_sequence(reference(packed)[0])[0]
    output, _ = _equations.run_packed(mode, x, packing, None, weights, has_biases=True)
    ours, theirs = penalty(packing.unpack(output)), penalty(expected_out)
    torch.testing.assert_close(ours, theirs)
    params = list(reference.parameters())
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(theirs, params)):
        torch.testing.assert_close(a, b)
