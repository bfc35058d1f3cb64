"""The input projection of the equations backend (oneDNN for float32 on non-Intel CPUs) against torch.bmm."""

from __future__ import annotations

import pytest
import torch

from rnnkit import _gemm


def _inputs(dirs, N, K, M, dtype, bias):
    g = torch.Generator().manual_seed(dirs * 100 + N)
    x = torch.randn(N, K, generator=g, dtype=dtype, requires_grad=True)
    w = [torch.randn(M, K, generator=g, dtype=dtype, requires_grad=True) for _ in range(dirs)]
    b = [torch.randn(M, generator=g, dtype=dtype, requires_grad=True) for _ in range(dirs)] if bias else None
    reverse = None
    if dirs == 2:  # a permutation that is its own inverse: random pairs of rows swapped
        pairs = torch.randperm(N, generator=g)[: N // 2 * 2].view(-1, 2)
        reverse = torch.arange(N)
        reverse[pairs[:, 0]], reverse[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    return x, w, b, reverse


def _reference(x, w, b, reverse):
    """Each direction's rows read in its own order, then one bmm."""
    rows = x[None] if reverse is None else torch.stack([x, x[reverse]])  # (dirs, N, K)
    out = torch.bmm(rows, torch.stack(w).transpose(1, 2))
    return out if b is None else out + torch.stack(b)[:, None]


@pytest.fixture(params=["onednn", "mm"])
def library(request, monkeypatch):
    """Run the test with the projection on each of its two products (where this torch has oneDNN)."""
    if request.param == "onednn" and _gemm._onednn_linear() is None:
        pytest.skip("this torch build has no oneDNN linear op")
    monkeypatch.setattr(_gemm, "_mkl_is_fast", lambda: request.param == "mm")
    return request.param


@pytest.mark.parametrize("dirs", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_matches_bmm_with_gradients(dirs, bias, library):
    x, w, b, reverse = _inputs(dirs, 37, 24, 40, torch.float32, bias)
    out = _gemm.project(x, w, b, reverse)
    ref = _reference(x, w, b, reverse)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(out)
    params = [x, *w, *(b or [])]
    grads = torch.autograd.grad(out, params, dy)
    ref_grads = torch.autograd.grad(ref, params, dy)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dirs", [1, 2])
def test_gradcheck_in_float64(dirs):
    x, w, b, reverse = _inputs(dirs, 7, 5, 4, torch.float64, True)
    def f(x, *wb):
        return _gemm.project(x, wb[:dirs], wb[dirs:], reverse)

    assert torch.autograd.gradcheck(f, (x, *w, *b))


@pytest.mark.parametrize("dirs", [1, 2])
def test_only_the_needed_gradients_are_computed(dirs, library):
    x, w, b, reverse = _inputs(dirs, 5, 3, 4, torch.float32, True)
    x.requires_grad_(False)
    w[-1].requires_grad_(False)
    out = _gemm.project(x, w, b, reverse)
    out.sum().backward()
    assert x.grad is None and w[-1].grad is None
    assert all(p.grad is not None for p in (*w[:-1], *b))


def test_two_directions_need_the_reverse_order_and_one_none():
    x, w, _, reverse = _inputs(2, 5, 3, 4, torch.float32, False)
    message = "two directions need the reverse direction's row order, and one needs none"
    with pytest.raises(ValueError, match=message):
        _gemm.project(x, w)
    with pytest.raises(ValueError, match=message):
        _gemm.project(x, w[:1], None, reverse)
    with pytest.raises(ValueError, match="one or two directions' weights expected, got 3"):
        _gemm.project(x, [*w, w[0]], None, reverse)


def test_importing_draws_no_random_numbers():
    import importlib

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    importlib.reload(_gemm)
    _gemm.project(torch.ones(2, 3), [torch.ones(4, 3)])  # the first use checks the op
    assert torch.equal(torch.rand(3), expected)


def test_no_rows(library):
    x, w, b, reverse = _inputs(2, 0, 5, 4, torch.float32, True)
    out = _gemm.project(x, w, b, reverse)
    assert out.shape == (2, 0, 4)
    out.sum().backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in (*w, *b))


@pytest.mark.parametrize("vendor, capability, mkl", [
    ("GenuineIntel", "AVX512", True), ("GenuineIntel", "AVX2", True),
    ("AuthenticAMD", "AVX512", False), ("AuthenticAMD", "AVX2", True),
    ("", "SVE256", False), ("", "AVX512", False),
])
def test_mkl_is_taken_on_intel_cpus_and_where_avx2_is_the_widest(vendor, capability, mkl, monkeypatch):
    monkeypatch.setattr(_gemm, "_cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    _gemm._mkl_is_fast.cache_clear()
    try:
        assert _gemm._mkl_is_fast() is mkl
    finally:
        _gemm._mkl_is_fast.cache_clear()


def test_the_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\nprocessor\t: 1\n"
                       "vendor_id\t: GenuineIntel\n")
    assert _gemm._cpu_vendor(str(cpuinfo)) == "GenuineIntel"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # an aarch64 kernel names no vendor
    assert _gemm._cpu_vendor(str(cpuinfo)) == ""
    assert _gemm._cpu_vendor(str(tmp_path / "missing")) == ""


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_the_onednn_op_is_found_where_torch_has_onednn():
    # The op is private to torch: a release that renamed it or changed its arguments would silently cost the
    # speed-up of BENCHMARKS.md on non-Intel CPUs, so a build with oneDNN must have it.
    assert _gemm._onednn_linear() is not None
