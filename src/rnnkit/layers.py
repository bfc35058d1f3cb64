"""Multi-layer, optionally bidirectional LSTM, GRU and LayerNorm-LSTM layers that know about lengths.

Drop-in for :class:`torch.nn.LSTM` / :class:`torch.nn.GRU`: same constructor arguments,
parameter names, shapes, gate order and initialisation (state_dicts load both ways), same
return values. On top of that, ``forward`` takes the lengths of a padded batch directly::

    out, (h_n, c_n) = lstm(x, lengths=lengths)   # x (B, T, D) with batch_first=True

with no sorting and no packing: ``out`` is exactly 0 past each length, ``h_n``/``c_n`` are the
states at each sequence's last real step, and the reverse direction starts at each sequence's
own last element. A sequence of length 0 gets an all-zero output and its initial state as its
final state (the state simply passes through), which also makes one-step-at-a-time use with a
per-step length of 0 or 1 carry states correctly.

Two backends compute the same function: ``"native"`` runs torch's fused kernels
(:mod:`rnnkit._native`), ``"equations"`` the gate equations (:mod:`rnnkit._equations`).

Shapes: T time steps, B batch, D input features (``input_size``), H hidden units
(``hidden_size``), H_out = ``proj_size`` or H, L = ``num_layers``, dirs = 2 if bidirectional else 1.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _equations, _native
from ._lengths import check_lengths, permute, step_mask
from ._packing import Packing
from .cells import LSTMState

__all__ = ["LSTM", "GRU", "LayerNormLSTM"]

_BACKENDS = ("auto", "native", "equations")
_NUM_GATES = {"LSTM": 4, "GRU": 3, "LayerNormLSTM": 4}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(value) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


class _RNNBase(nn.Module):
    """Parameters, validation and the layer loop shared by :class:`LSTM`, :class:`GRU`, :class:`LayerNormLSTM`."""

    mode: str

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
                 backend) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_int(num_layers) or num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if not _is_int(proj_size) or not 0 <= proj_size < hidden_size:
            raise ValueError(f"proj_size must be an integer >= 0 and < hidden_size={hidden_size}, got {proj_size!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of 'auto', 'native', 'equations', got {backend!r}")
        if self.mode == "LayerNormLSTM" and backend == "native":
            raise ValueError("LayerNormLSTM has no native backend: use backend='equations' or 'auto'")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"dropout={dropout} has no effect with num_layers=1: dropout is applied to the output of "
                "every layer except the last",
                UserWarning,
                stacklevel=3,
            )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        if backend == "auto":
            backend = "equations" if self.mode == "LayerNormLSTM" else "native"
        self.backend = backend

        # Registered in torch's order (layer, direction, then w_ih, w_hh, b_ih, b_hh, w_hr), which
        # is the order the fused kernel expects its flat weight list in.
        G, H, H_out, dirs = _NUM_GATES[self.mode] * hidden_size, hidden_size, proj_size or hidden_size, self.dirs
        self._weight_names: list[list[list[str]]] = []  # [layer][direction] -> names
        for layer in range(num_layers):
            D = input_size if layer == 0 else dirs * H_out
            shapes = {"weight_ih": (G, D), "weight_hh": (G, H_out)}
            if bias:
                shapes |= {"bias_ih": (G,), "bias_hh": (G,)}
            if proj_size:
                shapes["weight_hr"] = (proj_size, H)
            if self.mode == "LayerNormLSTM":
                shapes |= {"ln_ih_weight": (G,), "ln_ih_bias": (G,), "ln_hh_weight": (G,), "ln_hh_bias": (G,),
                           "ln_c_weight": (H,), "ln_c_bias": (H,)}
            self._weight_names.append([])
            for suffix in ("", "_reverse")[:dirs]:
                names = [f"{name}_l{layer}{suffix}" for name in shapes]
                for full_name, shape in zip(names, shapes.values()):
                    self.register_parameter(full_name, nn.Parameter(torch.empty(shape)))
                self._weight_names[-1].append(names)
        self.reset_parameters()

    @property
    def dirs(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """Weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)) as in torch; layer-norm gains 1, shifts 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, weight in self.named_parameters():
            if name.startswith("ln_"):
                nn.init.constant_(weight, 1.0 if "_weight_" in name else 0.0)
            else:
                nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text + f", backend={self.backend!r}"

    def _layer_weights(self, layer: int) -> list[list[torch.Tensor]]:
        return [[getattr(self, name) for name in names] for names in self._weight_names[layer]]

    def forward(self, input, hx=None, lengths=None, mask=None):
        """Run the layers over ``input``; see the class docstring for shapes and return values."""
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if lengths is not None or mask is not None:
                raise ValueError(
                    "lengths and mask cannot be given with a PackedSequence, which carries its own lengths"
                )
            x, lengths = pad_packed_sequence(packed)  # (T, B, D), in the caller's batch order
            self._check_features(x)
            unbatched = False
        else:
            x, unbatched = self._time_major(input)  # (T, B, D)
        T, B = x.shape[:2]
        if mask is not None:
            if lengths is not None:
                raise ValueError("pass lengths or mask, not both")
            lengths = self._mask_lengths(mask, B, T)
        if lengths is not None:
            lengths = check_lengths(lengths, B, T, x.device)
        hx = self._check_hx(hx, B, unbatched)

        # All full length is the unmasked case (and lets the native backend use the fused stack).
        full = lengths is None or bool((lengths == T).all())
        output, hx_n = self._run(x, None if full else lengths, hx)  # (T, B, dirs * H_out), (L * dirs, B, ·)

        if packed is not None:
            output = self._pack_like(output, lengths, packed)
        elif unbatched:
            output, hx_n = output.squeeze(1), tuple(s.squeeze(1) for s in hx_n)
        elif self.batch_first:
            output = output.transpose(0, 1).contiguous()  # (B, T, dirs * H_out), contiguous like torch's
        return output, (hx_n[0] if self.mode == "GRU" else LSTMState(*hx_n))

    def _run(self, x, lengths, hx):
        """All layers over time-major ``x`` (T, B, D) -> (T, B, dirs * H_out), (L * dirs, B, ·)."""
        if self.backend == "equations":
            packing = Packing(lengths, x.shape[0], x.shape[1])  # packed once for all layers
            output, hx_n = self._run_packed(packing.pack(x), packing, hx)
            return packing.unpack(output), hx_n
        if lengths is None:  # all full length: torch's fused multi-layer call
            flat_weights = [w for layer in range(self.num_layers) for ws in self._layer_weights(layer) for w in ws]
            return _native.run_stack(self.mode, x, hx, flat_weights, has_biases=self.bias,
                                     num_layers=self.num_layers, dropout=self.dropout, training=self.training,
                                     bidirectional=self.bidirectional)
        return self._stack(
            lambda x, layer_hx, weights: _native.run_layer(self.mode, x, lengths, layer_hx, weights,
                                                           has_biases=self.bias),
            x, hx,
        )

    def _run_packed(self, x, packing, hx=None):
        """All layers on the equations backend over ``x`` (N, D) in the packed order of ``packing``
        (a :class:`rnnkit._packing.Packing`) -> (N, dirs * H_out) in that order, (L * dirs, B, ·)."""
        return self._stack(
            lambda x, layer_hx, weights: _equations.run_packed(self.mode, x, packing, layer_hx, weights,
                                                               has_biases=self.bias),
            x, hx,
        )

    def _stack(self, run_layer, x, hx):
        """``run_layer(x, layer_hx, weights) -> (x, states)`` for each layer in turn, with dropout between
        layers, never after the last (as in ``torch.nn.LSTM``); the final states concatenated."""
        dirs, finals = self.dirs, []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            layer_hx = None if hx is None else tuple(s[layer * dirs : (layer + 1) * dirs] for s in hx)
            x, states = run_layer(x, layer_hx, self._layer_weights(layer))
            finals.append(states)
        return x, tuple(torch.cat(states) for states in zip(*finals))

    def _check_features(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{self.mode}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {x.shape[-1]}"
            )

    def _time_major(self, input: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """``input`` as (T, B, D), and whether it came unbatched (T, D)."""
        if input.dim() not in (2, 3):
            raise ValueError(
                f"{self.mode}: expected input to be 2-D (T, D) unbatched or 3-D batched, got {input.dim()}-D"
            )
        self._check_features(input)
        if input.dim() == 2:
            return input.unsqueeze(1), True
        return (input.transpose(0, 1), False) if self.batch_first else (input, False)

    @staticmethod
    def _mask_lengths(mask, B: int, T: int) -> torch.Tensor:
        """Lengths (B,) of a (B, T) bool ``mask`` that is True on a prefix of each sequence."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if tuple(mask.shape) != (B, T):
            raise ValueError(f"mask must have shape (B, T) = {(B, T)}, got {tuple(mask.shape)}")
        lengths = mask.sum(1)  # (B,)
        if not torch.equal(step_mask(lengths, T).T, mask):
            raise ValueError("mask must be True on a prefix of each sequence (real steps first, then padding)")
        return lengths

    def _check_hx(self, hx, B: int, unbatched: bool) -> tuple[torch.Tensor, ...] | None:
        """``hx`` as ``(h_0,)`` or ``(h_0, c_0)``, each (L * dirs, B, ·); None stays None (zero state)."""
        if hx is None:
            return None
        batch = () if unbatched else (B,)
        h_shape = (self.num_layers * self.dirs, *batch, self.proj_size or self.hidden_size)
        if self.mode == "GRU":
            states = (("hx", hx, h_shape),)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError(f"{self.mode}: hx must be a pair (h_0, c_0), got {_shape(hx)}")
            c_shape = (self.num_layers * self.dirs, *batch, self.hidden_size)
            states = (("h_0", hx[0], h_shape), ("c_0", hx[1], c_shape))
        for label, state, shape in states:
            if _shape(state) != shape:
                raise ValueError(f"{self.mode}: {label} must have shape {shape}, got {_shape(state)}")
        return tuple(state.unsqueeze(1) if unbatched else state for _, state, _ in states)

    @staticmethod
    def _pack_like(output: torch.Tensor, lengths: torch.Tensor, like: PackedSequence) -> PackedSequence:
        """Pack ``output`` (T, B, ·), in the caller's batch order, with the same indices as ``like``."""
        if like.sorted_indices is not None:
            output = permute(output, 1, like.sorted_indices, like.unsorted_indices)
            lengths = lengths[like.sorted_indices]
        data = pack_padded_sequence(output, lengths, enforce_sorted=True).data  # (sum(lengths), dirs * H_out)
        return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class LSTM(_RNNBase):
    r"""A multi-layer LSTM, :class:`torch.nn.LSTM`-compatible and length-aware.

    Each layer runs :class:`rnnkit.LSTMCell`'s step over time,

    .. math::
        \begin{array}{ll}
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = W_{hr} (o_t \odot \tanh(c_t)) \quad (W_{hr} = I \text{ without projection})
        \end{array}

    and layer :math:`l > 0` reads layer :math:`l - 1`'s output (after dropout in training).

    Args: ``input_size`` D, ``hidden_size`` H, ``num_layers`` L, ``bias``, ``batch_first``,
    ``dropout`` (between layers), ``bidirectional``, ``proj_size`` (H_out; 0 = no projection),
    and keyword-only ``backend``: ``"native"`` (torch's fused kernels, the default via
    ``"auto"``) or ``"equations"``.

    ``forward(input, hx=None, lengths=None, mask=None)``:

    * ``input``: (T, B, D), (B, T, D) with ``batch_first``, unbatched (T, D), or a
      :class:`~torch.nn.utils.rnn.PackedSequence` (then ``output`` is packed the same way).
    * ``hx``: ``(h_0, c_0)``, (L * dirs, B, H_out) and (L * dirs, B, H); zeros when None.
    * ``lengths``: (B,) integers, any order, any device; or ``mask``: (B, T) bool, True at
      real steps (a prefix of each row). Neither means every sequence is T steps long.

    Returns ``output, LSTMState(h_n, c_n)``: ``output`` (T, B, dirs * H_out) (or batch-first),
    exactly 0 past each length; ``h_n``, ``c_n`` shaped like ``h_0``, ``c_0``, taken at each
    sequence's last real step. A length-0 sequence gives zero output and ``h_0``, ``c_0`` back.

    A unidirectional layer can also be run one step at a time, carrying the state; this
    gives the same numbers as the whole sequence at once:

    >>> lstm = LSTM(3, 5, num_layers=2)
    >>> x = torch.randn(7, 2, 3)  # (T, B, D)
    >>> whole, _ = lstm(x)
    >>> state, steps = None, []
    >>> for t in range(7):
    ...     y, state = lstm(x[t : t + 1], state)
    ...     steps.append(y)
    >>> torch.allclose(torch.cat(steps), whole, atol=1e-6)
    True
    """

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 *, backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
                         backend)


class GRU(_RNNBase):
    r"""A multi-layer GRU, :class:`torch.nn.GRU`-compatible and length-aware.

    Each layer runs :class:`rnnkit.GRUCell`'s step over time,

    .. math::
        \begin{array}{ll}
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{array}

    Arguments and ``forward`` as in :class:`LSTM`, without ``proj_size``; ``hx`` is ``h_0``
    (L * dirs, B, H) and the return value is ``output, h_n``.
    """

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 *, backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, backend)


class LayerNormLSTM(_RNNBase):
    r"""A multi-layer layer-normalised LSTM (Ba et al. 2016, sec. 3.1), length-aware.

    Each layer runs :class:`rnnkit.LayerNormLSTMCell`'s step over time,

    .. math::
        \begin{array}{ll}
        (a_i, a_f, a_g, a_o) = \mathrm{LN}_{ih}(W_{ih} x_t) + \mathrm{LN}_{hh}(W_{hh} h_{t-1}) + b_{ih} + b_{hh} \\
        c_t = \sigma(a_f) \odot c_{t-1} + \sigma(a_i) \odot \tanh(a_g) \\
        h_t = \sigma(a_o) \odot \tanh(\mathrm{LN}_c(c_t))
        \end{array}

    Parameters are named like :class:`LSTM`'s plus ``ln_ih_weight_l{k}``, ``ln_ih_bias_l{k}``,
    ``ln_hh_weight_l{k}``, ``ln_hh_bias_l{k}``, ``ln_c_weight_l{k}``, ``ln_c_bias_l{k}``
    (``_reverse`` for the reverse direction). Arguments and ``forward`` as in :class:`LSTM`,
    without ``proj_size``; there is no fused kernel, so only ``backend="equations"`` (which
    ``"auto"`` selects) exists.
    """

    mode = "LayerNormLSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 *, backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, backend)
