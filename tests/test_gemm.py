"""The input projection of the equations backend (oneDNN for float32 on the CPU) against torch.bmm."""

from __future__ import annotations

import pytest
import torch

from rnnkit import _gemm


def _inputs(dirs, N, K, M, dtype, bias):
    g = torch.Generator().manual_seed(dirs * 100 + N)
    x = torch.randn(dirs, N, K, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(dirs, M, K, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(dirs, M, generator=g, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


def _reference(x, w, b):
    out = torch.bmm(x, w.transpose(1, 2))
    return out if b is None else out + b[:, None]


@pytest.mark.parametrize("dirs", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_matches_bmm_with_gradients(dirs, bias):
    x, w, b = _inputs(dirs, 37, 24, 40, torch.float32, bias)
    out = _gemm.linear(x, w, b)
    ref = _reference(x, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(out)
    params = [p for p in (x, w, b) if p is not None]
    grads = torch.autograd.grad(out, params, dy)
    ref_grads = torch.autograd.grad(ref, params, dy)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def test_gradcheck_in_float64():
    x, w, b = _inputs(2, 6, 5, 4, torch.float64, True)
    assert torch.autograd.gradcheck(_gemm.linear, (x, w, b))


def test_only_the_needed_gradients_are_computed():
    x, w, _ = _inputs(1, 5, 3, 4, torch.float32, False)
    x.requires_grad_(False)
    out = _gemm.linear(x, w)
    out.sum().backward()
    assert x.grad is None and w.grad is not None


def test_importing_draws_no_random_numbers():
    import importlib

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    importlib.reload(_gemm)
    _gemm.linear(torch.ones(1, 2, 3), torch.ones(1, 4, 3))  # the first use checks the op
    assert torch.equal(torch.rand(3), expected)


def test_no_rows():
    x, w, b = _inputs(2, 0, 5, 4, torch.float32, True)
    out = _gemm.linear(x, w, b)
    assert out.shape == (2, 0, 4)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_the_onednn_op_is_found_where_torch_has_onednn():
    # The op is private to torch: a release that renamed it or changed its arguments would silently cost the
    # speed-up of BENCHMARKS.md, so a build with oneDNN must have it.
    assert _gemm._onednn_linear() is not None
