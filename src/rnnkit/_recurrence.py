"""Time loops of the LSTM, GRU and LayerNorm-LSTM recurrences, with a hand-written backward.

The caller projects the input for all steps at once (one big matmul, differentiated by autograd);
these functions run only the sequential part. Each sequence starts at t = 0 and has ``lengths[b]``
real steps: the output is 0 past each length and the final state is the one at each sequence's
last real step (the initial state for length 0).

The ``packed_*`` functions consume that projection ``xg``: its buffer becomes the one the forward keeps
the gate activations in (each step's pre-activations are read once, then overwritten in place), which
saves a buffer as large as the projection and a copy of each step's block. The callers pass a projection
made for the call and used for nothing else.

Directions. Every tensor carries a leading direction dimension: ``xg`` (dirs, N, G), states
(dirs, B, ·), weights (dirs, ·, ·). The two directions of a bidirectional layer have the same
n_t at every step (the reverse direction runs each sequence backwards from its own end, so it
too has the sequences longer than t at step t), which lets one loop step both of them with one
batched matmul (``bmm``) and one set of elementwise kernels: per-step overhead is paid once.

Packed order. The loops never touch padding. The sequences are sorted longest first and their real
steps laid out time-major, as in torch's ``PackedSequence``: the n_t sequences still running at
step t are the first n_t rows of the state and one contiguous block of n_t rows in every (dirs, N, ·)
buffer, so each step's matmul and elementwise work shrink with n_t. That matters for ragged
batches of short sequences (the speaker tracks of ``SpeakerHistoryFusion`` are mostly padding).
:class:`rnnkit.packing.Packing` converts between the padded (T, B, ·) and the packed (N, ·) layouts; the
``*_recurrence`` functions take the padded layout of one direction, the ``packed_*`` ones the packed
layout with the direction dimension (so that
:mod:`rnnkit._equations` projects only the real input steps).

Why a hand-written backward: autograd would record ~15 nodes per step and replay as many small
kernels backwards. Here the forward stores the gate activations in (dirs, N, G) buffers; the
backward walks back in time writing the gate gradients into one (dirs, N, G) buffer, in place and
in cache, and then gets dW_hh (and dW_hr) from ONE batched matmul over all N rows. Per-step views
of every buffer are made once by ``split`` along dim 1 so the loops spend their time in kernels,
not in Python indexing. The LayerNorm-LSTM's backward has more per-step temporaries: they are
(dirs, B, ·) scratch reused at every step (:class:`_Rows`), and its dW_hh is summed step by step
from that scratch, which measured faster than new (dirs, N, ·) buffers: those are new memory on
every call, paid for in page faults.

Letters: dirs directions (1 or 2), T time, S steps run (the longest length), B batch, N real steps
in all (sum of lengths), n = n_t sequences running at step t, H hidden, P output size (H or
proj_size), G gates (4H or 3H).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.autograd.function import once_differentiable

from rnnkit.packing import Packing

__all__ = [
    "packed_lstm",
    "packed_gru",
    "packed_layernorm_lstm",
    "lstm_recurrence",
    "gru_recurrence",
    "layernorm_lstm_recurrence",
]


def _previous(state0: torch.Tensor, steps: tuple[torch.Tensor, ...], sizes: list[int]) -> list[torch.Tensor]:
    """Per step t, the (dirs, n_t, ·) state its rows start from: the first n_t rows of step t - 1's
    block (the running sequences lead, being sorted longest first), of ``state0`` at t = 0."""
    return [state0[:, :n] if t == 0 else steps[t - 1][:, :n] for t, n in enumerate(sizes)]


def _rows_of(state0: torch.Tensor, previous: list[torch.Tensor]) -> torch.Tensor:
    """The per-step states of :func:`_previous` as one (dirs, N, ·) tensor in packed order (the operand
    of the weight gradient dW_hh); ``state0`` gives the shape when there are no steps."""
    return torch.cat([state0[:, :0], *previous], 1)


def _take_final_(t: int, sizes: list[int], pairs) -> None:
    """Copy into each final state the rows whose last step is t (rows n_{t+1} .. n_t - 1)."""
    n, m = sizes[t], sizes[t + 1] if t + 1 < len(sizes) else 0
    if m < n:
        for final, step in pairs:
            final[:, m:n] = step[:, m:n]


def _start(state: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of an initial state, to become the final state in place."""
    return state.clone(memory_format=torch.contiguous_format)


def _transposed(w: torch.Tensor | None) -> torch.Tensor | None:
    """(dirs, a, b) -> a contiguous (dirs, b, a) copy: the per-step products ``state @ w^T`` run about 20%
    faster on it than on the transposed view, for the price of one copy per call."""
    return None if w is None else w.transpose(1, 2).contiguous()


def _steps(buf: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """The (dirs, n_t, ·) per-step views of a (dirs, N, ·) packed buffer."""
    return buf.split(sizes, 1)


class _LSTMGates:
    """Per-step views of a (dirs, N, 4H) buffer laid out [i, f, g, o]: ``all[t]``, ``i_f[t]``, ``i[t]``..."""

    def __init__(self, buf: torch.Tensor, sizes: list[int]):
        H = buf.shape[-1] // 4
        self.all, self.i_f = _steps(buf, sizes), _steps(buf[..., : 2 * H], sizes)
        self.i, self.f, self.g, self.o = (_steps(x, sizes) for x in buf.chunk(4, -1))


def _lstm_cell_(a: _LSTMGates, t: int, c_prev: torch.Tensor, c: torch.Tensor) -> None:
    """Activate step t's gates in place (sigmoid i, f, o; tanh g) and write c = f * c_prev + i * g."""
    a.i_f[t].sigmoid_()
    a.g[t].tanh_()
    a.o[t].sigmoid_()
    torch.mul(a.f[t], c_prev, out=c).addcmul_(a.i[t], a.g[t])


def _output_gate_grad_(a: _LSTMGates, d: _LSTMGates, t: int, dm, tc, du) -> None:
    """Backward of m = o * tc, tc = tanh(u): d(o pre-activation) into d.o[t], dLoss/du into du."""
    torch.mul(dm, a.o[t], out=du)
    torch.mul(du, tc, out=d.o[t])  # dm * o * tc
    du.addcmul_(d.o[t], tc, value=-1)  # dm * o * (1 - tc^2)
    d.o[t].addcmul_(d.o[t], a.o[t], value=-1)  # dm * tc * o * (1 - o)


def _cell_grad_(a: _LSTMGates, d: _LSTMGates, t: int, dc, c_prev, tmp) -> None:
    """Backward of c = f * c_prev + i * g: i, f, g pre-activation gradients into d; dc becomes dLoss/dc_prev."""
    torch.mul(dc, a.g[t], out=d.i[t])
    torch.mul(dc, c_prev, out=d.f[t])
    d.i_f[t].mul_(a.i_f[t]).addcmul_(d.i_f[t], a.i_f[t], value=-1)  # sigmoid' = s * (1 - s)
    torch.mul(dc, a.i[t], out=d.g[t])
    d.g[t].addcmul_(d.g[t], torch.mul(a.g[t], a.g[t], out=tmp), value=-1)  # tanh' = 1 - g^2
    dc.mul_(a.f[t])


class _LSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, sizes, h0, c0, w_hh, w_hr):
        dirs, N, G = xg.shape
        H, P = G // 4, h0.shape[-1]
        A = xg  # activated gates i, f, g, o, in place of their inputs
        h_all = xg.new_empty(dirs, N, P)  # state after each step: the output
        c_all = xg.new_empty(dirs, N, H)
        tc_all = xg.new_empty(dirs, N, H)  # tanh(c)
        m_all = xg.new_empty(dirs, N, H) if w_hr is not None else h_all  # o * tanh(c), before projection
        h_n, c_n = _start(h0), _start(c0)
        a = _LSTMGates(A, sizes)
        h, c, tc, m = (_steps(x, sizes) for x in (h_all, c_all, tc_all, m_all))
        h_prev, c_prev = _previous(h0, h, sizes), _previous(c0, c, sizes)
        w_hh_t, w_hr_t = _transposed(w_hh), _transposed(w_hr)  # (dirs, P, G), (dirs, H, P)
        for t in range(len(sizes)):
            a.all[t].baddbmm_(h_prev[t], w_hh_t)
            _lstm_cell_(a, t, c_prev[t], c[t])
            torch.mul(a.o[t], torch.tanh(c[t], out=tc[t]), out=m[t])
            if w_hr is not None:
                torch.bmm(m[t], w_hr_t, out=h[t])
            _take_final_(t, sizes, ((h_n, h[t]), (c_n, c[t])))
        ctx.sizes = sizes
        ctx.save_for_backward(h0, c0, w_hh, w_hr, A, h_all, c_all, tc_all, m_all)
        return h_all, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_n, d_c_n):
        h0, c0, w_hh, w_hr, A, h_all, c_all, tc_all, m_all = ctx.saved_tensors
        sizes, want_h0 = ctx.sizes, ctx.needs_input_grad[2]
        dxg = torch.empty_like(A)  # = gradient of the gate pre-activations
        dh_all = torch.empty_like(h_all)  # dLoss/dh of every step
        a, d = _LSTMGates(A, sizes), _LSTMGates(dxg, sizes)
        c_prev, tc = _previous(c0, _steps(c_all, sizes), sizes), _steps(tc_all, sizes)
        dh_step, d_o = _steps(dh_all, sizes), _steps(d_out, sizes)
        # dh, dc (dirs, B, ·): rows < n_t the gradient reaching step t from t + 1, the rest still the
        # final-state gradient (those sequences end at or before t).
        dh, dc = _start(d_h_n), _start(d_c_n)
        du, tmp, dm = (A.new_empty(dc.shape) for _ in range(3))
        for t in reversed(range(len(sizes))):
            n = sizes[t]
            dh_t = torch.add(dh[:, :n], d_o[t], out=dh_step[t])
            if w_hr is not None:
                dh_t = torch.bmm(dh_t, w_hr, out=dm[:, :n])
            _output_gate_grad_(a, d, t, dh_t, tc[t], du[:, :n])
            _cell_grad_(a, d, t, dc[:, :n].add_(du[:, :n]), c_prev[t], tmp[:, :n])
            if t > 0 or want_h0:
                torch.bmm(d.all[t], w_hh, out=dh[:, :n])
        h_prev = _rows_of(h0, _previous(h0, _steps(h_all, sizes), sizes))  # (dirs, N, P)
        d_w_hh = dxg.transpose(1, 2) @ h_prev  # (dirs, 4H, P)
        d_w_hr = dh_all.transpose(1, 2) @ m_all if w_hr is not None else None  # (dirs, P, H)
        return dxg, None, dh if want_h0 else None, dc, d_w_hh, d_w_hr


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, sizes, h0, w_hh, b_hh):
        dirs, N, G = xg.shape
        H = G // 3
        A = xg  # activated gates r, z, n, in place of their inputs
        HG = xg.new_empty(dirs, N, G)  # h W_hh^T + b_hh
        h_all = xg.new_empty(dirs, N, H)
        h_n = _start(h0)
        rz, (r, z, n) = _steps(A[..., : 2 * H], sizes), (_steps(x, sizes) for x in A.chunk(3, -1))
        hg, hg_rz, hg_n = (_steps(x, sizes) for x in (HG, HG[..., : 2 * H], HG[..., 2 * H :]))
        h = _steps(h_all, sizes)
        h_prev, w_hh_t = _previous(h0, h, sizes), _transposed(w_hh)  # w_hh_t (dirs, H, G)
        for t in range(len(sizes)):
            if b_hh is None:
                torch.bmm(h_prev[t], w_hh_t, out=hg[t])
            else:
                torch.baddbmm(b_hh[:, None], h_prev[t], w_hh_t, out=hg[t])
            rz[t].add_(hg_rz[t]).sigmoid_()
            n[t].addcmul_(r[t], hg_n[t]).tanh_()
            torch.sub(h_prev[t], n[t], out=h[t]).mul_(z[t]).add_(n[t])  # h = (1 - z) * n + z * h_prev
            _take_final_(t, sizes, ((h_n, h[t]),))
        ctx.sizes = sizes
        ctx.save_for_backward(h0, w_hh, b_hh, A, HG, h_all)
        return h_all, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_n):
        h0, w_hh, b_hh, A, HG, h_all = ctx.saved_tensors
        sizes, want_h0 = ctx.sizes, ctx.needs_input_grad[2]
        H = A.shape[-1] // 3
        dxg = torch.empty_like(A)
        dHG = torch.empty_like(A)  # gradient of h W_hh^T + b_hh
        r, z, n = (_steps(x, sizes) for x in A.chunk(3, -1))
        d_r, d_z, d_hn = (_steps(x, sizes) for x in dHG.chunk(3, -1))
        d_n = _steps(dxg[..., 2 * H :], sizes)  # gradient of n's pre-activation
        h_prev, hg_n = _previous(h0, _steps(h_all, sizes), sizes), _steps(HG[..., 2 * H :], sizes)
        dhg, d_o = _steps(dHG, sizes), _steps(d_out, sizes)
        dh = _start(d_h_n)  # (dirs, B, H) rows < n_t: gradient from step t + 1; the rest: final-state gradient
        through_z, tmp = A.new_empty(dh.shape), A.new_empty(dh.shape)
        for t in reversed(range(len(sizes))):
            k = sizes[t]
            dh_t = dh[:, :k].add_(d_o[t])
            torch.mul(dh_t, z[t], out=through_z[:, :k])  # through h = ... + z * h_prev
            torch.sub(dh_t, through_z[:, :k], out=d_n[t])
            d_n[t].addcmul_(d_n[t], torch.mul(n[t], n[t], out=tmp[:, :k]), value=-1)  # dh * (1 - z) * (1 - n^2)
            torch.mul(d_n[t], r[t], out=d_hn[t])
            torch.mul(d_n[t], hg_n[t], out=d_r[t]).mul_(r[t])
            d_r[t].addcmul_(d_r[t], r[t], value=-1)  # d_n * hn * r * (1 - r)
            torch.sub(h_prev[t], n[t], out=d_z[t]).mul_(dh_t).mul_(z[t])
            d_z[t].addcmul_(d_z[t], z[t], value=-1)  # dh * (h_prev - n) * z * (1 - z)
            if t > 0 or want_h0:
                torch.baddbmm(through_z[:, :k], dhg[t], w_hh, out=dh[:, :k])
        dxg[..., : 2 * H] = dHG[..., : 2 * H]
        d_w_hh = dHG.transpose(1, 2) @ _rows_of(h0, h_prev)  # (dirs, 3H, H)
        d_b_hh = dHG.sum(1) if b_hh is not None else None
        return dxg, None, dh if want_h0 else None, d_w_hh, d_b_hh


class _Rows:
    """(dirs, B, ·) scratch buffers reused at every step, handed out as their first n rows (the running
    sequences) with the views made once per distinct n rather than sliced again at every step."""

    def __init__(self, **buffers: torch.Tensor):
        self._buffers, self._views = buffers, {}

    def __call__(self, n: int) -> SimpleNamespace:
        if n not in self._views:
            self._views[n] = SimpleNamespace(**{name: b[:, :n] for name, b in self._buffers.items()})
        return self._views[n]


def _layer_norm_grad_(dy, weight, xhat, s1, s2, out):
    """dLoss/dx / rstd of y = xhat * weight + bias, xhat = (x - mean) * rstd, for rows of (dirs, n, K), into
    ``out``, given the row means s1 = -mean(dy w) and s2 = -mean(dy w xhat) (dirs, n, 1); ``weight`` is
    (dirs, 1, K). dx = rstd * (dy w + s1 + xhat s2): the caller applies rstd where it puts the result."""
    return torch.addcmul(s1, dy, weight, out=out).addcmul_(xhat, s2)


class _LayerNormLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, sizes, h0, c0, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, eps):
        dirs, N, G = xg.shape
        H = G // 4
        A = xg  # activated gates i, f, g, o, in place of their inputs
        # LN_hh's and LN_c's normalised inputs, (dirs, n, 4H) and (dirs, n, H) per step, and their 1/std,
        # (dirs, n, 1): kept as layer_norm returns them, since copying them into one buffer costs more
        # than it saves
        xhat_hh, xhat_c, rstd_hh, rstd_c = [], [], [], []
        h_all = xg.new_empty(dirs, N, H)
        c_all = xg.new_empty(dirs, N, H)
        tc_all = xg.new_empty(dirs, N, H)  # tanh(LN_c(c))
        h_n, c_n = _start(h0), _start(c0)
        a, WH = _LSTMGates(A, sizes), xg.new_empty(dirs, h0.shape[1], G)
        h, c, tc = (_steps(x, sizes) for x in (h_all, c_all, tc_all))
        h_prev, c_prev = _previous(h0, h, sizes), _previous(c0, c, sizes)
        w_hh_t = _transposed(w_hh)  # (dirs, H, G)
        # (dirs, 1, 4H) and (dirs, 1, H) views of the layer-norm gains and LN_c's shift, broadcast over the rows
        gain_hh, gain_c, shift_c = (w[:, None] for w in (ln_hh_weight, ln_c_weight, ln_c_bias))
        for t, n in enumerate(sizes):
            xhat, _, rstd = torch.native_layer_norm(torch.bmm(h_prev[t], w_hh_t, out=WH[:, :n]), [G], None, None, eps)
            xhat_hh.append(xhat)
            rstd_hh.append(rstd)
            a.all[t].addcmul_(xhat, gain_hh)  # xg + LN_hh(h W_hh^T), its shift being in xg
            _lstm_cell_(a, t, c_prev[t], c[t])
            xhat, _, rstd = torch.native_layer_norm(c[t], [H], None, None, eps)
            xhat_c.append(xhat)
            rstd_c.append(rstd)
            torch.addcmul(shift_c, xhat, gain_c, out=tc[t]).tanh_()
            torch.mul(a.o[t], tc[t], out=h[t])
            _take_final_(t, sizes, ((h_n, h[t]), (c_n, c[t])))
        ctx.sizes = sizes
        ctx.save_for_backward(
            h0, c0, w_hh, ln_hh_weight, ln_c_weight, A, h_all, c_all, tc_all, *xhat_hh, *xhat_c, *rstd_hh, *rstd_c
        )
        return h_all, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_n, d_c_n):
        sizes, want_h0 = ctx.sizes, ctx.needs_input_grad[2]
        saved, S = ctx.saved_tensors, len(sizes)
        k = len(saved) - 4 * S  # the tensors saved once, then four per step
        h0, c0, w_hh, ln_hh_w, ln_c_w, A, h_all, c_all, tc_all = saved[:k]
        xhat_hh, xhat_c, rstd_hh, rstd_c = (saved[k + i * S : k + (i + 1) * S] for i in range(4))
        dirs, G = A.shape[0], A.shape[-1]
        H, B = G // 4, d_h_n.shape[1]
        dxg = torch.empty_like(A)  # = gradient of the gates = of LN_hh's output
        d_w_hh = A.new_zeros(w_hh.shape)  # (dirs, 4H, H), summed step by step while dWH is in cache
        # LN_c's output gradient dY_c and dY_c * xhat_c are one (2 dirs, B, H) tensor, so that one batched
        # matmul makes both row means of LN_c's backward and one add sums both over the rows (for LN_c's
        # shift and gain); dY_hh * xhat_hh is only summed (for LN_hh's gain). Every per-step tensor of the
        # backward is such (·, B, ·) scratch, reused at every step, rather than new (dirs, N, ·) memory.
        pair_c, pair_means = A.new_empty(2 * dirs, B, H), A.new_empty(2 * dirs, B, 1)
        dyx_hh = A.new_empty(dirs, B, G)
        sum_pair_c, sum_dyx_hh = torch.zeros_like(pair_c), torch.zeros_like(dyx_hh)
        dh, dc = _start(d_h_n), _start(d_c_n)  # as in _LSTM.backward
        rows = _Rows(
            dh=dh, dc=dc, pair_c=pair_c, dY_c=pair_c[:dirs], dyx_c=pair_c[dirs:],
            sum_pair_c=sum_pair_c, pair_means=pair_means, s1_c=pair_means[:dirs], s2_c=pair_means[dirs:],
            dyx_hh=dyx_hh, sum_dyx_hh=sum_dyx_hh, s1_hh=A.new_empty(dirs, B, 1), s2_hh=A.new_empty(dirs, B, 1),
            dWH=A.new_empty(dirs, B, G), dc_ln=A.new_empty(dirs, B, H), tmp=A.new_empty(dirs, B, H),
        )  # dWH: gradient of h W_hh^T
        a, d = _LSTMGates(A, sizes), _LSTMGates(dxg, sizes)
        c_prev, d_o = _previous(c0, _steps(c_all, sizes), sizes), _steps(d_out, sizes)
        tc, h_prev = _steps(tc_all, sizes), _previous(h0, _steps(h_all, sizes), sizes)
        # -w / K as (dirs, K, 1) matrices: row means as matmuls; LN_c's twice over, for its pair
        neg_mean_hh, neg_mean_c = -ln_hh_w[..., None] / G, (-ln_c_w[..., None] / H).repeat(2, 1, 1)
        gain_hh, gain_c = ln_hh_w[:, None], ln_c_w[:, None]  # (dirs, 1, G), (dirs, 1, H)
        for t in reversed(range(len(sizes))):
            r = rows(sizes[t])
            dh_t = r.dh.add_(d_o[t])
            _output_gate_grad_(a, d, t, dh_t, tc[t], r.dY_c)
            torch.mul(r.dY_c, xhat_c[t], out=r.dyx_c)
            torch.bmm(r.pair_c, neg_mean_c, out=r.pair_means)
            r.sum_pair_c.add_(r.pair_c)
            _layer_norm_grad_(r.dY_c, gain_c, xhat_c[t], r.s1_c, r.s2_c, r.dc_ln)
            _cell_grad_(a, d, t, r.dc.addcmul_(r.dc_ln, rstd_c[t]), c_prev[t], r.tmp)
            torch.bmm(d.all[t], neg_mean_hh, out=r.s1_hh)
            torch.bmm(torch.mul(d.all[t], xhat_hh[t], out=r.dyx_hh), neg_mean_hh, out=r.s2_hh)
            r.sum_dyx_hh.add_(r.dyx_hh)
            _layer_norm_grad_(d.all[t], gain_hh, xhat_hh[t], r.s1_hh, r.s2_hh, r.dWH).mul_(rstd_hh[t])
            if t > 0 or want_h0:
                torch.bmm(r.dWH, w_hh, out=r.dh)
            d_w_hh.baddbmm_(r.dWH.transpose(1, 2), h_prev[t])
        d_ln_c_bias, d_ln_c_weight = sum_pair_c.sum(1).chunk(2)
        return dxg, None, dh if want_h0 else None, dc, d_w_hh, sum_dyx_hh.sum(1), d_ln_c_weight, d_ln_c_bias, None


def packed_lstm(xg, packing, h0, c0, w_hh, w_hr=None):
    """LSTM loop over packed ``xg`` (dirs, N, 4H) = x W_ih^T + b_ih + b_hh, gates i, f, g, o, in the order
    of ``packing``; h0 (dirs, B, P), c0 (dirs, B, H) in batch order, w_hh (dirs, 4H, P). Returns out
    (dirs, N, P) packed, h_n (dirs, B, P), c_n (dirs, B, H); with ``w_hr`` (dirs, P, H),
    h = (o * tanh(c)) W_hr^T. ``xg`` is overwritten (see the module docstring).
    """
    out, h_n, c_n = _LSTM.apply(xg, packing.batch_sizes, packing.sort(h0), packing.sort(c0), w_hh, w_hr)
    return out, packing.unsort(h_n), packing.unsort(c_n)


def packed_gru(xg, packing, h0, w_hh, b_hh=None):
    """GRU loop over packed ``xg`` (dirs, N, 3H) = x W_ih^T + b_ih, gates r, z, n; h0 (dirs, B, H) in batch
    order, w_hh (dirs, 3H, H), b_hh (dirs, 3H).

    n = tanh(xg_n + r * (h W_hn^T + b_hn)), h = (1 - z) * n + z * h_prev (torch's convention).
    Returns out (dirs, N, H) packed, h_n (dirs, B, H). ``xg`` is overwritten (see the module docstring).
    """
    out, h_n = _GRU.apply(xg, packing.batch_sizes, packing.sort(h0), w_hh, b_hh)
    return out, packing.unsort(h_n)


def packed_layernorm_lstm(xg, packing, h0, c0, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, eps=1e-5):
    """LayerNorm-LSTM loop (Ba et al. 2016, "Layer Normalization", sec. 3.1, eq. 20-22) over packed
    ``xg`` (dirs, N, 4H) = LN_ih(x W_ih^T) + b_ih + b_hh + LN_hh's shift; gates = xg + LN_hh(h W_hh^T)
    without that shift (the caller adds the constant terms once, for all steps);
    c = f * c_prev + i * g; h = o * tanh(LN_c(c)). The layer-norm gains are (dirs, 4H) and (dirs, H),
    LN_c's shift (dirs, H). Returns out (dirs, N, H) packed, h_n (dirs, B, H), c_n (dirs, B, H). ``xg`` is overwritten
    (see the module docstring).
    """
    out, h_n, c_n = _LayerNormLSTM.apply(xg, packing.batch_sizes, packing.sort(h0), packing.sort(c0), w_hh,
                                         ln_hh_weight, ln_c_weight, ln_c_bias, eps)
    return out, packing.unsort(h_n), packing.unsort(c_n)


def _padded(packed, xg, lengths, *args):
    """Run the ``packed`` loop on one direction of padded ``xg`` (T, B, G): every tensor argument gets a
    direction dimension of 1, the output is unpacked to (T, B, ·) and the final states are (B, ·)."""
    T, B = xg.shape[:2]
    packing = Packing(None if lengths is None else lengths.to(xg.device), T, B)
    args = [a.unsqueeze(0) if isinstance(a, torch.Tensor) else a for a in args]
    xg = packing.pack(xg).unsqueeze(0)
    if packing.order is None:  # then packing is a view of the caller's tensor, which the loop would overwrite
        xg = xg.clone()
    out, *finals = packed(xg, packing, *args)
    return (packing.unpack(out[0]), *(f[0] for f in finals))


def lstm_recurrence(xg, lengths, h0, c0, w_hh, w_hr=None):
    """LSTM loop over one direction. xg (T, B, 4H) = x W_ih^T + b_ih + b_hh, gates i, f, g, o;
    h0 (B, P), c0 (B, H). Returns out (T, B, P), h_n (B, P), c_n (B, H); with ``w_hr`` (P, H),
    h = (o * tanh(c)) W_hr^T.
    """
    return _padded(packed_lstm, xg, lengths, h0, c0, w_hh, w_hr)


def gru_recurrence(xg, lengths, h0, w_hh, b_hh=None):
    """GRU loop over one direction. xg (T, B, 3H) = x W_ih^T + b_ih, gates r, z, n; returns out (T, B, H),
    h_n (B, H).

    n = tanh(xg_n + r * (h W_hn^T + b_hn)), h = (1 - z) * n + z * h_prev (torch's convention).
    """
    return _padded(packed_gru, xg, lengths, h0, w_hh, b_hh)


def layernorm_lstm_recurrence(
    xg, lengths, h0, c0, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, eps=1e-5
):
    """LayerNorm-LSTM loop over one direction (Ba et al. 2016, "Layer Normalization", sec. 3.1, eq. 20-22).

    xg (T, B, 4H) = LN_ih(x W_ih^T) + b_ih + b_hh; gates = xg + LN_hh(h W_hh^T);
    c = f * c_prev + i * g; h = o * tanh(LN_c(c)). Returns out (T, B, H), h_n (B, H), c_n (B, H).
    """
    return _padded(packed_layernorm_lstm, xg + ln_hh_bias, lengths, h0, c0, w_hh, ln_hh_weight, ln_c_weight,
                   ln_c_bias, eps)
