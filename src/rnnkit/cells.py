"""One time step of an LSTM, a GRU, an Elman RNN and a LayerNorm-LSTM: an input projection, then the step.

The cells use the parameter names, shapes, gate order, initialisation, arguments and return values of
:class:`torch.nn.LSTMCell` / :class:`torch.nn.GRUCell` / :class:`torch.nn.RNNCell`, so their
state_dicts load into each other both ways. Each recurrence is defined once, in
:mod:`rnnkit._steps`: a cell projects its input and calls that step, and the layers of
:mod:`rnnkit.layers` run the same equations over whole padded batches.

Letters: B batch, D input features, H hidden units, G = gates * H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._kinds import KINDS, Kind, check_size, rnn_mode
from ._steps import layer_norm

__all__ = ["RNNInputError", "LSTMCell", "GRUCell", "RNNCell", "LayerNormLSTMCell"]


class RNNInputError(ValueError, RuntimeError):
    """A forward argument (input, hx) that does not fit the cell or layer: wrong shape or dtype.

    Both a ``RuntimeError``, which torch raises for most of these mistakes, and a ``ValueError``,
    which torch raises for the others and rnnkit raised before, so ``except`` clauses written for
    either keep working.
    """


def check_dtype(owner: str, tensor: torch.Tensor, weight: torch.Tensor, label: str = "input") -> None:
    """:class:`RNNInputError` naming both dtypes unless ``tensor`` has ``weight``'s dtype."""
    if tensor.dtype != weight.dtype:
        raise RNNInputError(
            f"{owner}: RNN {label} dtype ({tensor.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert {label}: {label}.to({weight.dtype}), or convert model: model.to({tensor.dtype})"
        )


def check_hx(owner: str, hx, kind: Kind, leading: tuple[int, ...], weight: torch.Tensor, labels: tuple[str, str], *,
             hidden_size: int, proj_size: int = 0) -> tuple[torch.Tensor, ...]:
    """``hx`` as a tuple of states, each checked to be (*leading, size) for the kind's state sizes and of
    ``weight``'s dtype; a pair named ``labels`` for the kinds with a cell state, a tensor for the others."""
    if kind.has_cell:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise RNNInputError(f"{owner}: hx must be a pair ({labels[0]}, {labels[1]}), got {_describe(hx)}")
        states = tuple(zip(labels, hx))
    else:
        states = (("hx", hx),)
    for (label, state), size in zip(states, kind.state_sizes(hidden_size, proj_size)):
        if _describe(state) != (*leading, size):
            raise RNNInputError(f"{owner}: {label} must have shape {(*leading, size)}, got {_describe(state)}")
        check_dtype(owner, state, weight, label)
    return tuple(state for _, state in states)


class _CellBase(nn.Module):
    """Parameters ``weight_ih`` (G, D), ``weight_hh`` (G, H), ``bias_ih``, ``bias_hh`` (G,), plus the kind's extras."""

    _mode: str

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        factory = {"device": device, "dtype": dtype}
        G = self._kind.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        for name, shape in self._kind.extra_shapes(hidden_size).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    @property
    def _kind(self) -> Kind:
        return KINDS[self._mode]

    def reset_parameters(self) -> None:
        """Weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)) as in torch; layer-norm gains 1, shifts 0."""
        self._kind.reset_parameters(self.named_parameters(), self.hidden_size)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias is True else f", bias={self.bias}")

    def forward(self, input: torch.Tensor, hx=None):
        """One step from ``input`` (B, D) or unbatched (D,) and ``hx`` (see the class docstring)."""
        x, unbatched = self._batched(input)  # (B, D)
        state = self._state(hx, x, unbatched)  # each (B, ·)
        state = self._step(x, *state)
        if unbatched:
            state = tuple(s.squeeze(0) for s in state)
        return state if self._kind.has_cell else state[0]

    def _step(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """torch's input projection W_ih x + b_ih (B, G), then the kind's step."""
        xg = F.linear(x, self.weight_ih, self.bias_ih)  # (B, G)
        new = self._kind.step(xg, *state, self.weight_hh, self.bias_hh)
        return new if self._kind.has_cell else (new,)

    def _batched(self, input: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """``input`` as (B, D), and whether it came without a batch dimension."""
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise RNNInputError(f"{name}: expected input to be 1-D (D,) or 2-D (B, D), got {input.dim()}-D")
        if input.shape[-1] != self.input_size:
            raise RNNInputError(
                f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {input.shape[-1]}"
            )
        check_dtype(name, input, self.weight_ih)
        return (input.unsqueeze(0), True) if input.dim() == 1 else (input, False)

    def _state(self, hx, x: torch.Tensor, unbatched: bool) -> tuple[torch.Tensor, ...]:
        """``hx`` as a tuple of (B, ·) states, zeros when None; each must match the input's batch."""
        if hx is None:
            return self._kind.zero_state(x, x.shape[0], hidden_size=self.hidden_size)
        batch = () if unbatched else (x.shape[0],)
        states = check_hx(type(self).__name__, hx, self._kind, batch, self.weight_ih, ("h", "c"),
                          hidden_size=self.hidden_size)
        return tuple(state.unsqueeze(0) if unbatched else state for state in states)


def _describe(value) -> tuple[int, ...] | str:
    """A tensor's shape, or the name of the type that is not a tensor."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


class LSTMCell(_CellBase):
    r"""One LSTM step (Hochreiter & Schmidhuber 1997, with a forget gate), like :class:`torch.nn.LSTMCell`.

    .. math::
        \begin{array}{ll}
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \\
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' = f \odot c + i \odot g \\
        h' = o \odot \tanh(c')
        \end{array}

    ``weight_ih`` stacks :math:`W_{ii}, W_{if}, W_{ig}, W_{io}` by rows (4H, D), ``weight_hh``
    likewise (4H, H), ``bias_ih`` / ``bias_hh`` the biases (4H,). Arguments as torch's:
    ``input_size``, ``hidden_size``, ``bias``, ``device``, ``dtype``.

    ``forward(input, hx=None)``: ``input`` (B, D) or unbatched (D,); ``hx`` a pair ``(h, c)``
    each (B, H) or (H,), zeros when None. Returns the tuple ``(h', c')``.
    """

    _mode = "LSTM"


class GRUCell(_CellBase):
    r"""One GRU step (Cho et al. 2014), like :class:`torch.nn.GRUCell`.

    .. math::
        \begin{array}{ll}
        r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z = \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' = (1 - z) \odot n + z \odot h
        \end{array}

    ``forward(input, hx=None)``: ``input`` (B, D) or (D,); ``hx`` (B, H) or (H,), zeros when
    None. Returns ``h'``.
    """

    _mode = "GRU"


class RNNCell(_CellBase):
    r"""One Elman RNN step (Elman 1990), like :class:`torch.nn.RNNCell`.

    .. math::
        h' = \phi(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}), \qquad \phi = \tanh \text{ or } \mathrm{ReLU}

    Arguments as torch's: ``input_size``, ``hidden_size``, ``bias``, ``nonlinearity`` (``"tanh"``
    or ``"relu"``; anything else is a ``ValueError`` here, where torch only fails in ``forward``),
    ``device``, ``dtype``. ``forward(input, hx=None)`` as :class:`GRUCell`'s.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        self._mode = rnn_mode(nonlinearity)
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.nonlinearity == "tanh" else f", nonlinearity={self.nonlinearity}")


class LayerNormLSTMCell(_CellBase):
    r"""One layer-normalised LSTM step, Ba, Kiros & Hinton 2016, "Layer Normalization", sec. 3.1, eq. 20-22.

    .. math::
        \begin{array}{ll}
        (a_i, a_f, a_g, a_o) = \mathrm{LN}_{ih}(W_{ih} x) + \mathrm{LN}_{hh}(W_{hh} h) + b_{ih} + b_{hh} \\
        i = \sigma(a_i), \quad f = \sigma(a_f), \quad g = \tanh(a_g), \quad o = \sigma(a_o) \\
        c' = f \odot c + i \odot g \\
        h' = o \odot \tanh(\mathrm{LN}_c(c'))
        \end{array}

    :math:`\mathrm{LN}(a) = \gamma \odot (a - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta` over the
    feature dimension, with its own gain ``ln_*_weight`` (init 1) and shift ``ln_*_bias``
    (init 0) for the input projection (4H), the recurrent projection (4H) and the cell (H).
    Normalising the two projections separately keeps the recurrent term at a fixed scale
    whatever the input does, which is what stabilises the hidden dynamics (sec. 3.1).
    Called like :class:`LSTMCell`.
    """

    _mode = "LayerNormLSTM"
    eps = 1e-5

    def _step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The projection LN_ih(W_ih x) plus every constant term of the gates (LN_hh's shift included), then
        the step, which adds LN_hh(W_hh h) without a shift."""
        shift = self.ln_ih_bias + self.ln_hh_bias
        if self.bias:
            shift = shift + self.bias_ih + self.bias_hh
        xg = layer_norm(F.linear(x, self.weight_ih), self.ln_ih_weight, shift, self.eps)  # (B, 4H)
        return self._kind.step(xg, h, c, self.weight_hh, self.ln_hh_weight, self.ln_c_weight, self.ln_c_bias,
                               self.eps)
