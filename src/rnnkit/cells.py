"""One time step of an LSTM, a GRU and a LayerNorm-LSTM, written as their gate equations.

The cells use the parameter names, shapes, gate order and initialisation of
:class:`torch.nn.LSTMCell` / :class:`torch.nn.GRUCell`, so their state_dicts load into each
other both ways. They are the readable definition of each recurrence; the layers in
:mod:`rnnkit.layers` run the same equations over whole padded batches.

Letters: B batch, D input features, H hidden units.
"""

from __future__ import annotations

import math
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LSTMState", "LSTMCell", "GRUCell", "LayerNormLSTMCell"]

LSTMState = namedtuple("LSTMState", "h c")
LSTMState.__doc__ = "The state of an LSTM: hidden state ``h`` and cell state ``c``."


class _CellBase(nn.Module):
    """Parameters ``weight_ih`` (G*H, D), ``weight_hh`` (G*H, H), ``bias_ih``, ``bias_hh`` (G*H,)."""

    num_gates: int

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        G = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G))
            self.bias_hh = nn.Parameter(torch.empty(G))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), as in torch."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def _batched(self, input: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """``input`` as (B, D), and whether it came without a batch dimension."""
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: expected input to be 1-D (D,) or 2-D (B, D), got {input.dim()}-D")
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {input.shape[-1]}"
            )
        return (input.unsqueeze(0), True) if input.dim() == 1 else (input, False)

    def _state(self, state: torch.Tensor | None, input: torch.Tensor, unbatched: bool, label: str) -> torch.Tensor:
        """``state`` as (B, H), zeros when None; its shape must match the input's batch."""
        B = input.shape[0]
        if state is None:
            return input.new_zeros(B, self.hidden_size)
        expected = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        if tuple(state.shape) != expected:
            raise ValueError(f"{type(self).__name__}: {label} must have shape {expected}, got {tuple(state.shape)}")
        return state.unsqueeze(0) if unbatched else state


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
    likewise (4H, H), ``bias_ih`` / ``bias_hh`` the biases (4H,).

    ``forward(input, hx=None)``: ``input`` (B, D) or unbatched (D,); ``hx`` a pair ``(h, c)``
    each (B, H) or (H,), zeros when None. Returns ``LSTMState(h', c')``.
    """

    num_gates = 4

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None) -> LSTMState:
        x, unbatched = self._batched(input)  # (B, D)
        h, c = (None, None) if hx is None else hx
        h, c = self._state(h, x, unbatched, "h"), self._state(c, x, unbatched, "c")  # (B, H)
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)  # (B, 4H)
        i, f, g, o = gates.chunk(4, -1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return LSTMState(h.squeeze(0), c.squeeze(0)) if unbatched else LSTMState(h, c)


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

    num_gates = 3

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        x, unbatched = self._batched(input)  # (B, D)
        h = self._state(hx, x, unbatched, "hx")  # (B, H)
        x_r, x_z, x_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, -1)  # (B, H) each
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, -1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h.squeeze(0) if unbatched else h


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
    ``forward`` is called like :class:`LSTMCell`'s.
    """

    num_gates = 4
    eps = 1e-5

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size, bias)
        G = self.num_gates * hidden_size
        self.ln_ih_weight, self.ln_ih_bias = nn.Parameter(torch.ones(G)), nn.Parameter(torch.zeros(G))
        self.ln_hh_weight, self.ln_hh_bias = nn.Parameter(torch.ones(G)), nn.Parameter(torch.zeros(G))
        self.ln_c_weight = nn.Parameter(torch.ones(hidden_size))
        self.ln_c_bias = nn.Parameter(torch.zeros(hidden_size))

    def reset_parameters(self) -> None:
        """Weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)); layer-norm gains 1 and shifts 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, weight in self.named_parameters():
            if not name.startswith("ln_"):
                nn.init.uniform_(weight, -bound, bound)
            else:
                nn.init.constant_(weight, 1.0 if name.endswith("_weight") else 0.0)

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None) -> LSTMState:
        x, unbatched = self._batched(input)  # (B, D)
        h, c = (None, None) if hx is None else hx
        h, c = self._state(h, x, unbatched, "h"), self._state(c, x, unbatched, "c")  # (B, H)
        G, H = 4 * self.hidden_size, self.hidden_size
        gates = (
            F.layer_norm(F.linear(x, self.weight_ih), (G,), self.ln_ih_weight, self.ln_ih_bias, self.eps)
            + F.layer_norm(F.linear(h, self.weight_hh), (G,), self.ln_hh_weight, self.ln_hh_bias, self.eps)
        )  # (B, 4H)
        if self.bias:
            gates = gates + self.bias_ih + self.bias_hh
        i, f, g, o = gates.chunk(4, -1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(F.layer_norm(c, (H,), self.ln_c_weight, self.ln_c_bias, self.eps))
        return LSTMState(h.squeeze(0), c.squeeze(0)) if unbatched else LSTMState(h, c)
