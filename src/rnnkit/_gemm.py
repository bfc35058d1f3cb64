"""The input projection of the ``"equations"`` backend, on the faster of torch's two CPU matrix multiplies.

torch's CPU wheel multiplies float32 matrices through MKL in ``torch.mm``/``bmm``/``nn.Linear`` but through
oneDNN, about twice as fast on this project's AVX-512 machines, in its fused ``nn.LSTM`` and in the linear op
that its compiler emits for CPU code (``torch.ops.mkldnn._linear_pointwise``, a @ w^T; see BENCHMARKS.md).
:func:`linear` computes a layer's input projection, x W_ih^T for every real step, with that op for the
forward product and both gradients (for the weight gradient dY^T X oneDNN first copies the two operands
into transposed layouts, and is still faster than MKL reading them in place). Other dtypes, other devices,
and a torch build without the op use ``bmm``.
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

__all__ = ["linear"]


@functools.cache
def _onednn_linear():
    """``torch.ops.mkldnn._linear_pointwise`` as f(a, w) = a @ w^T, or None where this torch lacks it or it
    does not compute that product (checked once, on first use)."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    if op is None:
        return None
    f = functools.partial(op, B=None, attr="none", scalars=[], algorithm="")
    a, w = torch.arange(15.0).reshape(3, 5) / 7, torch.arange(20.0).reshape(4, 5) / 11  # no random draw
    try:
        ok = torch.allclose(f(a, w), a @ w.T)
    except RuntimeError:  # a private op: its signature may change between torch releases
        ok = False
    return f if ok else None


def _product(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a (dirs, N, K) @ w^T for w (dirs, M, K): (dirs, N, M), through oneDNN where it can; either operand
    may be a transposed view."""
    onednn = _onednn_linear() if a.dtype == torch.float32 and a.device.type == "cpu" else None
    if onednn is None or a.numel() == 0 or w.numel() == 0:
        return torch.bmm(a, w.transpose(1, 2))
    out = [onednn(a[d], w[d]) for d in range(a.shape[0])]  # each (N, M)
    return out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias):
        ctx.save_for_backward(x, w)
        out = _product(x, w)  # (dirs, N, M)
        return out if bias is None else out.add_(bias[:, None])

    @staticmethod
    @once_differentiable  # like the recurrences it feeds
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        want_x, want_w, want_bias = ctx.needs_input_grad
        dx = _product(dy, w.transpose(1, 2)) if want_x else None  # (dirs, N, K)
        dw = _product(dy.transpose(1, 2), x.transpose(1, 2)) if want_w else None  # (dirs, M, K) = dy^T x
        return dx, dw, dy.sum(1) if want_bias else None  # want_bias is False without a bias


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (dirs, N, K) @ w^T for w (dirs, M, K), plus bias (dirs, M) if given: (dirs, N, M), differentiable."""
    return _Linear.apply(x, w, bias)
