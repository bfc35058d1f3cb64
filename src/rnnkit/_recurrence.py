"""Time loops of the LSTM, GRU and LayerNorm-LSTM recurrences, with a hand-written backward.

The caller projects the input for all steps at once (one big matmul, differentiated by autograd);
these functions run only the sequential part. Each sequence starts at t = 0 and has ``lengths[b]``
real steps: at t >= lengths[b] the state is carried unchanged and the output is 0, so the final
state is the one at each sequence's last real step (the initial state for length 0). The loop
stops at S = max(lengths); steps before min(lengths) need no masking.

Why a hand-written backward: autograd would record ~15 nodes per step and replay as many small
kernels backwards. Here the forward stores the gate activations in (S, B, G) buffers; the backward
walks back in time writing the gate gradients into one (S, B, G) buffer, in place and in cache,
and then gets dW_hh (and dW_hr) from ONE matmul over all S*B rows. Per-step views of every buffer
are made once by ``unbind`` so the loops spend their time in kernels, not in Python indexing.

Letters: T time, S steps run, B batch, H hidden, P output size (H or proj_size), G gates (4H or 3H).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["lstm_recurrence", "gru_recurrence", "layernorm_lstm_recurrence"]


class _Steps:
    """Masks of a padded batch: ``S`` steps to run, the first ``full`` of them with every row active."""

    def __init__(self, xg: torch.Tensor, lengths: torch.Tensor | None):
        T, B = xg.shape[:2]
        if lengths is None or B == 0:
            self.S = self.full = T if B else 0
            lengths = torch.full((B,), self.S, device=xg.device)
        else:
            lengths = lengths.to(xg.device)
            self.S, self.full = torch.stack([lengths.max(), lengths.min()]).tolist()  # one host sync
        steps = torch.arange(self.S, device=xg.device)[:, None, None]  # (S, 1, 1)
        active = steps < lengths[:, None]  # (S, B, 1) bool
        self.keep = active.to(xg.dtype)  # (S, B, 1) 1 where t < lengths[b]
        self.active, self.keeps, self.drops = active.unbind(0), self.keep.unbind(0), (1 - self.keep).unbind(0)

    def carry_(self, t: int, new: torch.Tensor, old: torch.Tensor) -> None:
        """Forward: rows past their length keep the previous state."""
        torch.where(self.active[t], new, old, out=new)

    def split_(self, t: int, d_new: torch.Tensor, d_old: torch.Tensor) -> None:
        """Backward: rows past their length pass the state gradient straight to step t - 1."""
        d_old.addcmul_(d_new, self.drops[t])
        d_new.mul_(self.keeps[t])

    def output(self, h_all: torch.Tensor, T: int) -> torch.Tensor:
        """(T, B, P) output: the state after each real step, 0 past each length."""
        out = h_all.new_zeros(T, *h_all.shape[1:])
        torch.mul(h_all[1:], self.keep, out=out[: self.S])
        return out

    def state_grad(self, d_out: torch.Tensor, d_h_n: torch.Tensor) -> torch.Tensor:
        """(S+1, B, P) dLoss/d(state before step t), seeded with the output and final-state gradients."""
        dH = d_out.new_empty(self.S + 1, *d_h_n.shape)
        dH[0].zero_()
        torch.mul(d_out[: self.S], self.keep, out=dH[1:])
        dH[self.S].add_(d_h_n)
        return dH


def _input_grad(d_out: torch.Tensor, S: int, G: int) -> torch.Tensor:
    """(T, B, G) buffer for the gradient of xg; steps from S on never ran and get 0."""
    dxg = d_out.new_empty(d_out.shape[0], d_out.shape[1], G)
    dxg[S:].zero_()
    return dxg


class _LSTMGates:
    """Per-step views of an (S, B, 4H) buffer laid out [i, f, g, o]: ``all[t]``, ``i_f[t]``, ``i[t]``..."""

    def __init__(self, buf: torch.Tensor):
        H = buf.shape[-1] // 4
        self.all, self.i_f = buf.unbind(0), buf[..., : 2 * H].unbind(0)
        self.i, self.f, self.g, self.o = (x.unbind(0) for x in buf.chunk(4, -1))


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
    def forward(ctx, xg, lengths, h0, c0, w_hh, w_hr):
        T, B, G = xg.shape
        H, P = G // 4, h0.shape[1]
        st = _Steps(xg, lengths)
        A = xg.new_empty(st.S, B, G)  # activated gates i, f, g, o
        h_all = xg.new_empty(st.S + 1, B, P)  # state before step t at [t]
        c_all = xg.new_empty(st.S + 1, B, H)
        tc_all = xg.new_empty(st.S, B, H)  # tanh(c)
        m_all = xg.new_empty(st.S, B, H) if w_hr is not None else h_all[1:]  # o * tanh(c), before projection
        h_all[0], c_all[0] = h0, c0
        a, xs = _LSTMGates(A), xg.unbind(0)
        h, c, tc, m = (x.unbind(0) for x in (h_all, c_all, tc_all, m_all))
        w_hh_t = w_hh.t()
        for t in range(st.S):
            torch.addmm(xs[t], h[t], w_hh_t, out=a.all[t])
            _lstm_cell_(a, t, c[t], c[t + 1])
            torch.mul(a.o[t], torch.tanh(c[t + 1], out=tc[t]), out=m[t])
            if w_hr is not None:
                torch.mm(m[t], w_hr.t(), out=h[t + 1])
            if t >= st.full:
                st.carry_(t, h[t + 1], h[t])
                st.carry_(t, c[t + 1], c[t])
        ctx.steps = st
        ctx.save_for_backward(w_hh, w_hr, A, h_all, c_all, tc_all, m_all)
        return st.output(h_all, T), h_all[st.S].clone(), c_all[st.S].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_n, d_c_n):
        w_hh, w_hr, A, h_all, c_all, tc_all, m_all = ctx.saved_tensors
        st = ctx.steps
        S, B, G = A.shape
        H = G // 4
        dH = st.state_grad(d_out, d_h_n)
        dxg = _input_grad(d_out, S, G)  # = gradient of the gate pre-activations
        a, d = _LSTMGates(A), _LSTMGates(dxg[:S])
        dh, c, tc = dH.unbind(0), c_all.unbind(0), tc_all.unbind(0)
        dc = d_c_n.clone(memory_format=torch.contiguous_format)
        dc_pass, du, tmp, dm = (d_out.new_empty(B, H) for _ in range(4))
        for t in reversed(range(S)):
            if t >= st.full:
                st.split_(t, dh[t + 1], dh[t])
                st.split_(t, dc, dc_pass.zero_())
            if w_hr is not None:
                torch.mm(dh[t + 1], w_hr, out=dm)
            _output_gate_grad_(a, d, t, dh[t + 1] if w_hr is None else dm, tc[t], du)
            _cell_grad_(a, d, t, dc.add_(du), c[t], tmp)
            if t >= st.full:
                dc.add_(dc_pass)
            dh[t].addmm_(d.all[t], w_hh)
        d_w_hh = dxg[:S].flatten(0, 1).t() @ h_all[:S].flatten(0, 1)  # (4H, P)
        d_w_hr = None
        if w_hr is not None:
            d_w_hr = dH[1:].flatten(0, 1).t() @ m_all.flatten(0, 1)  # (P, H)
        return dxg, None, dH[0], dc, d_w_hh, d_w_hr


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, lengths, h0, w_hh, b_hh):
        T, B, G = xg.shape
        H = G // 3
        st = _Steps(xg, lengths)
        A = xg.new_empty(st.S, B, G)  # activated gates r, z, n
        HG = xg.new_empty(st.S, B, G)  # h W_hh^T + b_hh
        h_all = xg.new_empty(st.S + 1, B, H)
        h_all[0] = h0
        rz, (r, z, n) = A[..., : 2 * H].unbind(0), (x.unbind(0) for x in A.chunk(3, -1))
        x_rz, x_n = xg[..., : 2 * H].unbind(0), xg[..., 2 * H :].unbind(0)
        hg, hg_rz, hg_n = HG.unbind(0), HG[..., : 2 * H].unbind(0), HG[..., 2 * H :].unbind(0)
        h, w_hh_t = h_all.unbind(0), w_hh.t()
        for t in range(st.S):
            if b_hh is None:
                torch.mm(h[t], w_hh_t, out=hg[t])
            else:
                torch.addmm(b_hh, h[t], w_hh_t, out=hg[t])
            torch.add(x_rz[t], hg_rz[t], out=rz[t]).sigmoid_()
            torch.addcmul(x_n[t], r[t], hg_n[t], out=n[t]).tanh_()
            torch.sub(h[t], n[t], out=h[t + 1]).mul_(z[t]).add_(n[t])  # h = (1 - z) * n + z * h_prev
            if t >= st.full:
                st.carry_(t, h[t + 1], h[t])
        ctx.steps = st
        ctx.save_for_backward(w_hh, b_hh, A, HG, h_all)
        return st.output(h_all, T), h_all[st.S].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_n):
        w_hh, b_hh, A, HG, h_all = ctx.saved_tensors
        st = ctx.steps
        S, B, G = A.shape
        H = G // 3
        dH = st.state_grad(d_out, d_h_n)
        dxg = _input_grad(d_out, S, G)
        dHG = d_out.new_empty(S, B, G)  # gradient of h W_hh^T + b_hh
        r, z, n = (x.unbind(0) for x in A.chunk(3, -1))
        d_r, d_z, d_hn = (x.unbind(0) for x in dHG.chunk(3, -1))
        d_n = dxg[:S, :, 2 * H :].unbind(0)  # gradient of n's pre-activation
        dh, h, hg_n, dhg = dH.unbind(0), h_all.unbind(0), HG[..., 2 * H :].unbind(0), dHG.unbind(0)
        tmp = d_out.new_empty(B, H)
        for t in reversed(range(S)):
            if t >= st.full:
                st.split_(t, dh[t + 1], dh[t])
            dh[t].add_(torch.mul(dh[t + 1], z[t], out=tmp))  # through h = ... + z * h_prev
            torch.sub(dh[t + 1], tmp, out=d_n[t])
            d_n[t].addcmul_(d_n[t], torch.mul(n[t], n[t], out=tmp), value=-1)  # dh * (1 - z) * (1 - n^2)
            torch.mul(d_n[t], r[t], out=d_hn[t])
            torch.mul(d_n[t], hg_n[t], out=d_r[t]).mul_(r[t])
            d_r[t].addcmul_(d_r[t], r[t], value=-1)  # d_n * hn * r * (1 - r)
            torch.sub(h[t], n[t], out=d_z[t]).mul_(dh[t + 1]).mul_(z[t])
            d_z[t].addcmul_(d_z[t], z[t], value=-1)  # dh * (h_prev - n) * z * (1 - z)
            dh[t].addmm_(dhg[t], w_hh)
        dxg[:S, :, : 2 * H] = dHG[..., : 2 * H]
        d_w_hh = dHG.flatten(0, 1).t() @ h_all[:S].flatten(0, 1)  # (3H, H)
        d_b_hh = dHG.sum((0, 1)) if b_hh is not None else None
        return dxg, None, dH[0], d_w_hh, d_b_hh


def _layer_norm_grad_(dy, weight, neg_weight_mean, rstd, xhat, out, dy_xhat, s1, s2):
    """dLoss/dx of y = xhat * weight + bias, xhat = (x - mean) * rstd, for rows of (B, N), into out.

    dx = rstd * (dy w - mean(dy w) - xhat * mean(dy w xhat)); the row means are matmuls with
    ``neg_weight_mean`` = -w / N (N, 1). Also leaves dy * xhat in ``dy_xhat``, the summand of dLoss/dw.
    """
    torch.mm(dy, neg_weight_mean, out=s1)  # (B, 1)
    torch.mm(torch.mul(dy, xhat, out=dy_xhat), neg_weight_mean, out=s2)  # (B, 1)
    return torch.addcmul(s1, dy, weight, out=out).addcmul_(xhat, s2).mul_(rstd)


class _LayerNormLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, lengths, h0, c0, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, eps):
        T, B, G = xg.shape
        H = G // 4
        st = _Steps(xg, lengths)
        A = xg.new_empty(st.S, B, G)  # activated gates i, f, g, o
        xhat_hh_all = xg.new_empty(st.S, B, G)  # LN_hh's normalised input
        xhat_c_all = xg.new_empty(st.S, B, H)
        rstd_hh, rstd_c = [], []  # 1/std of LN_hh, LN_c: S tensors (B, 1)
        h_all = xg.new_empty(st.S + 1, B, H)
        c_all = xg.new_empty(st.S + 1, B, H)
        tc_all = xg.new_empty(st.S, B, H)  # tanh(LN_c(c))
        h_all[0], c_all[0] = h0, c0
        a, xs, WH = _LSTMGates(A), xg.unbind(0), xg.new_empty(B, G)
        h, c, tc, xhat_hh, xhat_c = (x.unbind(0) for x in (h_all, c_all, tc_all, xhat_hh_all, xhat_c_all))
        w_hh_t = w_hh.t()
        for t in range(st.S):
            xhat, _, rstd = torch.native_layer_norm(torch.mm(h[t], w_hh_t, out=WH), [G], None, None, eps)
            xhat_hh[t].copy_(xhat)
            rstd_hh.append(rstd)
            torch.addcmul(xs[t], xhat, ln_hh_weight, out=a.all[t]).add_(ln_hh_bias)  # xg + LN_hh(h W_hh^T)
            _lstm_cell_(a, t, c[t], c[t + 1])
            xhat, _, rstd = torch.native_layer_norm(c[t + 1], [H], None, None, eps)
            xhat_c[t].copy_(xhat)
            rstd_c.append(rstd)
            torch.addcmul(ln_c_bias, xhat, ln_c_weight, out=tc[t]).tanh_()
            torch.mul(a.o[t], tc[t], out=h[t + 1])
            if t >= st.full:
                st.carry_(t, h[t + 1], h[t])
                st.carry_(t, c[t + 1], c[t])
        rstd_hh, rstd_c = (torch.stack(r) if r else xg.new_empty(0, B, 1) for r in (rstd_hh, rstd_c))
        ctx.steps = st
        ctx.save_for_backward(
            w_hh, ln_hh_weight, ln_c_weight, A, xhat_hh_all, xhat_c_all, rstd_hh, rstd_c, h_all, c_all, tc_all
        )
        return st.output(h_all, T), h_all[st.S].clone(), c_all[st.S].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_n, d_c_n):
        w_hh, ln_hh_w, ln_c_w, A, xhat_hh_all, xhat_c_all, rstd_hh, rstd_c, h_all, c_all, tc_all = ctx.saved_tensors
        st = ctx.steps
        S, B, G = A.shape
        H = G // 4
        dH = st.state_grad(d_out, d_h_n)
        dxg = _input_grad(d_out, S, G)  # = gradient of the gates = of LN_hh's output
        dWH_all = d_out.new_empty(S, B, G)  # gradient of h W_hh^T
        dY_c_all = d_out.new_empty(S, B, H)  # gradient of LN_c's output
        dYX_hh, dYX_c = torch.empty_like(dWH_all), torch.empty_like(dY_c_all)  # dY * xhat, summed for dLoss/dw
        a, d = _LSTMGates(A), _LSTMGates(dxg[:S])
        dh, c, tc, dWH, dY_c = (x.unbind(0) for x in (dH, c_all, tc_all, dWH_all, dY_c_all))
        xhat_hh, xhat_c, dyx_hh, dyx_c = (x.unbind(0) for x in (xhat_hh_all, xhat_c_all, dYX_hh, dYX_c))
        rstd_hh, rstd_c = rstd_hh.unbind(0), rstd_c.unbind(0)
        neg_mean_hh, neg_mean_c = -ln_hh_w[:, None] / G, -ln_c_w[:, None] / H  # (N, 1)
        dc = d_c_n.clone(memory_format=torch.contiguous_format)
        dc_pass, tmp, dc_ln = (d_out.new_empty(B, H) for _ in range(3))
        s1, s2 = d_out.new_empty(B, 1), d_out.new_empty(B, 1)
        for t in reversed(range(S)):
            if t >= st.full:
                st.split_(t, dh[t + 1], dh[t])
                st.split_(t, dc, dc_pass.zero_())
            _output_gate_grad_(a, d, t, dh[t + 1], tc[t], dY_c[t])
            _layer_norm_grad_(dY_c[t], ln_c_w, neg_mean_c, rstd_c[t], xhat_c[t], dc_ln, dyx_c[t], s1, s2)
            _cell_grad_(a, d, t, dc.add_(dc_ln), c[t], tmp)
            if t >= st.full:
                dc.add_(dc_pass)
            _layer_norm_grad_(d.all[t], ln_hh_w, neg_mean_hh, rstd_hh[t], xhat_hh[t], dWH[t], dyx_hh[t], s1, s2)
            dh[t].addmm_(dWH[t], w_hh)
        d_w_hh = dWH_all.flatten(0, 1).t() @ h_all[:S].flatten(0, 1)  # (4H, H)
        d_ln_hh = dYX_hh.sum((0, 1)), dxg[:S].sum((0, 1))
        d_ln_c = dYX_c.sum((0, 1)), dY_c_all.sum((0, 1))
        return dxg, None, dH[0], dc, d_w_hh, *d_ln_hh, *d_ln_c, None


def lstm_recurrence(xg, lengths, h0, c0, w_hh, w_hr=None):
    """LSTM loop. xg (T, B, 4H) = x W_ih^T + b_ih + b_hh, gates i, f, g, o; h0 (B, P), c0 (B, H).

    Returns out (T, B, P), h_n (B, P), c_n (B, H); with ``w_hr`` (P, H), h = (o * tanh(c)) W_hr^T.
    """
    return _LSTM.apply(xg, lengths, h0, c0, w_hh, w_hr)


def gru_recurrence(xg, lengths, h0, w_hh, b_hh=None):
    """GRU loop. xg (T, B, 3H) = x W_ih^T + b_ih, gates r, z, n; returns out (T, B, H), h_n (B, H).

    n = tanh(xg_n + r * (h W_hn^T + b_hn)), h = (1 - z) * n + z * h_prev (torch's convention).
    """
    return _GRU.apply(xg, lengths, h0, w_hh, b_hh)


def layernorm_lstm_recurrence(
    xg, lengths, h0, c0, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, eps=1e-5
):
    """LayerNorm-LSTM loop (Ba et al. 2016, "Layer Normalization", sec. 3.1, eq. 20-22).

    xg (T, B, 4H) = LN_ih(x W_ih^T) + b_ih + b_hh; gates = xg + LN_hh(h W_hh^T);
    c = f * c_prev + i * g; h = o * tanh(LN_c(c)). Returns out (T, B, H), h_n (B, H), c_n (B, H).
    """
    return _LayerNormLSTM.apply(xg, lengths, h0, c0, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, eps)
