"""The recurrence specs against torch's modules: names, gate counts, states, fused ops, and the padding flag."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit._kinds import KINDS, check_size, rnn_mode
from rnnkit.cells import LayerNormLSTMCell

D, H, B = 3, 5, 4
TORCH = {"LSTM": nn.LSTM(D, H), "GRU": nn.GRU(D, H), "RNN_TANH": nn.RNN(D, H), "RNN_RELU": nn.RNN(D, H, 1, "relu")}


@pytest.mark.parametrize("mode", list(TORCH))
def test_spec_is_torchs(mode):
    kind, module = KINDS[mode], TORCH[mode].double()
    assert kind.mode == module.mode
    assert module.weight_ih_l0.shape == (kind.num_gates * H, D)
    x = torch.randn(7, B, D, dtype=torch.float64)
    hx = kind.zero_state(x, 1, B, hidden_size=H)
    assert [s.shape for s in hx] == [(1, B, H)] * (2 if kind.has_cell else 1)
    output, *states = kind.native(x, hx if kind.has_cell else hx[0], module._flat_weights, True, 1, 0.0, False,
                                  False, False)
    expected_output, expected_states = module(x)
    torch.testing.assert_close((output, *states), (expected_output, *(
        expected_states if kind.has_cell else (expected_states,))), rtol=0, atol=0)


@pytest.mark.parametrize("mode", list(KINDS))
def test_step_keeps_or_changes_the_state_as_the_flag_gates_say(mode):
    """Driving the flag gates to +-BIG makes a step keep the state exactly (c for the LSTM, h for the GRU);
    kinds without flag gates have no such gate, so their state changes."""
    kind = KINDS[mode]
    G = kind.num_gates * H
    h, c = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    xg = torch.randn(B, G, dtype=torch.float64)
    for gate, sign in kind.flag_gates:
        xg[:, gate * H : (gate + 1) * H] = sign * 1e4
    w_hh = torch.randn(G, H, dtype=torch.float64)
    if mode == "LayerNormLSTM":
        ones, zeros = torch.ones(G, dtype=torch.float64), torch.zeros(H, dtype=torch.float64)
        state = kind.step(xg, h, c, w_hh, ones, ones[:H], zeros)
    else:
        state = kind.step(xg, h, c, w_hh) if kind.has_cell else (kind.step(xg, h, w_hh),)
    kept = state[1] if kind.has_cell else state[0]
    assert torch.equal(kept, c if kind.has_cell else h) == bool(kind.flag_gates)


def test_layernorm_lstm_extras_are_the_cells_parameters():
    kind = KINDS["LayerNormLSTM"]
    cell = LayerNormLSTMCell(D, H)
    extras = kind.extra_shapes(H)
    assert {name: tuple(p.shape) for name, p in cell.named_parameters() if name in extras} == extras
    assert len(extras) == 6 and kind.native is None
    for name in extras:
        assert torch.equal(getattr(cell, name), torch.full(extras[name], kind.extra_init(name)))


def test_rnn_mode_and_size_checks():
    assert rnn_mode("tanh") == "RNN_TANH" and rnn_mode("relu") == "RNN_RELU"
    with pytest.raises(ValueError, match=r"Unknown nonlinearity 'gelu'. Select from 'tanh' or 'relu'."):
        rnn_mode("gelu")
    with pytest.raises(TypeError, match=r"hidden_size should be of type int, got: bool"):
        check_size("hidden_size", True)
    with pytest.raises(ValueError, match=r"input_size must be greater than zero, got -2"):
        check_size("input_size", -2)
