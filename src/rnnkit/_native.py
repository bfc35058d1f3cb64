"""The ``backend="native"`` layers: torch's fused LSTM/GRU/RNN kernels, made exact with lengths.

``torch.lstm`` / ``torch.gru`` (the ops behind ``nn.LSTM``/``nn.GRU``: oneDNN on CPU float32,
cuDNN on GPU) are much faster than a Python time loop, but their padded form only knows padded
batches: every sequence runs for all T steps. We keep the padded batch and make the padding steps
do nothing.

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

Time chunks. Padding steps are exact but not free: one call runs all B sequences for all T steps,
so with lengths uniform in [T/4, T] about 40% of the work is padding. When that waste is large,
the batch is sorted by length (longest first) and time is cut into a few chunks at length
quantiles, ``0 = t_0 < t_1 < ... < t_k = max(lengths)``. Chunk j runs only the sequences still
running at its start, ``lengths > t_j``, which in the sorted batch are a prefix of it; their
``(h, c)`` at the chunk's end starts the next chunk. A sequence that ends inside a chunk is frozen
there by the padding flag, so its ``c`` at the chunk's end is its final ``c`` (and its ``h`` is
read from the output as above); it is not carried further. Outputs of sequences not in a chunk's
prefix are zero. The reverse direction reverses each sequence within its length first, so every
sequence starts at step 0 and the same chunks apply to it, with any initial state. Nothing in a
chunk differs from the single call but the steps and sequences it leaves out, which are padding,
so the result is the same up to the kernel's rounding on a smaller batch (float64: 1e-12).
Each call has a fixed cost, so the number of chunks minimises a cost model of the kernel (see
:func:`_chunk_bounds`); with lengths all near T it picks one chunk, the single call above.

Elman RNN. :math:`h_t = \\phi(W_{ih} x_t + W_{hh} h_{t-1} + b)` has no gate that a flag could
saturate to hold :math:`h`, so with lengths it runs the ops' packed form instead (:func:`run_packed`:
the real steps in packed order, what ``nn.RNN`` runs on a ``PackedSequence``), which is exact by
construction: every layer and direction in one call, each sequence read backwards from its own end.

Shapes: T time steps, B sequences, D input features, H hidden units, H_out = proj_size or H.
"""

from __future__ import annotations

from bisect import bisect_right

import torch

from ._kinds import Kind
from ._lengths import gather_last, permute, reverse_padded, reversed_steps, step_mask
from .packing import Packing

__all__ = ["run_layer", "run_stack", "run_packed"]

# Large enough that sigmoid(BIG + any real pre-activation) rounds to exactly 1.0 (and
# sigmoid(-BIG + ...) to exactly 0.0) in float32 and float64, oneDNN included.
_BIG = 1e4
# The cost model that picks the chunks, in units of one sequence-step of kernel work: a call of s
# steps on n sequences costs about s * (n + _STEP_COST) + _CALL_COST (torch.lstm forward and
# backward on CPU with D = H = 256, n from 4 to 64: per-step and per-call overheads).
_STEP_COST, _CALL_COST = 4, 50
_MAX_CHUNKS = 8


def _check_native(kind: Kind) -> None:
    if kind.native is None:
        raise ValueError(f"the native backend has no fused op for {kind.mode!r}")


def _fused(kind, inputs, hx, params, *, has_biases, num_layers=1, dropout=0.0, training=False, bidirectional=False):
    """One call of torch's fused op on ``inputs``: ``(x,)`` a time-major padded batch, or ``(data, batch_sizes)``
    packed rows; returns ``(output, hx_n)`` with ``hx_n`` a tuple like ``hx``."""
    padded = (False,) if len(inputs) == 1 else ()  # the padded op's batch_first argument
    output, *states = kind.native(*inputs, hx if kind.has_cell else hx[0], params, has_biases, num_layers, dropout,
                                  training, bidirectional, *padded)
    return output, tuple(states)


def _with_flag_column(kind, w_ih):
    """``w_ih`` (G*H, D) -> (G*H, D + 1), the last column saturating the kind's flag gates at padding steps."""
    H = w_ih.shape[0] // kind.num_gates
    column = w_ih.new_zeros(w_ih.shape[0], 1)
    for gate, sign in kind.flag_gates:
        column[gate * H : (gate + 1) * H] = sign * _BIG
    return torch.cat([w_ih, column], 1)


def run_layer(kind, x, lengths, hx, weights, *, has_biases, max_chunks=None):
    """Run one (uni- or bidirectional) layer of ``kind`` (one with :attr:`~rnnkit._kinds.Kind.flag_gates`) over ``x`` (T, B, D) with ``lengths``.

    ``weights`` holds one list per direction in torch's order ``[w_ih, w_hh, b_ih, b_hh, w_hr]``;
    ``hx`` is None (zero state) or ``(h0,)`` / ``(h0, c0)`` shaped (dirs, B, ·). Returns
    ``output`` (T, B, dirs * H_out), exactly 0 past each length, and ``hx_n`` like ``hx`` holding
    the states at each sequence's last real step (the initial state for length 0).
    ``lengths=None`` means every sequence is T steps long. ``max_chunks`` fixes the number of
    time chunks (at most; None: chosen by the cost model).
    """
    if not kind.flag_gates:
        raise ValueError(f"the padding flag needs a gate that holds the state, which {kind.mode!r} has not")
    dirs = len(weights)
    if lengths is None:
        return _both_directions(kind, x, hx, weights, has_biases)

    keep = step_mask(lengths, x.shape[0])[..., None].to(x.dtype)  # (T, B, 1), 0.0 at padding steps
    x = torch.cat([x * keep, 1 - keep], -1)  # (T, B, D + 1): the input zeroed and the flag
    weights = [[_with_flag_column(kind, direction[0]), *direction[1:]] for direction in weights]

    bounds = _chunk_bounds(lengths, max_chunks)
    if len(bounds) > 2:  # its output is already 0 at padding steps
        output, states = _run_chunked(kind, x, lengths, hx, weights, has_biases, bounds)
    elif hx is None or dirs == 1:
        output, states = _both_directions(kind, x, hx, weights, has_biases)
        output = output * keep
    else:
        # A nonzero initial state must meet each sequence's last element first, not the padding.
        out_f, states_f = _fused(kind, (x,), tuple(s[:1] for s in hx), weights[0], has_biases=has_biases)
        out_r, states_r = _fused(kind, (reverse_padded(x, lengths),), tuple(s[1:] for s in hx), weights[1],
                                 has_biases=has_biases)
        output = torch.cat([out_f, reverse_padded(out_r, lengths)], -1) * keep  # (T, B, 2 * H_out)
        states = tuple(torch.cat(pair) for pair in zip(states_f, states_r))

    # h_n from the output: the forward direction ends at lengths - 1, the reverse one at step 0.
    H_out = output.shape[-1] // dirs
    h_n = [gather_last(output[..., :H_out], lengths)]  # dirs x (B, H_out)
    if dirs == 2:
        h_n.append(output[0, :, H_out:])
    h_n = torch.stack(h_n)  # (dirs, B, H_out)
    if hx is not None:  # else the masked output already holds the zero initial state
        h_n = torch.where((lengths == 0)[:, None], hx[0], h_n)
    return output, (h_n, *states[1:])


def _chunk_bounds(lengths, max_chunks=None) -> list[int]:
    """Chunk boundaries ``[0, t_1, ..., max(lengths)]`` at quantiles of the nonzero lengths.

    With ``max_chunks`` None, tries 1 to ``_MAX_CHUNKS`` quantiles and keeps the cheapest under
    the cost model: the steps each chunk runs times the sequences still running at its start,
    plus the per-step and per-call overheads.
    """
    ascending = sorted(length for length in lengths.tolist() if length > 0)
    m = len(ascending)
    if m == 0:
        return [0]

    def bounds(k):
        return sorted({0, ascending[-1], *(ascending[j * m // k] for j in range(1, k))})

    def cost(b):
        return sum((stop - start) * (m - bisect_right(ascending, start) + _STEP_COST) + _CALL_COST
                   for start, stop in zip(b, b[1:]))

    if max_chunks is not None:
        return bounds(max_chunks)
    return min((bounds(k) for k in range(1, _MAX_CHUNKS + 1)), key=cost)


def _run_chunked(kind, x, lengths, hx, weights, has_biases, bounds):
    """Both directions of a flagged ``x`` (T, B, D + 1), in time chunks over the length-sorted batch."""
    T = x.shape[0]
    order = torch.argsort(lengths, descending=True, stable=True)  # (B,), longest first
    unsort = torch.argsort(order)
    x_sorted, sorted_lengths = permute(x, 1, order, unsort), lengths[order]
    if hx is None:
        hx = kind.zero_state_for(weights[0][1], len(weights), x.shape[1])
    hx = tuple(permute(s, 1, order, unsort) for s in hx)
    active = [int((sorted_lengths > t).sum()) for t in bounds]  # sequences running at each boundary, a prefix
    rows = _chunk_rows(bounds, active, sorted_lengths, T)[:, unsort]  # (T, B) in batch order

    outputs, finals = [], []
    for d, direction in enumerate(weights):
        # Reversed within its length, every sequence starts at step 0 and fits the same chunks.
        x_d = x_sorted if d == 0 else reverse_padded(x, sorted_lengths, order)  # sorted and reversed, one gather
        flat, states = _chunk_loop(kind, x_d, tuple(s[d : d + 1] for s in hx), direction, has_biases, bounds,
                                   active)
        # (T, B) row of flat at each position; the reverse direction's step t is its step lengths - 1 - t
        rows_d = rows if d == 0 else rows.gather(0, reversed_steps(lengths, T))
        # One gather makes the (T, B, H_out) output in batch order, in forward time, 0 at padding steps.
        outputs.append(flat.index_select(0, rows_d.view(-1)).view(T, len(lengths), -1))
        finals.append(states)
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)  # (T, B, dirs * H_out)
    return output, tuple(permute(torch.cat(pair), 1, unsort, order) for pair in zip(*finals))


def _chunk_rows(bounds, active, sorted_lengths, T):
    """(T, B) the row of :func:`_chunk_loop`'s flat output that holds step t of sorted sequence j; the
    index of its last, zero row where step t is padding."""
    B = sorted_lengths.shape[0]
    sizes = [(stop - start) * n for start, stop, n in zip(bounds, bounds[1:], active)]
    zero_row = sum(sizes)
    grid = torch.full((T, B), zero_row, dtype=torch.long, device=sorted_lengths.device)
    offset = 0
    for start, stop, n, size in zip(bounds, bounds[1:], active, sizes):
        grid[start:stop, :n] = torch.arange(offset, offset + size, device=grid.device).view(stop - start, n)
        offset += size
    return grid.masked_fill_(~step_mask(sorted_lengths, T), zero_row)  # chunks run padding steps too


def _chunk_loop(kind, x, hx, weights, has_biases, bounds, active):
    """One direction over sorted ``x`` (T, B, D + 1), one fused call per chunk on its active prefix.

    Returns the chunks' outputs flattened and stacked, (sum of chunk length x n, H_out), with a zero
    row last (see :func:`_chunk_rows`), and the final states (1, B, ·) in sorted order.
    """
    T = x.shape[0]
    state, outputs = hx, []
    finals = [tuple(s[:, active[0] :] for s in hx)]  # length 0: the initial state
    # Split, not sliced per chunk: the gradient of a slice is a zero tensor of x's full size.
    chunks = x.split([stop - start for start, stop in zip(bounds, bounds[1:])] + [T - bounds[-1]])
    for chunk, n, n_next in zip(chunks, active, active[1:]):
        out, state = _fused(kind, (chunk[:, :n],), tuple(s[:, :n] for s in state), weights,
                            has_biases=has_biases)  # (chunk length, n, H_out)
        outputs.append(out.reshape(-1, out.shape[-1]))
        finals.insert(0, tuple(s[:, n_next:] for s in state))  # the sequences that end in this chunk
    outputs.append(out.new_zeros(1, out.shape[-1]))
    return torch.cat(outputs), tuple(torch.cat(pieces, 1) for pieces in zip(*finals))


def _both_directions(kind, x, hx, weights, has_biases):
    """One layer, both directions (if two), in one fused call."""
    flat_weights = [w for direction in weights for w in direction]
    return run_stack(kind, x, hx, flat_weights, has_biases=has_biases, num_layers=1, dropout=0.0, training=False,
                     bidirectional=len(weights) == 2)


def run_stack(kind, x, hx, flat_weights, *, has_biases, num_layers, dropout, training, bidirectional):
    """All ``num_layers`` layers of full-length sequences ``x`` (T, B, D) in one fused call.

    ``flat_weights`` is every layer's weights in torch's order (``nn.LSTM._flat_weights``);
    dropout between layers is torch's own. Returns ``(output, hx_n)`` like :func:`run_layer`.
    """
    _check_native(kind)
    if hx is None:
        hx = kind.zero_state_for(flat_weights[1], num_layers * (2 if bidirectional else 1), x.shape[1])
    return _fused(kind, (x,), hx, flat_weights, has_biases=has_biases, num_layers=num_layers, dropout=dropout,
                  training=training, bidirectional=bidirectional)


def run_packed(kind, x, packing: Packing, hx, flat_weights, *, has_biases, num_layers, dropout, training,
               bidirectional):
    """All layers over the real steps ``x`` (N, D) in the packed order of ``packing``, in one call of torch's
    packed op (the one behind ``nn.LSTM`` on a ``PackedSequence``): exact with any lengths and any kind.

    ``hx`` is None (zeros) or states (L * dirs, B, ·) in batch order. Returns the output (N, dirs * H_out) in
    packed order and the final states in batch order; length-0 sequences, which the op does not see, keep
    their initial state.
    """
    _check_native(kind)
    dirs = 2 if bidirectional else 1
    if hx is None:
        hx = kind.zero_state_for(flat_weights[1], num_layers * dirs, packing.B)
    hx = tuple(packing.sort(s) for s in hx)
    n = packing.batch_sizes[0] if packing.batch_sizes else 0  # sequences with at least one step
    if n == 0:
        return x.new_zeros(0, dirs * flat_weights[1].shape[1]), tuple(packing.unsort(s) for s in hx)
    batch_sizes = torch.tensor(packing.batch_sizes)  # on the CPU, as the op requires
    output, states = _fused(kind, (x, batch_sizes), tuple(s[:, :n] for s in hx), flat_weights,
                            has_biases=has_biases, num_layers=num_layers, dropout=dropout, training=training,
                            bidirectional=bidirectional)
    return output, tuple(packing.unsort(torch.cat([s, init[:, n:]], 1)) for s, init in zip(states, hx))
