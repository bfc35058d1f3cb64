"""The hand-written recurrences against plain-autograd loops written straight from the equations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit._recurrence import gru_recurrence, layernorm_lstm_recurrence, lstm_recurrence

KINDS = ["lstm", "lstm_proj", "gru", "gru_nobias", "layernorm_lstm"]


# --- reference loops: plain autograd, state carried past each length by a mask ------------------


def _reference(step, xg, lengths, state):
    """Run ``step(xg_t, state) -> (h, state)`` for all T steps, carrying the state past each length."""
    T, B = xg.shape[:2]
    lengths = torch.full((B,), T) if lengths is None else lengths
    outs = []
    for t in range(T):
        h, new = step(xg[t], state)
        keep = (t < lengths)[:, None]  # (B, 1)
        state = tuple(torch.where(keep, n, s) for n, s in zip(new, state))
        outs.append(torch.where(keep, h, torch.zeros_like(h)))
    return (torch.stack(outs), *state)


def ref_lstm(xg, lengths, h0, c0, w_hh, w_hr=None):
    def step(x, state):
        h, c = state
        i, f, g, o = (x + h @ w_hh.T).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        h = h if w_hr is None else h @ w_hr.T
        return h, (h, c)

    return _reference(step, xg, lengths, (h0, c0))


def ref_gru(xg, lengths, h0, w_hh, b_hh=None):
    def step(x, state):
        (h,) = state
        x_r, x_z, x_n = x.chunk(3, -1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, -1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, (h,)

    return _reference(step, xg, lengths, (h0,))


def ref_layernorm_lstm(xg, lengths, h0, c0, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, eps=1e-5):
    def step(x, state):
        h, c = state
        gates = x + F.layer_norm(h @ w_hh.T, (w_hh.shape[0],), ln_hh_weight, ln_hh_bias, eps)
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (c.shape[1],), ln_c_weight, ln_c_bias, eps))
        return h, (h, c)

    return _reference(step, xg, lengths, (h0, c0))


# --- inputs ---------------------------------------------------------------------------------------


def make_case(kind, T, B, H, lengths, dtype=torch.float64, P=None):
    """(function, reference, args) with every tensor argument a leaf that requires grad."""
    P = P or max(1, H // 2)

    def r(*shape):
        return torch.randn(*shape, dtype=dtype)

    if kind.startswith("lstm"):
        out = P if kind == "lstm_proj" else H
        w_hr = r(P, H) / H**0.5 if kind == "lstm_proj" else None
        args = [r(T, B, 4 * H), lengths, r(B, out), r(B, H), r(4 * H, out) / out**0.5, w_hr]
        fn, ref = lstm_recurrence, ref_lstm
    elif kind.startswith("gru"):
        b_hh = r(3 * H) if kind == "gru" else None
        args = [r(T, B, 3 * H), lengths, r(B, H), r(3 * H, H) / H**0.5, b_hh]
        fn, ref = gru_recurrence, ref_gru
    else:
        ln = [1 + 0.3 * r(4 * H), 0.3 * r(4 * H), 1 + 0.3 * r(H), 0.3 * r(H)]
        args = [r(T, B, 4 * H), lengths, r(B, H), r(B, H), r(4 * H, H) / H**0.5, *ln]
        fn, ref = layernorm_lstm_recurrence, ref_layernorm_lstm
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    return fn, ref, args


def outputs_and_grads(fn, args, seeds):
    """Outputs of ``fn(*args)`` and the gradients of sum(output * seed) wrt every float argument."""
    outs = fn(*args)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    loss = sum((o * s).sum() for o, s in zip(outs, seeds))
    return outs, torch.autograd.grad(loss, leaves)


def assert_matches_reference(kind, T, B, H, lengths, dtype=torch.float64, tol=1e-10):
    fn, ref, args = make_case(kind, T, B, H, lengths, dtype)
    seeds = [torch.randn_like(o) for o in ref(*args)]
    outs, grads = outputs_and_grads(fn, args, seeds)
    ref_outs, ref_grads = outputs_and_grads(ref, args, seeds)
    for got, want in zip((*outs, *grads), (*ref_outs, *ref_grads)):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    return outs, grads


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_with_unsorted_lengths(kind):
    lengths = torch.tensor([3, 0, 7, 5, 7, 1])
    outs, grads = assert_matches_reference(kind, T=7, B=6, H=5, lengths=lengths)
    out = outs[0]
    assert out.shape[:2] == (7, 6)
    assert out[:, 1].abs().sum() == 0 and out[3:, 0].abs().sum() == 0  # zero past each length
    assert grads[0][:, 1].abs().sum() == 0 and grads[0][5:, 3].abs().sum() == 0  # no gradient from padding


@pytest.mark.parametrize("kind", KINDS)
def test_padding_beyond_longest_sequence(kind):
    """T larger than max(lengths): the loop stops early, the tail is zero and gets no gradient."""
    outs, grads = assert_matches_reference(kind, T=9, B=3, H=4, lengths=torch.tensor([2, 6, 4]))
    assert outs[0][6:].abs().sum() == 0
    assert grads[0][6:].abs().sum() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_lengths_none_is_full_length(kind):
    fn, _, args = make_case(kind, 5, 3, 4, None)
    full = list(args)
    full[1] = torch.full((3,), 5)
    for a, b in zip(fn(*args), fn(*full)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert_matches_reference(kind, T=5, B=3, H=4, lengths=None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths", [None, torch.tensor([2, 4, 3])])
def test_the_callers_projection_is_left_as_it_was(kind, lengths):
    """The packed loops keep their gates in their input's buffer; the padded entry points hand them a copy."""
    fn, _, args = make_case(kind, T=4, B=3, H=2, lengths=lengths)
    before = args[0].detach().clone()
    fn(*args)
    assert torch.equal(args[0], before)


@pytest.mark.parametrize("kind", KINDS)
def test_all_lengths_zero_returns_initial_state(kind):
    fn, _, args = make_case(kind, 4, 3, 5, torch.zeros(3, dtype=torch.long))
    out, *state = fn(*args)
    assert out.abs().sum() == 0
    for got, init in zip(state, args[2 : 2 + len(state)]):  # h0 (and c0) follow xg and lengths
        torch.testing.assert_close(got, init, rtol=0, atol=0)
    assert_matches_reference(kind, T=4, B=3, H=5, lengths=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("kind", KINDS)
def test_float32_matches_reference(kind):
    assert_matches_reference(kind, T=12, B=5, H=16, lengths=torch.tensor([12, 3, 0, 9, 12]),
                             dtype=torch.float32, tol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    fn, _, args = make_case(kind, 4, 3, 2, torch.tensor([4, 1, 2]))
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("kind", KINDS)
def test_double_backward_is_an_error(kind):
    fn, _, args = make_case(kind, 3, 2, 2, None)
    out = fn(*args)[0]
    (g,) = torch.autograd.grad(out.pow(2).sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


@pytest.mark.parametrize("kind", KINDS)
def test_loss_on_output_only_with_int32_lengths(kind):
    """out.sum() alone: the output gradient arrives expanded, the final states' as zeros."""
    fn, ref, args = make_case(kind, 6, 4, 3, torch.tensor([6, 2, 0, 4], dtype=torch.int32))
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    got = torch.autograd.grad(fn(*args)[0].sum(), leaves)
    want = torch.autograd.grad(ref(*args)[0].sum(), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_twice_gives_the_same_gradients(kind):
    """The backward must not overwrite what the forward saved."""
    fn, _, args = make_case(kind, 5, 3, 4, torch.tensor([5, 1, 3]))
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    loss = sum(o.pow(2).sum() for o in fn(*args))
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    T=st.integers(1, 6),
    B=st.integers(1, 4),
    H=st.integers(1, 5),
    data=st.data(),
)
def test_random_shapes_match_reference(kind, T, B, H, data):
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    assert_matches_reference(kind, T, B, H, lengths)
