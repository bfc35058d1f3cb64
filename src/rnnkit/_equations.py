"""The ``backend="equations"`` layers: one (bi)directional layer run from the gate equations.

Per direction, the input projection :math:`W_{ih} x_t` is done for all time steps with one
``F.linear`` (a single large matmul, and a single one in the backward pass too); only the
recurrent part runs step by step, in :mod:`rnnkit._recurrence`. The reverse direction is the
forward recurrence run on each sequence reversed within its own length, so it starts at that
sequence's last real element rather than at the padding, and its output is reversed back.

Shapes: T time steps, B sequences, D input features, H hidden units, H_out = proj_size or H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _recurrence
from ._lengths import reverse_padded

__all__ = ["run_layer"]


def _reverse(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Each sequence of ``x`` (T, B, *) reversed within its length (all of T when None)."""
    return x.flip(0) if lengths is None else reverse_padded(x, lengths)


def _split(weights: list[torch.Tensor], has_biases: bool):
    """``[w_ih, w_hh, (b_ih, b_hh), *rest]`` -> ``w_ih, w_hh, b_ih, b_hh, rest`` (biases None if absent)."""
    w_ih, w_hh = weights[:2]
    b_ih, b_hh = weights[2:4] if has_biases else (None, None)
    return w_ih, w_hh, b_ih, b_hh, weights[4 if has_biases else 2 :]


def _lstm(x, lengths, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, rest = _split(weights, has_biases)
    w_hr = rest[0] if rest else None
    xg = F.linear(x, w_ih, b_ih + b_hh if has_biases else None)  # (T, B, 4H)
    return _recurrence.lstm_recurrence(xg, lengths, *state, w_hh, w_hr)


def _gru(x, lengths, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, _ = _split(weights, has_biases)
    xg = F.linear(x, w_ih, b_ih)  # (T, B, 3H)
    return _recurrence.gru_recurrence(xg, lengths, *state, w_hh, b_hh)


def _layernorm_lstm(x, lengths, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, rest = _split(weights, has_biases)
    ln_ih_weight, ln_ih_bias, *ln_rest = rest  # ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias
    xg = F.layer_norm(F.linear(x, w_ih), (w_ih.shape[0],), ln_ih_weight, ln_ih_bias)  # (T, B, 4H)
    if has_biases:
        xg = xg + (b_ih + b_hh)
    return _recurrence.layernorm_lstm_recurrence(xg, lengths, *state, w_hh, *ln_rest)


_RECURRENCES = {"LSTM": (_lstm, 4), "GRU": (_gru, 3), "LayerNormLSTM": (_layernorm_lstm, 4)}


def _zero_state(mode: str, x: torch.Tensor, w_hh: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(h0,)`` (B, H_out) for a GRU, ``(h0, c0)`` with c0 (B, H) for the LSTM kinds."""
    num_gates = _RECURRENCES[mode][1]
    H, H_out = w_hh.shape[0] // num_gates, w_hh.shape[1]  # w_hh: (G*H, H_out)
    h0 = x.new_zeros(x.shape[1], H_out)
    return (h0,) if mode == "GRU" else (h0, x.new_zeros(x.shape[1], H))


def run_layer(mode, x, lengths, hx, weights, *, has_biases):
    """Run one layer of ``mode`` ("LSTM", "GRU" or "LayerNormLSTM") over ``x`` (T, B, D).

    ``weights`` holds one list per direction in torch's order ``[w_ih, w_hh, b_ih, b_hh, w_hr]``
    (the LayerNorm-LSTM appends its six layer-norm gains and shifts); ``hx`` is None (zero
    state) or ``(h0,)`` / ``(h0, c0)`` shaped (dirs, B, ·); ``lengths`` (B,) int64 on
    ``x.device``, or None when every sequence is T steps long. Returns ``output``
    (T, B, dirs * H_out), exactly 0 past each length, and ``hx_n`` like ``hx`` with the states
    at each sequence's last real step (the initial state for length 0).
    """
    if mode not in _RECURRENCES:
        raise ValueError(f"mode must be one of {sorted(_RECURRENCES)}, got {mode!r}")
    recurrence = _RECURRENCES[mode][0]
    outputs, finals = [], []
    for d, direction in enumerate(weights):
        state = _zero_state(mode, x, direction[1]) if hx is None else tuple(s[d] for s in hx)
        x_d = x if d == 0 else _reverse(x, lengths)
        out, *final = recurrence(x_d, lengths, state, direction, has_biases)  # out (T, B, H_out)
        outputs.append(out if d == 0 else _reverse(out, lengths))
        finals.append(final)
    output = torch.cat(outputs, -1)  # (T, B, dirs * H_out)
    return output, tuple(torch.stack(states) for states in zip(*finals))  # each (dirs, B, ·)
