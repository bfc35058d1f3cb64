"""rnnkit settles MKL's kernel choice for torch's float unary ops on import (see rnnkit._vml)."""

from __future__ import annotations

import subprocess
import sys

import torch

from rnnkit import _vml


def test_importing_rnnkit_makes_the_first_tanh_calls_in_both_float_types():
    # A fresh interpreter: in this one rnnkit is already imported.
    script = (
        "import torch\n"
        "seen = []\n"
        "tanh = torch.tanh\n"
        "torch.tanh = lambda x, *a, **k: (seen.append((x.dtype, x.numel())), tanh(x, *a, **k))[1]\n"
        "import rnnkit\n"
        "print(sorted(set(seen), key=str))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[(torch.float32, 1), (torch.float64, 1)]"


def test_every_listed_op_is_a_torch_function_that_takes_one_element():
    for name in _vml._VML_OPS:
        for dtype in (torch.float32, torch.float64):
            assert getattr(torch, name)(torch.full((1,), 0.5, dtype=dtype)).shape == (1,)
