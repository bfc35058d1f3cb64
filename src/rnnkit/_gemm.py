"""The input projection of the ``"equations"`` backend, on the faster of torch's two CPU matrix multiplies.

torch's CPU wheel multiplies float32 matrices through MKL in ``torch.mm``/``bmm``/``nn.Linear`` but through
oneDNN in its fused ``nn.LSTM`` and in the linear op that its compiler emits for CPU code
(``torch.ops.mkldnn._linear_pointwise``, a @ w^T). Which is faster depends on the vendor and the vector
unit: MKL takes its AVX-512 code on Intel processors only. On an AVX-512 AMD EPYC (Zen 4) it ran at the AVX2
rate and oneDNN was twice as fast; on an AVX-512 Intel Xeon MKL was as fast or a little faster; on an AMD
EPYC without AVX-512 (Zen 3), where both run AVX2 code, MKL was 10 to 25% faster (see BENCHMARKS.md).

:func:`project` computes a layer's input projection, x W_ih^T for every real step of every direction, and
its two gradients: through oneDNN on CPUs where MKL is not the faster (for the weight gradient dY^T X oneDNN
first copies the two operands into transposed layouts, and on the Zen 4 EPYC is still faster than MKL
reading them in place), and through ``torch.mm`` on Intel's and on x86 CPUs without AVX-512, for other
dtypes and devices, and where a torch build lacks the op.

Each direction is one product over all its rows, written straight into its half of the (dirs, N, M)
result. The reverse direction reads the same steps in another order (each sequence backwards), and a row
permutation commutes with the product, so it is the input rows (width K) that are permuted, not the
result's (width M = 4H, several times wider), and in the backward direction 1's input gradient is put
back in forward order as it is added to direction 0's. The weights stay one tensor per direction, as the
layers hold them: stacking them would copy every weight and its gradient on every call.
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
    """Whether MKL runs at least as fast as oneDNN here: on Intel CPUs, where it takes its best kernels, and on
    x86 CPUs whose widest vector unit is AVX2, where neither library has wider kernels to take."""
    return _cpu_vendor() == "GenuineIntel" or torch.backends.cpu.get_cpu_capability() == "AVX2"


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


def _product(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """a (N, K) @ w^T (+ bias (M,)) for w (M, K): (N, M), through oneDNN where it is the faster; either
    operand may be a transposed view. With ``out`` (N, M) the result is written there (by MKL directly)."""
    cpu_float = a.dtype == torch.float32 and a.device.type == "cpu"
    onednn = _onednn_linear() if cpu_float and not _mkl_is_fast() else None
    if onednn is not None and a.numel() and w.numel():
        y = onednn(a, w)
        if bias is None:
            return y if out is None else out.copy_(y)
        return torch.add(y, bias, out=out if out is not None else y)  # one pass: the bias added as it is written
    if bias is None:
        return torch.mm(a, w.T, out=out)
    return torch.addmm(bias, a, w.T, out=out)


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, reverse, *weights_and_biases):
        dirs = 1 if reverse is None else 2
        weights, biases = weights_and_biases[:dirs], weights_and_biases[dirs:] or (None,) * dirs
        rows = (x,) if dirs == 1 else (x, x.index_select(0, reverse))  # (N, K) each direction's rows, in its order
        ctx.save_for_backward(reverse, *rows, *weights)
        out = x.new_empty(dirs, x.shape[0], weights[0].shape[0])  # (dirs, N, M)
        for d in range(dirs):
            _product(rows[d], weights[d], out[d], biases[d])
        return out

    @staticmethod
    @once_differentiable  # like the recurrences it feeds
    def backward(ctx, dy):
        reverse, *saved = ctx.saved_tensors
        dirs = len(saved) // 2
        rows, weights = saved[:dirs], saved[dirs:]
        want = ctx.needs_input_grad  # x, reverse, the weights, the biases if given
        dx = _product(dy[0], weights[0].T) if want[0] else None  # (N, K)
        if want[0] and dirs == 2:  # direction 1's rows put back in forward order as they are added
            dx.index_add_(0, reverse, _product(dy[1], weights[1].T))
        dw = [_product(dy[d].T, rows[d].T) if want[2 + d] else None for d in range(dirs)]  # (M, K) each: dy^T x
        db = [dy[d].sum(0) if want[2 + dirs + d] else None for d in range(len(want) - 2 - dirs)]  # (M,) each
        return dx, None, *dw, *db


def project(x: torch.Tensor, weights, biases=None, reverse: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, K) through each direction's weight (M, K) of ``weights``, plus its bias (M,) of ``biases`` if
    given: (dirs, N, M), with direction d's output ``x[rows] @ weights[d]^T + biases[d]``; ``rows`` are all
    rows in order for direction 0 and ``reverse`` (N,), a permutation that is its own inverse, for
    direction 1 (required when there are two). Differentiable in x, the weights and the biases."""
    if len(weights) not in (1, 2):
        raise ValueError(f"one or two directions' weights expected, got {len(weights)}")
    if (len(weights) == 2) != (reverse is not None):
        raise ValueError("two directions need the reverse direction's row order, and one needs none")
    return _Project.apply(x, reverse, *weights, *(biases or ()))
