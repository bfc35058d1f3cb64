"""Time loops of the LSTM, GRU and LayerNorm-LSTM recurrences, with a hand-written backward.

The caller projects the input for all steps at once (one big matmul, differentiated by autograd);
these functions run only the sequential part. Each sequence starts at t = 0 and has ``lengths[b]``
real steps: at t >= lengths[b] the state is carried unchanged and the output is 0, so the final
state is the one at each sequence's last real step (the initial state for length 0). The loop
stops at max(lengths); steps before min(lengths) need no masking.

Why a hand-written backward: autograd would record ~15 nodes per step and run as many small
kernels again backwards. Here the forward stores the gate activations in (T, B, G) buffers, the
backward walks back in time writing the gate gradients into one (T, B, G) buffer and then gets
dW_hh (and dW_hr) from ONE matmul over all (T*B) rows. Everything that does not depend on the
running gradient (activation derivatives, normalised LayerNorm inputs) is computed for all steps
at once before the backward loop, so the loop itself is a handful of in-place kernels per step.

Letters: T time, S = max(lengths) steps run, B batch, H hidden, P output size (H or proj_size),
G gates (4H for LSTM, 3H for GRU).
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
        else:
            lengths = lengths.to(xg.device)
            self.S, self.full = torch.stack([lengths.max(), lengths.min()]).tolist()  # one host sync
        steps = torch.arange(self.S, device=xg.device)[:, None, None]  # (S, 1, 1)
        lengths = torch.full((B,), self.S, device=xg.device) if lengths is None else lengths
        self.active = steps < lengths[:, None]  # (S, B, 1) bool
        self.keep = self.active.to(xg.dtype)  # (S, B, 1) 1 where t < lengths[b]
        self.drop = 1 - self.keep  # (S, B, 1) 1 where the state is only carried

    def carry_(self, t: int, new: torch.Tensor, old: torch.Tensor) -> None:
        """Forward: rows past their length keep the previous state."""
        torch.where(self.active[t], new, old, out=new)

    def split_(self, t: int, d_new: torch.Tensor, d_old: torch.Tensor, d_c=None, d_c_pass=None) -> None:
        """Backward: rows past their length pass the state gradient straight to step t - 1."""
        d_old.addcmul_(d_new, self.drop[t])
        d_new.mul_(self.keep[t])
        if d_c is not None:
            torch.mul(d_c, self.drop[t], out=d_c_pass)
            d_c.mul_(self.keep[t])

    def output(self, h_all: torch.Tensor, T: int) -> torch.Tensor:
        """(T, B, P) output: the state after each real step, 0 past each length."""
        out = h_all.new_zeros(T, *h_all.shape[1:])
        torch.mul(h_all[1:], self.keep, out=out[: self.S])
        return out


def _state_grad(steps: _Steps, d_out, d_h_n, P) -> torch.Tensor:
    """(S+1, B, P) buffer of dLoss/d(state after step t - 1), seeded with the output gradients."""
    dH = d_out.new_empty(steps.S + 1, *d_out.shape[1:2], P)
    dH[0].zero_()
    torch.mul(d_out[: steps.S], steps.keep, out=dH[1:])
    dH[steps.S].add_(d_h_n)
    return dH


def _input_grad(d_out, S, G) -> torch.Tensor:
    """(T, B, G) gradient of xg; steps from S on never ran and get 0."""
    dxg = d_out.new_empty(d_out.shape[0], d_out.shape[1], G)
    dxg[S:].zero_()
    return dxg


def _lstm_cell_(G: torch.Tensor, c_prev: torch.Tensor, c: torch.Tensor) -> None:
    """Activate gates G = [i, f, g, o] (B, 4H) in place and write c = f * c_prev + i * g."""
    i, f, g, o = G.chunk(4, -1)
    G[:, : 2 * i.shape[1]].sigmoid_()
    g.tanh_()
    o.sigmoid_()
    torch.mul(f, c_prev, out=c).addcmul_(i, g)


def _output_gate_grad_(dG: torch.Tensor, dm: torch.Tensor, gates: torch.Tensor, tc: torch.Tensor, du) -> None:
    """Backward of m = o * tc, tc = tanh(u): d(o pre-activation) into dG's o block, dLoss/du into du."""
    o, d_o = gates.chunk(4, -1)[3], dG.chunk(4, -1)[3]
    torch.mul(dm, o, out=du)
    torch.mul(du, tc, out=d_o)  # dm * o * tc
    du.addcmul_(d_o, tc, value=-1)  # dm * o * (1 - tc^2)
    d_o.addcmul_(d_o, o, value=-1)  # dm * tc * o * (1 - o)


def _cell_grad_(dG: torch.Tensor, dc: torch.Tensor, gates: torch.Tensor, c_prev: torch.Tensor, tmp) -> None:
    """Backward of c = f * c_prev + i * g: i, f, g pre-activation gradients into dG; dc becomes dLoss/dc_prev."""
    i, f, g, _ = gates.chunk(4, -1)
    d_i, d_f, d_g, _ = dG.chunk(4, -1)
    torch.mul(dc, g, out=d_i)
    torch.mul(dc, c_prev, out=d_f)
    d_if, if_ = dG[:, : 2 * dc.shape[1]], gates[:, : 2 * dc.shape[1]]
    d_if.mul_(if_).addcmul_(d_if, if_, value=-1)  # sigmoid' = s * (1 - s)
    torch.mul(dc, i, out=d_g)
    d_g.addcmul_(d_g, torch.mul(g, g, out=tmp), value=-1)  # tanh' = 1 - g^2
    dc.mul_(f)


class _LSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, lengths, h0, c0, w_hh, w_hr):
        T, B, G = xg.shape
        H, P = G // 4, h0.shape[1]
        st = _Steps(xg, lengths)
        A = xg.new_empty(st.S, B, G)  # activated gates i, f, g, o
        h_all = xg.new_empty(st.S + 1, B, P)  # state before step t at [t]
        c_all = xg.new_empty(st.S + 1, B, H)
        tc = xg.new_empty(st.S, B, H)  # tanh(c)
        m_all = xg.new_empty(st.S, B, H) if w_hr is not None else tc  # o * tanh(c), before projection
        h_all[0], c_all[0] = h0, c0
        for t in range(st.S):
            torch.addmm(xg[t], h_all[t], w_hh.t(), out=A[t])
            _lstm_cell_(A[t], c_all[t], c_all[t + 1])
            torch.tanh(c_all[t + 1], out=tc[t])
            if w_hr is None:
                torch.mul(A[t, :, 3 * H :], tc[t], out=h_all[t + 1])
            else:
                torch.mul(A[t, :, 3 * H :], tc[t], out=m_all[t])
                torch.mm(m_all[t], w_hr.t(), out=h_all[t + 1])
            if t >= st.full:
                st.carry_(t, h_all[t + 1], h_all[t])
                st.carry_(t, c_all[t + 1], c_all[t])
        ctx.steps = st
        ctx.save_for_backward(w_hh, w_hr, A, h_all, c_all, tc, m_all)
        return st.output(h_all, T), h_all[st.S].clone(), c_all[st.S].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_n, d_c_n):
        w_hh, w_hr, A, h_all, c_all, tc, m_all = ctx.saved_tensors
        st = ctx.steps
        S, B, G = A.shape
        H = G // 4
        dH = _state_grad(st, d_out, d_h_n, h_all.shape[2])
        dxg = _input_grad(d_out, S, G)
        dG = dxg[:S]  # gradient of the gate pre-activations = of xg
        dc = d_c_n.clone(memory_format=torch.contiguous_format)
        dc_pass, du, tmp = (d_out.new_empty(B, H) for _ in range(3))
        dm = d_out.new_empty(B, H) if w_hr is not None else None
        for t in reversed(range(S)):
            if t >= st.full:
                st.split_(t, dH[t + 1], dH[t], dc, dc_pass)
            if w_hr is not None:
                torch.mm(dH[t + 1], w_hr, out=dm)
            _output_gate_grad_(dG[t], dH[t + 1] if w_hr is None else dm, A[t], tc[t], du)
            _cell_grad_(dG[t], dc.add_(du), A[t], c_all[t], tmp)
            if t >= st.full:
                dc.add_(dc_pass)
            dH[t].addmm_(dG[t], w_hh)
        d_w_hh = dG.flatten(0, 1).t() @ h_all[:S].flatten(0, 1)  # (4H, P)
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
        for t in range(st.S):
            if b_hh is None:
                torch.mm(h_all[t], w_hh.t(), out=HG[t])
            else:
                torch.addmm(b_hh, h_all[t], w_hh.t(), out=HG[t])
            r, z, n = A[t].chunk(3, -1)
            torch.add(xg[t, :, : 2 * H], HG[t, :, : 2 * H], out=A[t, :, : 2 * H]).sigmoid_()
            torch.addcmul(xg[t, :, 2 * H :], r, HG[t, :, 2 * H :], out=n).tanh_()
            torch.sub(h_all[t], n, out=h_all[t + 1]).mul_(z).add_(n)  # h = (1 - z) * n + z * h_prev
            if t >= st.full:
                st.carry_(t, h_all[t + 1], h_all[t])
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
        dH = _state_grad(st, d_out, d_h_n, H)
        dxg = _input_grad(d_out, S, G)
        dHG = d_out.new_empty(S, B, G)  # gradient of h W_hh^T + b_hh
        tmp = d_out.new_empty(B, H)
        for t in reversed(range(S)):
            dh = dH[t + 1]
            if t >= st.full:
                st.split_(t, dh, dH[t])
            r, z, n = A[t].chunk(3, -1)
            d_r, d_z, d_hn = dHG[t].chunk(3, -1)
            d_n = dxg[t, :, 2 * H :]  # gradient of n's pre-activation
            dH[t].add_(torch.mul(dh, z, out=tmp))  # through h = ... + z * h_prev
            torch.sub(dh, tmp, out=d_n).addcmul_(d_n, torch.mul(n, n, out=tmp), value=-1)  # dh (1 - z) (1 - n^2)
            torch.mul(d_n, r, out=d_hn)
            torch.mul(d_n, HG[t, :, 2 * H :], out=d_r).mul_(r)
            d_r.addcmul_(d_r, r, value=-1)  # d_n * hn * r * (1 - r)
            torch.sub(h_all[t], n, out=d_z).mul_(dh).mul_(z)
            d_z.addcmul_(d_z, z, value=-1)  # dh * (h_prev - n) * z * (1 - z)
            dH[t].addmm_(dHG[t], w_hh)
        dxg[:S, :, : 2 * H] = dHG[..., : 2 * H]
        d_w_hh = dHG.flatten(0, 1).t() @ h_all[:S].flatten(0, 1)  # (3H, H)
        d_b_hh = dHG.sum((0, 1)) if b_hh is not None else None
        return dxg, None, dH[0], d_w_hh, d_b_hh


def _layer_norm_grad_(dy, weight, rstd, xhat, out, tmp, m1, m2):
    """dLoss/dx of y = xhat * weight + bias, xhat = (x - mean) * rstd, for rows of (B, N), into out.

    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) with dxhat = dy * weight.
    """
    dxhat = torch.mul(dy, weight, out=out)
    torch.mean(dxhat, -1, keepdim=True, out=m1)  # (B, 1)
    torch.mean(torch.mul(dxhat, xhat, out=tmp), -1, keepdim=True, out=m2)  # (B, 1)
    return dxhat.sub_(m1).addcmul_(xhat, m2, value=-1).mul_(rstd)


class _LayerNormLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, lengths, h0, c0, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, eps):
        T, B, G = xg.shape
        H = G // 4
        st = _Steps(xg, lengths)
        A = xg.new_empty(st.S, B, G)  # activated gates i, f, g, o
        WH = xg.new_empty(B, G)  # h W_hh^T
        xhat_hh = xg.new_empty(st.S, B, G)  # LN_hh's normalised input
        xhat_c = xg.new_empty(st.S, B, H)
        rstd_hh, rstd_c = [], []  # 1/std of LN_hh, LN_c: S tensors (B, 1)
        h_all = xg.new_empty(st.S + 1, B, H)
        c_all = xg.new_empty(st.S + 1, B, H)
        tc = xg.new_empty(st.S, B, H)  # tanh(LN_c(c))
        h_all[0], c_all[0] = h0, c0
        for t in range(st.S):
            torch.mm(h_all[t], w_hh.t(), out=WH)
            xhat, _, rstd = torch.native_layer_norm(WH, [G], None, None, eps)
            xhat_hh[t] = xhat
            rstd_hh.append(rstd)
            torch.addcmul(xg[t], xhat, ln_hh_weight, out=A[t]).add_(ln_hh_bias)
            _lstm_cell_(A[t], c_all[t], c_all[t + 1])
            xhat, _, rstd = torch.native_layer_norm(c_all[t + 1], [H], None, None, eps)
            xhat_c[t] = xhat
            rstd_c.append(rstd)
            torch.addcmul(ln_c_bias, xhat, ln_c_weight, out=tc[t]).tanh_()
            torch.mul(A[t, :, 3 * H :], tc[t], out=h_all[t + 1])
            if t >= st.full:
                st.carry_(t, h_all[t + 1], h_all[t])
                st.carry_(t, c_all[t + 1], c_all[t])
        rstd_hh, rstd_c = (torch.stack(r) if r else xg.new_empty(0, B, 1) for r in (rstd_hh, rstd_c))
        ctx.steps = st
        ctx.save_for_backward(w_hh, ln_hh_weight, ln_c_weight, A, xhat_hh, xhat_c, rstd_hh, rstd_c, h_all, c_all, tc)
        return st.output(h_all, T), h_all[st.S].clone(), c_all[st.S].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_n, d_c_n):
        w_hh, ln_hh_weight, ln_c_weight, A, xhat_hh, xhat_c, rstd_hh, rstd_c, h_all, c_all, tc = ctx.saved_tensors
        st = ctx.steps
        S, B, G = A.shape
        H = G // 4
        dH = _state_grad(st, d_out, d_h_n, H)
        dxg = _input_grad(d_out, S, G)
        dG = dxg[:S]  # gradient of the gate pre-activations = of xg = of LN_hh's output
        dWH = d_out.new_empty(S, B, G)  # gradient of h W_hh^T
        dY_c = d_out.new_empty(S, B, H)  # gradient of LN_c's output
        dc = d_c_n.clone(memory_format=torch.contiguous_format)
        dc_pass, tmp, dc_ln = (d_out.new_empty(B, H) for _ in range(3))
        tmp_hh, m1, m2 = d_out.new_empty(B, G), d_out.new_empty(B, 1), d_out.new_empty(B, 1)
        for t in reversed(range(S)):
            if t >= st.full:
                st.split_(t, dH[t + 1], dH[t], dc, dc_pass)
            _output_gate_grad_(dG[t], dH[t + 1], A[t], tc[t], dY_c[t])
            dc.add_(_layer_norm_grad_(dY_c[t], ln_c_weight, rstd_c[t], xhat_c[t], dc_ln, tmp, m1, m2))
            _cell_grad_(dG[t], dc, A[t], c_all[t], tmp)
            if t >= st.full:
                dc.add_(dc_pass)
            _layer_norm_grad_(dG[t], ln_hh_weight, rstd_hh[t], xhat_hh[t], dWH[t], tmp_hh, m1, m2)
            dH[t].addmm_(dWH[t], w_hh)
        d_w_hh = dWH.flatten(0, 1).t() @ h_all[:S].flatten(0, 1)  # (4H, H)
        d_ln_hh_w, d_ln_hh_b = (dG * xhat_hh).sum((0, 1)), dG.sum((0, 1))
        d_ln_c_w, d_ln_c_b = (dY_c * xhat_c).sum((0, 1)), dY_c.sum((0, 1))
        return dxg, None, dH[0], dc, d_w_hh, d_ln_hh_w, d_ln_hh_b, d_ln_c_w, d_ln_c_b, None


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
