"""The input projection of the ``"equations"`` backend, on the faster of torch's two CPU matrix multiplies.

torch's CPU wheel multiplies float32 matrices through MKL in ``torch.mm``/``bmm``/``nn.Linear`` but through
oneDNN in its fused ``nn.LSTM`` and in the linear op that its compiler emits for CPU code
(``torch.ops.mkldnn._linear_pointwise``, a @ w^T). Which is faster depends on the vendor: MKL takes its
AVX-512 code on Intel processors only. On an AVX-512 AMD EPYC it ran at the AVX2 rate and oneDNN was twice
as fast; on an AVX-512 Intel Xeon MKL was as fast or a little faster (see BENCHMARKS.md).

:func:`project` computes a layer's input projection, x W_ih^T for every real step of every direction, and
its two gradients: through oneDNN on CPUs of other vendors (for the weight gradient dY^T X oneDNN first
copies the two operands into transposed layouts, and on the EPYC is still faster than MKL reading them in
place), and through ``torch.mm`` on Intel's, for other dtypes and devices, and where a torch build lacks
the op.

Both directions of a bidirectional layer share one product: the reverse direction reads the same steps in
another order (each sequence backwards), and a row permutation commutes with the product, so
x [W_0; W_1]^T is computed once, on rows in forward order, and only the reverse direction's half of the
result is permuted. Its gradients are likewise one product each, over both directions' gate gradients
side by side.
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

__all__ = ["project"]


def _cpu_vendor(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...) where Linux tells it, else ""."""
    try:
        with open(cpuinfo_path, encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


@functools.cache
def _mkl_is_fast() -> bool:
    """Whether MKL runs its fastest kernels here: on Intel CPUs only."""
    return _cpu_vendor() == "GenuineIntel"


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
    """a (N, K) @ w^T for w (M, K): (N, M), through oneDNN where it is the faster; either operand may be a
    transposed view."""
    cpu_float = a.dtype == torch.float32 and a.device.type == "cpu"
    onednn = _onednn_linear() if cpu_float and not _mkl_is_fast() else None
    if onednn is None or a.numel() == 0 or w.numel() == 0:
        return a @ w.T
    return onednn(a, w)


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, reverse):
        dirs, M, K = w.shape
        ctx.save_for_backward(x, w, reverse)
        y = _product(x, w.reshape(dirs * M, K))  # (N, dirs * M): every direction's gates, rows in forward order
        if bias is not None:
            y += bias.reshape(dirs * M)
        if dirs == 1:
            return y.unsqueeze(0)
        out = y.new_empty(dirs, x.shape[0], M)
        out[0] = y[:, :M]
        torch.index_select(y[:, M:], 0, reverse, out=out[1])
        return out  # (dirs, N, M)

    @staticmethod
    @once_differentiable  # like the recurrences it feeds
    def backward(ctx, dy):
        x, w, reverse = ctx.saved_tensors
        want_x, want_w, want_bias, _ = ctx.needs_input_grad
        dirs, M, K = w.shape
        if dirs == 1:
            dy_rows = dy[0]  # (N, M)
        else:  # both directions' gradients side by side, the reverse one put back in forward row order
            dy_rows = torch.cat([dy[0], dy[1].index_select(0, reverse)], 1)  # (N, 2M)
        dx = _product(dy_rows, w.reshape(dirs * M, K).T) if want_x else None  # (N, K), summed over directions
        dw = _product(dy_rows.T, x.T).view(dirs, M, K) if want_w else None  # dy^T x per direction
        return dx, dw, dy.sum(1) if want_bias else None, None  # want_bias is False without a bias


def project(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
            reverse: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, K) through each direction's w (dirs, M, K), plus bias (dirs, M) if given: (dirs, N, M), with
    direction d's output ``x[rows] @ w[d]^T + bias[d]``; ``rows`` are all rows in order for direction 0 and
    ``reverse`` (N,), a permutation that is its own inverse, for direction 1 (required when dirs = 2).
    Differentiable in x, w and bias."""
    if w.shape[0] == 2 and reverse is None:
        raise ValueError("two directions need the reverse direction's row order")
    return _Project.apply(x, w, bias, reverse)
