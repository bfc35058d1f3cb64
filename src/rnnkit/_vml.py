"""A guard against a race in the MKL that torch's CPU wheels link (oneMKL 2024.2; pytorch/pytorch#188792).

torch hands contiguous float unary ops (``tanh``, ``exp``, ``sqrt``, ...) to MKL's vector math library, one
call per intra-op thread on its chunk, and MKL picks each function's kernel on that function's first call.
When the first call runs on several threads at once, one of them can run a low-accuracy kernel on its chunk,
that one time. Here it showed as one row of an LSTM's first gate activations off by up to 5e-5 in about one
process in sixteen, and as two trainings with the same seed ending with different weights. One call of each
such function, on a tensor too small to be split across threads, settles the choice before any concurrent use.
"""

from __future__ import annotations

import torch

__all__ = ["settle_dispatch"]

# The unary ops that torch's CPU kernels send to MKL (ATen's cpu/vml.h)
_VML_OPS = ("abs", "acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "expm1", "lgamma", "log",
            "log10", "log1p", "log2", "sin", "sqrt", "tan", "tanh", "trunc")


def settle_dispatch() -> None:
    """Make the first call of each of :data:`_VML_OPS` for float32 and float64 in this process on one thread."""
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)
        for name in _VML_OPS:
            getattr(torch, name)(x)
