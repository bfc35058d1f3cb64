"""The ``backend="equations"`` layers: one (bi)directional layer run from the gate equations.

The real steps of the batch are first put in packed order (:class:`rnnkit._packing.Packing`:
sorted longest first, time-major, padding left out). The reverse direction of a bidirectional
layer runs on each sequence read backwards from its own last element (not from the padding), and
its output is put back in forward time. Both directions go through one computation with a leading
direction dimension: the input projection :math:`W_{ih} x_t` of all real steps is one matrix product per
direction (and so is each of its gradients, on no padding row; :func:`rnnkit._gemm.project`, which takes the
faster of torch's two CPU products for float32), and only the recurrent part runs step by step, in
:mod:`rnnkit._recurrence`, stepping both directions at once.

Shapes: dirs directions, T time steps, B sequences, N real steps (sum of lengths), D input features, H hidden
units, H_out = proj_size or H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _gemm, _recurrence

__all__ = ["run_packed"]


def _by_direction(weights: list[list[torch.Tensor]], has_biases: bool):
    """Per-direction ``[w_ih, w_hh, (b_ih, b_hh), *rest]`` -> ``w_ih, w_hh, b_ih, b_hh, rest``, each a tuple
    with one tensor per direction (``rest`` a list of such tuples); biases None if absent."""
    columns = list(zip(*weights))
    b_ih, b_hh = columns[2:4] if has_biases else (None, None)
    return columns[0], columns[1], b_ih, b_hh, columns[4 if has_biases else 2 :]


def _stack(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One tensor per direction -> (dirs, ...), the recurrences' layout."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _project(x, packing, w_ih, biases):
    """x (N, D) @ w_ih[d]^T [+ biases[d]] for each direction's w_ih[d] (G, D), bias (G,) -> (dirs, N, G), the
    reverse direction's rows read backwards (:meth:`rnnkit._packing.Packing.reverse`): one product per
    direction over every real step (:func:`rnnkit._gemm.project`)."""
    reverse = packing.reversal(x.device) if len(w_ih) == 2 else None
    return _gemm.project(x, w_ih, biases, reverse)


def _lstm(x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, rest = _by_direction(weights, has_biases)
    biases = [b + c for b, c in zip(b_ih, b_hh)] if has_biases else None
    xg = _project(x, packing, w_ih, biases)  # (dirs, N, 4H)
    return _recurrence.packed_lstm(xg, packing, *state, _stack(w_hh), _stack(rest[0]) if rest else None)


def _gru(x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, _ = _by_direction(weights, has_biases)
    xg = _project(x, packing, w_ih, b_ih)  # (dirs, N, 3H)
    return _recurrence.packed_gru(xg, packing, *state, _stack(w_hh), _stack(b_hh) if has_biases else None)


def _layernorm_lstm(x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, rest = _by_direction(weights, has_biases)
    ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias = rest
    # every constant term of the gates, LN_hh's shift included, goes into LN_ih's shift, so that the
    # layer norm adds it in its own kernel: one (4H,) shift per direction
    terms = (ln_ih_bias, ln_hh_bias, b_ih, b_hh) if has_biases else (ln_ih_bias, ln_hh_bias)
    shifts = [sum(column) for column in zip(*terms)]
    projected = _project(x, packing, w_ih, None)  # (dirs, N, 4H)
    G = projected.shape[-1]
    if len(shifts) == 1:  # on the whole tensor: splitting it up costs a copy of its gradient
        xg = F.layer_norm(projected, (G,), ln_ih_weight[0], shifts[0])
    else:
        xg = torch.stack([F.layer_norm(p, (G,), w, b) for p, w, b in zip(projected, ln_ih_weight, shifts)])
    recurrent = (_stack(w) for w in (w_hh, ln_hh_weight, ln_c_weight, ln_c_bias))
    return _recurrence.packed_layernorm_lstm(xg, packing, *state, *recurrent)


_RECURRENCES = {"LSTM": (_lstm, 4), "GRU": (_gru, 3), "LayerNormLSTM": (_layernorm_lstm, 4)}


def _zero_state(mode: str, x: torch.Tensor, w_hh: torch.Tensor, dirs: int, B: int) -> tuple[torch.Tensor, ...]:
    """``(h0,)`` (dirs, B, H_out) for a GRU, ``(h0, c0)`` with c0 (dirs, B, H) for the LSTM kinds."""
    num_gates = _RECURRENCES[mode][1]
    H, H_out = w_hh.shape[0] // num_gates, w_hh.shape[1]  # w_hh: (G*H, H_out)
    h0 = x.new_zeros(dirs, B, H_out)
    return (h0,) if mode == "GRU" else (h0, x.new_zeros(dirs, B, H))


def run_packed(mode, x, packing, hx, weights, *, has_biases):
    """Run one layer of ``mode`` ("LSTM", "GRU" or "LayerNormLSTM") over the real steps ``x`` (N, D), in
    the packed order of ``packing`` (a :class:`rnnkit._packing.Packing`).

    ``weights`` holds one list per direction in torch's order ``[w_ih, w_hh, b_ih, b_hh, w_hr]``
    (the LayerNorm-LSTM appends its six layer-norm gains and shifts); ``hx`` is None (zero
    state) or ``(h0,)`` / ``(h0, c0)`` shaped (dirs, B, ·) in batch order. Returns ``output``
    (N, dirs * H_out) in packed order and ``hx_n`` like ``hx`` with the states at each sequence's
    last real step (the initial state for length 0).
    """
    if mode not in _RECURRENCES:
        raise ValueError(f"mode must be one of {sorted(_RECURRENCES)}, got {mode!r}")
    recurrence, dirs = _RECURRENCES[mode][0], len(weights)
    state = _zero_state(mode, x, weights[0][1], dirs, packing.B) if hx is None else hx
    out, *finals = recurrence(x, packing, state, weights, has_biases)  # out (dirs, N, H_out)
    output = out[0] if dirs == 1 else torch.cat([out[0], packing.reverse(out[1])], -1)  # (N, dirs * H_out)
    return output, tuple(finals)  # each (dirs, B, ·)
