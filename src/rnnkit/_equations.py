"""The ``backend="equations"`` layers: one (bi)directional layer run from the gate equations.

The real steps of the batch are first put in packed order (:class:`rnnkit.packing.Packing`:
sorted longest first, time-major, padding left out). The reverse direction of a bidirectional
layer runs on each sequence read backwards from its own last element (not from the padding), and
its output is put back in forward time. Both directions go through one computation with a leading
direction dimension: the input projection :math:`W_{ih} x_t` of all real steps is one matrix product per
direction (and so is each of its gradients, on no padding row; :func:`rnnkit._gemm.project`, which takes the
faster of torch's two CPU products for float32), and only the recurrent part runs step by step, in
:mod:`rnnkit._recurrence`, stepping both directions at once.

Two paths compute each layer. The fast one above has a hand-written backward, which is not itself
differentiable. The reference one projects the input and loops :mod:`rnnkit._steps` over the packed steps in
plain torch operations, which autograd differentiates to any order and ``torch.func`` (vmap, jacrev) transforms.
The fast path runs by default; the reference path runs where the fast one cannot: under a ``torch.func``
transform, for kinds without a fast path (the Elman RNN), and for the backward of a backward (a gradient
penalty's ``create_graph=True``), which :class:`_TwiceDifferentiable` recomputes with it.

Shapes: dirs directions, T time steps, B sequences, N real steps (sum of lengths), D input features, H hidden
units, H_out = proj_size or H.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _gemm, _recurrence, _steps
from ._kinds import KINDS, Kind

__all__ = ["run_packed", "transformed"]


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
    reverse direction's rows read backwards (:meth:`rnnkit.packing.Packing.reverse`): one product per
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


# The reference paths: ``step`` is the kind's :attr:`rnnkit._kinds.Kind.step`, looped by :func:`_loop`.


def _reference_lstm(step, x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, rest = _by_direction(weights, has_biases)
    xg = _reference_project(x, packing, w_ih, [b_ih, b_hh] if has_biases else [])  # (dirs, N, 4H)
    w_hh, w_hr = _stack(w_hh), _stack(rest[0]) if rest else None
    return _loop(lambda xg_t, h, c: step(xg_t, h, c, w_hh, None, w_hr), xg, packing, state)


def _reference_gru(step, x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, _ = _by_direction(weights, has_biases)
    xg = _reference_project(x, packing, w_ih, [b_ih] if has_biases else [])  # (dirs, N, 3H)
    w_hh, b_hh = _stack(w_hh), _rows(b_hh) if has_biases else None
    return _loop(lambda xg_t, h: (step(xg_t, h, w_hh, b_hh),), xg, packing, state)


def _reference_rnn(step, x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, _ = _by_direction(weights, has_biases)
    xg = _reference_project(x, packing, w_ih, [b_ih, b_hh] if has_biases else [])  # (dirs, N, H)
    w_hh = _stack(w_hh)
    return _loop(lambda xg_t, h: (step(xg_t, h, w_hh, None),), xg, packing, state)


def _reference_layernorm_lstm(step, x, packing, state, weights, has_biases):
    w_ih, w_hh, b_ih, b_hh, rest = _by_direction(weights, has_biases)
    ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias = (_rows(p) for p in rest)
    shift = ln_ih_bias + ln_hh_bias + (_rows(b_ih) + _rows(b_hh) if has_biases else 0)  # (dirs, 1, 4H)
    xg = _steps.layer_norm(_reference_project(x, packing, w_ih, []), ln_ih_weight, shift, _EPS)  # (dirs, N, 4H)
    w_hh = _stack(w_hh)
    return _loop(lambda xg_t, h, c: step(xg_t, h, c, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, _EPS), xg, packing,
                 state)


def _rows(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One (G,) vector per direction -> (dirs, 1, G), broadcasting over a step's rows."""
    return _stack(tensors).unsqueeze(1)


def _reference_project(x, packing, w_ih, biases):
    """x (N, D) @ w_ih[d]^T + the sum of ``biases`` -> (dirs, N, G) in plain torch operations, the reverse
    direction's rows read backwards (as :func:`_project` does)."""
    if len(w_ih) == 2:
        x = torch.stack([x, x.index_select(0, packing.reversal(x.device))])  # (2, N, D)
    xg = torch.matmul(x, _stack(w_ih).transpose(1, 2))  # (dirs, N, G)
    return sum((_rows(b) for b in biases), xg)


def _loop(step, xg, packing, state):
    """``step(xg_t, *state_t) -> new state`` (the output first) over the packed steps of ``xg`` (dirs, N, G),
    from ``state`` (dirs, B, ·) in batch order, in plain torch operations. Returns ``(out, *finals)`` like
    the ``packed_*`` recurrences: out (dirs, N, P) packed, the finals (dirs, B, ·) in batch order.

    Sequences are sorted longest first, so the n_t running at step t are the first n_t rows of the state;
    the rows after them have ended, and keep their last state to the end.
    """
    if packing.order is not None:
        state = tuple(s.index_select(1, packing.order) for s in state)  # sorted
    outs = []
    for xg_t in xg.split(packing.batch_sizes, 1):  # (dirs, n_t, G) each
        n = xg_t.shape[1]
        new = step(xg_t, *(s[:, :n] for s in state))
        outs.append(new[0])
        state = tuple(torch.cat([a, s[:, n:]], 1) for a, s in zip(new, state))
    out = torch.cat(outs, 1) if outs else state[0][:, :0]  # (dirs, N, P)
    if packing.order is not None:
        state = tuple(s.index_select(1, packing.inverse) for s in state)
    return (out, *state)


class _Recurrence(NamedTuple):
    """A kind's two implementations of one layer, ``(x, packing, state, weights, has_biases) -> (out, *finals)``:
    ``fast`` with its hand-written backward (None: the kind has none), ``reference`` in plain torch operations,
    which autograd differentiates to any order and ``torch.func`` transforms."""

    kind: Kind
    fast: Callable | None
    reference: Callable


def _paths(mode: str, fast: Callable | None, reference: Callable) -> _Recurrence:
    """The :class:`_Recurrence` of ``mode``, its reference path given the kind's step."""
    return _Recurrence(KINDS[mode], fast, partial(reference, KINDS[mode].step))


_EPS = 1e-5  # the LayerNorm-LSTM's layer-norm epsilon, as in its cell
_RECURRENCES = {
    "LSTM": _paths("LSTM", _lstm, _reference_lstm),
    "GRU": _paths("GRU", _gru, _reference_gru),
    "RNN_TANH": _paths("RNN_TANH", None, _reference_rnn),
    "RNN_RELU": _paths("RNN_RELU", None, _reference_rnn),
    "LayerNormLSTM": _paths("LayerNormLSTM", _layernorm_lstm, _reference_layernorm_lstm),
}


class _TwiceDifferentiable(torch.autograd.Function):
    """One layer on the fast path, whose backward is the hand-written one, unless the backward is itself being
    recorded (``create_graph=True``, e.g. a gradient penalty): then the layer is recomputed with the reference
    path from the same inputs and that is differentiated, so the gradient can be differentiated again.

    The fast path runs inside ``forward`` on detached copies of the inputs, under ``enable_grad``; its outputs
    are saved for backward, so their graph lives exactly as long as this node's saved tensors do.
    """

    @staticmethod
    def forward(ctx, recurrence, packing, has_biases, num_states, x, *tensors):
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in (x, *tensors)]
        with torch.enable_grad():
            outputs = recurrence.fast(leaves[0], packing, *_split(leaves[1:], num_states), has_biases)
        ctx.recurrence, ctx.packing, ctx.has_biases, ctx.num_states = recurrence, packing, has_biases, num_states
        ctx.leaves = leaves
        ctx.save_for_backward(x, *tensors, *outputs)
        return tuple(out.detach() for out in outputs)

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        inputs, outputs = saved[: len(ctx.leaves)], saved[len(ctx.leaves) :]
        # Recorded (create_graph) or batched (vmap over the backward, as in jacobians): differentiate the
        # reference path, whose backward is made of torch's own differentiable, batchable operations.
        if torch.is_grad_enabled() or transformed(grads):
            with torch.enable_grad():
                outputs = ctx.recurrence.reference(inputs[0], ctx.packing, *_split(inputs[1:], ctx.num_states),
                                                   ctx.has_biases)
            wrt = inputs
        else:
            wrt = ctx.leaves
        wanted = [i for i, t in enumerate(wrt) if t.requires_grad]
        found = torch.autograd.grad(outputs, [wrt[i] for i in wanted], grads, retain_graph=True,
                                    create_graph=torch.is_grad_enabled(), allow_unused=True)
        result = [None] * len(wrt)
        for i, grad in zip(wanted, found):
            result[i] = grad
        return (None, None, None, None, *result)


def _split(tensors, num_states: int):
    """The flat ``[*state, *weights]`` of :class:`_TwiceDifferentiable` -> ``state, weights`` (one list per
    direction, each the same length)."""
    state, flat = tuple(tensors[:num_states]), list(tensors[num_states:])
    dirs = state[0].shape[0]
    per = len(flat) // dirs
    return state, [flat[d * per : (d + 1) * per] for d in range(dirs)]


def transformed(tensors) -> bool:
    """Whether a vmap or another ``torch.func`` transform is running over ``tensors``: custom autograd functions
    with in-place kernels, like the fast path's, cannot run on their batched tensors (torch offers no public
    query for this, hence the private one)."""
    return torch._C._are_functorch_transforms_active() or any(
        torch._C._functorch.is_legacy_batchedtensor(t) for t in tensors)


def _recorded(tensors) -> bool:
    """Whether autograd records an operation on ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def run_packed(mode, x, packing, hx, weights, *, has_biases):
    """Run one layer of ``mode`` ("LSTM", "GRU", "RNN_TANH", "RNN_RELU" or "LayerNormLSTM") over the real steps
    ``x`` (N, D), in the packed order of ``packing`` (a :class:`rnnkit.packing.Packing`).

    ``weights`` holds one list per direction in torch's order ``[w_ih, w_hh, b_ih, b_hh, w_hr]``
    (the LayerNorm-LSTM appends its six layer-norm gains and shifts); ``hx`` is None (zero
    state) or ``(h0,)`` / ``(h0, c0)`` shaped (dirs, B, ·) in batch order. Returns ``output``
    (N, dirs * H_out) in packed order and ``hx_n`` like ``hx`` with the states at each sequence's
    last real step (the initial state for length 0).

    The fast path (a hand-written backward) runs unless only the reference path can: under a ``torch.func``
    transform (vmap, grad, jacrev...), whose wrapped tensors custom autograd functions do not take, and for kinds
    without a fast path. Both are differentiable to any order (see :class:`_TwiceDifferentiable`).
    """
    if mode not in _RECURRENCES:
        raise ValueError(f"mode must be one of {sorted(_RECURRENCES)}, got {mode!r}")
    recurrence, dirs = _RECURRENCES[mode], len(weights)
    state = recurrence.kind.zero_state_for(weights[0][1], dirs, packing.B) if hx is None else hx
    tensors = [x, *state, *(w for direction in weights for w in direction)]
    if recurrence.fast is None or transformed(tensors):
        out, *finals = recurrence.reference(x, packing, state, weights, has_biases)
    elif _recorded(tensors):
        out, *finals = _TwiceDifferentiable.apply(recurrence, packing, has_biases, len(state), *tensors)
    else:
        out, *finals = recurrence.fast(x, packing, state, weights, has_biases)  # out (dirs, N, H_out)
    output = out[0] if dirs == 1 else torch.cat([out[0], packing.reverse(out[1])], -1)  # (N, dirs * H_out)
    return output, tuple(finals)  # each (dirs, B, ·)
