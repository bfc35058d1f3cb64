"""The ``backend="equations"`` layers: one (bi)directional layer run from the gate equations.

The real steps of the batch are first put in packed order (:class:`rnnkit._packing.Packing`:
sorted longest first, time-major, padding left out). Per direction, the input projection
:math:`W_{ih} x_t` is then done for all real steps with one ``F.linear`` (a single large matmul,
and a single one in the backward pass too, on no padding row); only the recurrent part runs step
by step, in :mod:`rnnkit._recurrence`. The reverse direction is the same recurrence run on each
sequence read backwards from its own last element (not from the padding), and its output is
put back in forward time.

Shapes: T time steps, B sequences, N real steps (sum of lengths), D input features, H hidden
units, H_out = proj_size or H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _recurrence
from ._packing import Packing

__all__ = ["run_layer", "run_packed"]


def _split(weights: list[torch.Tensor], has_biases: bool):
    """``[w_ih, w_hh, (b_ih, b_hh), *rest]`` -> ``w_ih, w_hh, b_ih, b_hh, rest`` (biases None if absent)."""
    w_ih, w_hh = weights[:2]
    b_ih, b_hh = weights[2:4] if has_biases else (None, None)
    return w_ih, w_hh, b_ih, b_hh, weights[4 if has_biases else 2 :]


def _lstm(x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, rest = _split(weights, has_biases)
    w_hr = rest[0] if rest else None
    xg = F.linear(x, w_ih, b_ih + b_hh if has_biases else None)  # (N, 4H)
    return _recurrence.packed_lstm(xg, packing, *state, w_hh, w_hr)


def _gru(x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, _ = _split(weights, has_biases)
    xg = F.linear(x, w_ih, b_ih)  # (N, 3H)
    return _recurrence.packed_gru(xg, packing, *state, w_hh, b_hh)


def _layernorm_lstm(x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, rest = _split(weights, has_biases)
    ln_ih_weight, ln_ih_bias, *ln_rest = rest  # ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias
    xg = F.layer_norm(F.linear(x, w_ih), (w_ih.shape[0],), ln_ih_weight, ln_ih_bias)  # (N, 4H)
    if has_biases:
        xg = xg + (b_ih + b_hh)
    return _recurrence.packed_layernorm_lstm(xg, packing, *state, w_hh, *ln_rest)


_RECURRENCES = {"LSTM": (_lstm, 4), "GRU": (_gru, 3), "LayerNormLSTM": (_layernorm_lstm, 4)}


def _zero_state(mode: str, x: torch.Tensor, w_hh: torch.Tensor, B: int) -> tuple[torch.Tensor, ...]:
    """``(h0,)`` (B, H_out) for a GRU, ``(h0, c0)`` with c0 (B, H) for the LSTM kinds."""
    num_gates = _RECURRENCES[mode][1]
    H, H_out = w_hh.shape[0] // num_gates, w_hh.shape[1]  # w_hh: (G*H, H_out)
    h0 = x.new_zeros(B, H_out)
    return (h0,) if mode == "GRU" else (h0, x.new_zeros(B, H))


def run_layer(mode, x, lengths, hx, weights, *, has_biases):
    """Run one layer of ``mode`` ("LSTM", "GRU" or "LayerNormLSTM") over ``x`` (T, B, D).

    ``weights`` holds one list per direction in torch's order ``[w_ih, w_hh, b_ih, b_hh, w_hr]``
    (the LayerNorm-LSTM appends its six layer-norm gains and shifts); ``hx`` is None (zero
    state) or ``(h0,)`` / ``(h0, c0)`` shaped (dirs, B, ·); ``lengths`` (B,) int64 on
    ``x.device``, or None when every sequence is T steps long. Returns ``output``
    (T, B, dirs * H_out), exactly 0 past each length, and ``hx_n`` like ``hx`` with the states
    at each sequence's last real step (the initial state for length 0).
    """
    packing = Packing(lengths, x.shape[0], x.shape[1])
    output, hx_n = run_packed(mode, packing.pack(x), packing, hx, weights, has_biases=has_biases)
    return packing.unpack(output), hx_n  # (T, B, dirs * H_out)


def run_packed(mode, x, packing, hx, weights, *, has_biases):
    """:func:`run_layer` on the real steps only: ``x`` (N, D) in the packed order of ``packing``
    (a :class:`rnnkit._packing.Packing`); returns ``output`` (N, dirs * H_out) in that order
    and ``hx_n`` (dirs, B, ·) in batch order."""
    if mode not in _RECURRENCES:
        raise ValueError(f"mode must be one of {sorted(_RECURRENCES)}, got {mode!r}")
    recurrence = _RECURRENCES[mode][0]
    outputs, finals = [], []
    for d, direction in enumerate(weights):
        state = _zero_state(mode, x, direction[1], packing.B) if hx is None else tuple(s[d] for s in hx)
        x_d = x if d == 0 else packing.reverse(x)  # the reverse direction reads each sequence backwards
        out, *final = recurrence(x_d, packing, state, direction, has_biases)  # out (N, H_out)
        outputs.append(out if d == 0 else packing.reverse(out))
        finals.append(final)
    output = torch.cat(outputs, -1)  # (N, dirs * H_out)
    return output, tuple(torch.stack(states) for states in zip(*finals))  # each (dirs, B, ·)
