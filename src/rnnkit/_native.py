"""The ``backend="native"`` layers: torch's fused LSTM/GRU kernels, made exact with lengths.

``torch.lstm`` / ``torch.gru`` (the ops behind ``nn.LSTM``/``nn.GRU``: oneDNN on CPU float32,
cuDNN on GPU) are much faster than a Python time loop, but they only know padded batches: every
sequence runs for all T steps. We keep the padded batch and make the padding steps do nothing.

Padding flag. The layer input gets one extra feature, ``flag`` = 1 at steps ``t >= lengths[b]``
and 0 elsewhere, and ``w_ih`` a matching extra column that is ``+BIG`` on the forget-gate (LSTM)
or update-gate (GRU) rows and ``-BIG`` on the LSTM input-gate rows. At a padding step the
sigmoids saturate to exactly 1.0 / 0.0, so

.. math::
    c_t = 1 \\cdot c_{t-1} + 0 \\cdot g_t = c_{t-1}  \\qquad  (\\text{LSTM})

bit for bit: the cell state is frozen after each sequence's end and the kernel's final ``c`` is
``c`` at the last real step. The derivatives of the saturated gates are exactly 0 too
(:math:`\\sigma(1 - \\sigma) = 0`), so no gradient leaks into or out of padding steps. The hidden
state is *not* frozen (LSTM: :math:`h_t = o_t \\tanh(c_t)` with a free :math:`o_t`; GRU: torch's
CPU kernel computes :math:`h' = (h - n) z + n`, which rounds), so ``h_n`` is read from the output
at each sequence's last real step instead. The input itself is multiplied by 0 at padding steps
so that no finite padding value, however large, can outweigh ``BIG`` (a multiplication rather
than ``masked_fill``, which is several times slower with a broadcast mask; inf/NaN padding would
leak).

Reverse direction. With a zero initial state the kernel's own reverse pass over the padded batch
is exact: it meets the padding first, and a zero state stays exactly zero through it
(LSTM: :math:`c = 0`, :math:`h = o \\tanh(0) = 0`; GRU: :math:`(0 - n) \\cdot 1 + n = 0`), so
one bidirectional fused call does both directions. A nonzero initial state would be changed by
the padding, so then each sequence is reversed within its own length and run forward instead.

Shapes: T time steps, B sequences, D input features, H hidden units, H_out = proj_size or H.
"""

from __future__ import annotations

import torch

from ._lengths import gather_last, reverse_padded, step_mask

__all__ = ["run_layer", "run_stack"]

_GATES = {"LSTM": 4, "GRU": 3}
# Large enough that sigmoid(BIG + any real pre-activation) rounds to exactly 1.0 (and
# sigmoid(-BIG + ...) to exactly 0.0) in float32 and float64, oneDNN included.
_BIG = 1e4


def _check_mode(mode: str) -> None:
    if mode not in _GATES:
        raise ValueError(f"the native backend runs mode 'LSTM' or 'GRU', got {mode!r}")


def _fused(mode, x, hx, params, *, has_biases, num_layers=1, dropout=0.0, training=False, bidirectional=False):
    """One call of torch's fused kernel on a time-major batch; returns ``(output, hx_n)``."""
    if mode == "LSTM":
        output, h_n, c_n = torch.lstm(x, hx, params, has_biases, num_layers, dropout, training, bidirectional, False)
        return output, (h_n, c_n)
    output, h_n = torch.gru(x, hx[0], params, has_biases, num_layers, dropout, training, bidirectional, False)
    return output, (h_n,)


def _zero_state(mode, x, w_hh, num_states):
    """Zero ``hx`` for ``num_states`` (layers x directions) states: ``(h0,)`` or ``(h0, c0)``."""
    B = x.shape[1]
    H, H_out = w_hh.shape[0] // _GATES[mode], w_hh.shape[1]  # w_hh: (G*H, H_out)
    h0 = x.new_zeros(num_states, B, H_out)
    return (h0, x.new_zeros(num_states, B, H)) if mode == "LSTM" else (h0,)


def _with_flag_column(mode, w_ih):
    """``w_ih`` (G*H, D) -> (G*H, D + 1), the last column saturating the gates at padding steps."""
    H = w_ih.shape[0] // _GATES[mode]
    column = w_ih.new_zeros(w_ih.shape[0], 1)
    if mode == "LSTM":  # gate order i, f, g, o
        column[:H] = -_BIG  # i -> 0: nothing is written into c
        column[H : 2 * H] = _BIG  # f -> 1: c is kept as it is
    else:  # gate order r, z, n
        column[H : 2 * H] = _BIG  # z -> 1: h' = z * h + (1 - z) * n = h
    return torch.cat([w_ih, column], 1)


def run_layer(mode, x, lengths, hx, weights, *, has_biases):
    """Run one (uni- or bidirectional) layer of ``mode`` over ``x`` (T, B, D) with ``lengths``.

    ``weights`` holds one list per direction in torch's order ``[w_ih, w_hh, b_ih, b_hh, w_hr]``;
    ``hx`` is None (zero state) or ``(h0,)`` / ``(h0, c0)`` shaped (dirs, B, ·). Returns
    ``output`` (T, B, dirs * H_out), exactly 0 past each length, and ``hx_n`` like ``hx`` holding
    the states at each sequence's last real step (the initial state for length 0).
    ``lengths=None`` means every sequence is T steps long.
    """
    _check_mode(mode)
    dirs = len(weights)
    if lengths is None:
        return _both_directions(mode, x, hx, weights, has_biases)

    keep = step_mask(lengths, x.shape[0])[..., None].to(x.dtype)  # (T, B, 1), 0.0 at padding steps
    x = torch.cat([x * keep, 1 - keep], -1)  # (T, B, D + 1): the input zeroed and the flag
    weights = [[_with_flag_column(mode, direction[0]), *direction[1:]] for direction in weights]

    if hx is None or dirs == 1:
        output, states = _both_directions(mode, x, hx, weights, has_biases)
    else:
        # A nonzero initial state must meet each sequence's last element first, not the padding.
        out_f, states_f = _fused(mode, x, tuple(s[:1] for s in hx), weights[0], has_biases=has_biases)
        out_r, states_r = _fused(mode, reverse_padded(x, lengths), tuple(s[1:] for s in hx), weights[1],
                                 has_biases=has_biases)
        output = torch.cat([out_f, reverse_padded(out_r, lengths)], -1)  # (T, B, 2 * H_out)
        states = tuple(torch.cat(pair) for pair in zip(states_f, states_r))
    output = output * keep

    # h_n from the output: the forward direction ends at lengths - 1, the reverse one at step 0.
    H_out = output.shape[-1] // dirs
    h_n = [gather_last(output[..., :H_out], lengths)]  # dirs x (B, H_out)
    if dirs == 2:
        h_n.append(output[0, :, H_out:])
    h_n = torch.stack(h_n)  # (dirs, B, H_out)
    if hx is not None:  # else the masked output already holds the zero initial state
        h_n = torch.where((lengths == 0)[:, None], hx[0], h_n)
    return output, (h_n, *states[1:])


def _both_directions(mode, x, hx, weights, has_biases):
    """One layer, both directions (if two), in one fused call."""
    flat_weights = [w for direction in weights for w in direction]
    return run_stack(mode, x, hx, flat_weights, has_biases=has_biases, num_layers=1, dropout=0.0, training=False,
                     bidirectional=len(weights) == 2)


def run_stack(mode, x, hx, flat_weights, *, has_biases, num_layers, dropout, training, bidirectional):
    """All ``num_layers`` layers of full-length sequences ``x`` (T, B, D) in one fused call.

    ``flat_weights`` is every layer's weights in torch's order (``nn.LSTM._flat_weights``);
    dropout between layers is torch's own. Returns ``(output, hx_n)`` like :func:`run_layer`.
    """
    _check_mode(mode)
    if hx is None:
        hx = _zero_state(mode, x, flat_weights[1], num_layers * (2 if bidirectional else 1))
    return _fused(mode, x, hx, flat_weights, has_biases=has_biases, num_layers=num_layers, dropout=dropout,
                  training=training, bidirectional=bidirectional)
