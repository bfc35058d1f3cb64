"""rnnkit's layers and cells on torch's own module test samples (``common_modules.module_db``).

For every module_db entry of ``torch.nn.LSTM/GRU/RNN`` and their cells, rnnkit's twin is built from the
same constructor arguments (on both backends for the layers), given the torch module's state_dict, and
run on the same inputs: outputs and final states, first and second derivatives must be torch's, and
what torch's ``test_modules.py`` checks of every module (factory kwargs, repr, pickling, non-contiguous
inputs, train and eval, error inputs) must hold too.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
from torch.utils._pytree import tree_flatten, tree_unflatten

import rnnkit

TWINS = {nn.LSTM: rnnkit.LSTM, nn.GRU: rnnkit.GRU, nn.RNN: rnnkit.RNN,
         nn.LSTMCell: rnnkit.LSTMCell, nn.GRUCell: rnnkit.GRUCell, nn.RNNCell: rnnkit.RNNCell}
ENTRIES = [info for info in module_db if info.module_cls in TWINS]
LAYERS = (nn.LSTM, nn.GRU, nn.RNN)
CASES = [pytest.param(info, backend, id=f"{info.name}-{backend or 'cell'}") for info in ENTRIES
         for backend in (("native", "equations") if info.module_cls in LAYERS else (None,))]
TOL = {"rtol": 1e-10, "atol": 1e-10}


def test_module_db_has_every_kind():
    assert {info.module_cls for info in ENTRIES} == set(TWINS)


def _samples(info, training, dtype=torch.float64):
    # with_packed_sequence adds PackedSequence inputs, which the GRU and RNN generators know how to make
    extra = {"with_packed_sequence": True} if info.module_cls in (nn.GRU, nn.RNN) else {}
    return info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training, **extra)


def _build(info, backend, constructor, **factory):
    """torch's module and rnnkit's, the latter holding the former's state_dict."""
    theirs = info.module_cls(*constructor.args, **constructor.kwargs, **factory)
    ours = TWINS[info.module_cls](*constructor.args, **constructor.kwargs, **factory,
                                  **({"backend": backend} if backend else {}))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _pair(info, backend, sample, training):
    ours, theirs = _build(info, backend, sample.constructor_input, dtype=torch.float64)
    return ours.train(training), theirs.train(training)


def _tensors(value) -> list[torch.Tensor]:
    """The tensors of a module's input or output, in order (a PackedSequence's data for the sequence)."""
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in _tensors(item)]


def _call(module, sample):
    return module(*sample.forward_input.args, **sample.forward_input.kwargs)


def _parameters(module, names):
    return [dict(module.named_parameters())[name] for name in names]


def _projection(tensors, seed):
    """A fixed random linear function of ``tensors``, the same for the same shapes."""
    generator = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=generator, dtype=t.dtype)).sum() for t in tensors)


def _derivatives(module, sample, names):
    """Outputs, first derivatives and second derivatives (of a projection of the first) with respect to the
    inputs that require grad and to the parameters ``names``."""
    outputs = _tensors(_call(module, sample))
    leaves = [t for t in _tensors(sample.forward_input.args) if t.requires_grad] + _parameters(module, names)
    first = torch.autograd.grad(_projection(outputs, 1), leaves, create_graph=True, allow_unused=True,
                                materialize_grads=True)
    second = torch.autograd.grad(_projection([g for g in first if g.requires_grad], 2), leaves, allow_unused=True,
                                 materialize_grads=True)
    return outputs, first, second


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("info, backend", CASES)
def test_outputs_and_derivatives_are_torchs(info, backend, training):
    for sample in _samples(info, training):
        ours, theirs = _pair(info, backend, sample, training)
        names = [name for name, _ in theirs.named_parameters()]
        got, expected = _derivatives(ours, sample, names), _derivatives(theirs, sample, names)
        for part, mine, torchs in zip(("output", "gradient", "second derivative"), got, expected):
            torch.testing.assert_close(mine, torchs, **TOL, msg=lambda m, part=part: f"{part}: {m}")
        if isinstance(sample.forward_input.args[0], PackedSequence):
            out = _call(ours, sample)[0]
            assert torch.equal(out.batch_sizes, sample.forward_input.args[0].batch_sizes)


@pytest.mark.parametrize("info, backend", CASES)
def test_gradcheck_and_gradgradcheck(info, backend):
    """Numerical against analytical derivatives of the outputs with respect to inputs and parameters, on the
    first samples (unbatched tensors, with and without a state)."""
    for sample in list(_samples(info, training=False))[:2]:
        ours, _ = _pair(info, backend, sample, training=False)
        names = [name for name, _ in ours.named_parameters()]
        leaves, spec = tree_flatten((sample.forward_input.args, sample.forward_input.kwargs))

        def function(*flat):
            params, inputs = dict(zip(names, flat[: len(names)])), iter(flat[len(names) :])
            args, kwargs = tree_unflatten([next(inputs) if isinstance(leaf, torch.Tensor) else leaf
                                           for leaf in leaves], spec)
            return tuple(_tensors(functional_call(ours, params, args, kwargs)))

        flat = [*(p.detach().requires_grad_() for p in _parameters(ours, names)),
                *(t for t in leaves if isinstance(t, torch.Tensor))]
        assert torch.autograd.gradcheck(function, flat, fast_mode=True)
        assert torch.autograd.gradgradcheck(function, flat, fast_mode=True)


@pytest.mark.parametrize("info, backend", CASES)
def test_factory_kwargs_repr_and_to(info, backend):
    for sample in _samples(info, training=False):
        ours, theirs = _build(info, backend, sample.constructor_input, device="cpu", dtype=torch.float64)
        assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in ours.parameters())
        suffix = f", backend='{backend}')" if backend else ")"
        assert repr(ours) == repr(theirs)[:-1] + suffix
        ours.to(torch.float32)
        assert all(p.dtype == torch.float32 for p in ours.parameters())
        if backend:  # a layer's flat weights follow its parameters, as torch's do
            assert [w.dtype for w in ours._flat_weights] == [torch.float32] * len(theirs._flat_weights)


@pytest.mark.parametrize("info, backend", CASES)
def test_pickle_round_trip(info, backend):
    for sample in _samples(info, training=False):
        ours, _ = _pair(info, backend, sample, training=False)
        copy = pickle.loads(pickle.dumps(ours))
        torch.testing.assert_close(_tensors(_call(copy, sample)), _tensors(_call(ours, sample)), rtol=0, atol=0)


def _non_contiguous(value):
    """Every tensor of ``value`` as a non-contiguous view holding the same numbers."""
    leaves, spec = tree_flatten(value)
    views = [torch.stack([leaf.detach(), leaf.detach()], -1)[..., 0].requires_grad_(leaf.requires_grad)
             if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
    return tree_unflatten(views, spec)


@pytest.mark.parametrize("info, backend", CASES)
def test_non_contiguous_inputs(info, backend):
    for sample in _samples(info, training=False):
        if isinstance(sample.forward_input.args[0], PackedSequence):
            continue  # a PackedSequence's data is made by packing, always contiguous
        ours, theirs = _pair(info, backend, sample, training=False)
        args = _non_contiguous(sample.forward_input.args)
        assert not all(t.is_contiguous() for t in tree_flatten(args)[0] if t.numel() > 1)
        torch.testing.assert_close(_tensors(ours(*args)), _tensors(theirs(*sample.forward_input.args)), **TOL)


@pytest.mark.parametrize("info, backend", CASES)
def test_error_inputs_raise_torchs_exception_type(info, backend):
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                           training=False)
    assert errors
    for error in errors:
        sample = error.module_error_input
        constructor = sample.constructor_input
        for cls, extra in ((info.module_cls, {}), (TWINS[info.module_cls], {"backend": backend} if backend else {})):
            with pytest.raises(error.error_type):
                module = cls(*constructor.args, **constructor.kwargs, **extra)
                assert error.error_on == ModuleErrorEnum.FORWARD_ERROR, "built what must not be built"
                _call(module, sample)
