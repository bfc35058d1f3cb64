"""Multi-layer, optionally bidirectional LSTM, GRU, Elman RNN and LayerNorm-LSTM layers that know about lengths.

Drop-in for :class:`torch.nn.LSTM` / :class:`torch.nn.GRU` / :class:`torch.nn.RNN`: same
constructor arguments (``device``/``dtype`` included), parameter names, shapes, gate order and
initialisation (state_dicts load both ways), the same attributes (``mode``, ``all_weights``,
``_flat_weights``, ``_flat_weights_names``, a ``flatten_parameters`` that has nothing to do), the
same return values (plain tuples) and exception types. On top of that, ``forward`` takes the lengths of a padded batch directly::

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

import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _equations, _native
from ._kinds import KINDS, Kind, check_size, rnn_mode
from ._lengths import check_lengths, permute, step_mask
from .cells import RNNInputError, check_dtype, check_hx
from .packing import Packing

__all__ = ["LSTM", "GRU", "RNN", "LayerNormLSTM"]

_BACKENDS = ("auto", "native", "equations")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")


def _no_projection(owner: str, proj_size) -> None:
    """torch's ``ValueError`` for a ``proj_size`` given to a kind without projections."""
    if proj_size is not None:
        raise ValueError(f"proj_size argument is only supported for LSTM, not {owner}")


class _RNNBase(nn.Module):
    """Parameters, validation and the layer loop shared by :class:`LSTM`, :class:`GRU`, :class:`RNN` and
    :class:`LayerNormLSTM`; what differs between them is their :class:`rnnkit._kinds.Kind`, named by ``mode``."""

    def __init__(self, mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
                 device, dtype, backend) -> None:
        super().__init__()
        self.mode = mode
        # torch's checks and exception types, in torch's order
        if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        for name, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            _check_bool(name, value)
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        if not isinstance(num_layers, int) or isinstance(num_layers, bool):
            raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}")
        if num_layers <= 0:
            raise ValueError(f"num_layers must be greater than zero, got {num_layers}")
        if not isinstance(proj_size, int) or isinstance(proj_size, bool):
            raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
        if not 0 <= proj_size < hidden_size:
            raise ValueError(f"proj_size must be >= 0 and smaller than hidden_size={hidden_size}, got {proj_size}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of 'auto', 'native', 'equations', got {backend!r}")
        if self._kind.native is None and backend == "native":
            raise ValueError(f"{mode} has no native backend: use backend='equations' or 'auto'")
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
            backend = "equations" if self._kind.native is None else "native"
        self.backend = backend

        # Registered in torch's order (layer, direction, then w_ih, w_hh, b_ih, b_hh, w_hr), which
        # is the order the fused kernel expects its flat weight list in; a kind's extras come last.
        G, H, H_out = self._kind.num_gates * hidden_size, hidden_size, proj_size or hidden_size
        factory = {"device": device, "dtype": dtype}
        self._all_weights: list[list[str]] = []  # [layer * dirs + direction] -> names, as torch's
        for layer in range(num_layers):
            D = input_size if layer == 0 else self.dirs * H_out
            shapes = {"weight_ih": (G, D), "weight_hh": (G, H_out)}
            if bias:
                shapes |= {"bias_ih": (G,), "bias_hh": (G,)}
            if proj_size:
                shapes["weight_hr"] = (proj_size, H)
            shapes |= self._kind.extra_shapes(H)
            for suffix in ("", "_reverse")[: self.dirs]:
                names = [f"{name}_l{layer}{suffix}" for name in shapes]
                for full_name, shape in zip(names, shapes.values()):
                    self.register_parameter(full_name, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append(names)
        self._flat_weights_names = [name for names in self._all_weights for name in names]
        self.reset_parameters()

    @property
    def _kind(self) -> Kind:
        return KINDS[self.mode]

    @property
    def dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters of each (layer, direction), ``[w_ih, w_hh, b_ih, b_hh, w_hr]`` as in torch."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> list[torch.Tensor]:
        """Every parameter in torch's flat order (``nn.RNNBase._flat_weights``), read when used."""
        return [getattr(self, name) for name in self._flat_weights_names]

    def flatten_parameters(self) -> None:
        """Does nothing: torch compacts the weights into one buffer for cuDNN here; rnnkit's weights are
        always used where they are. Kept so that code written for ``torch.nn.LSTM`` runs unchanged."""

    def reset_parameters(self) -> None:
        """Weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)) as in torch; layer-norm gains 1, shifts 0."""
        self._kind.reset_parameters(self.named_parameters(), self.hidden_size)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("proj_size", 0), ("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text + f", backend={self.backend!r}"

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
        return output, (hx_n if self._kind.has_cell else hx_n[0])

    def _run(self, x, lengths, hx):
        """All layers over time-major ``x`` (T, B, D) -> (T, B, dirs * H_out), (L * dirs, B, ·)."""
        kind, fused = self._kind, self._fused(x, *(hx or ()))
        if fused and lengths is None:  # all full length: torch's fused multi-layer call
            return _native.run_stack(kind, x, hx, self._flat_weights, has_biases=self.bias,
                                     num_layers=self.num_layers, dropout=self.dropout, training=self.training,
                                     bidirectional=self.bidirectional)
        if fused and kind.flag_gates:
            return self._stack(
                lambda x, layer_hx, weights: _native.run_layer(kind, x, lengths, layer_hx, weights,
                                                               has_biases=self.bias),
                x, hx,
            )
        packing = Packing(lengths, x.shape[0], x.shape[1])  # packed once for all layers
        output, hx_n = self.run_packed(packing.pack(x), packing, hx)
        return packing.unpack(output), hx_n

    def run_packed(self, x: torch.Tensor, packing: Packing, hx=None):
        """All layers over rows ``x`` (N, D) already in the packed order of ``packing``.

        ``packing`` is an :class:`rnnkit.packing.Packing` (the real steps of a padded batch, longest
        sequence first, time-major, as in a ``PackedSequence``); ``hx`` is None (zeros) or the tuple
        ``(h_0,)`` / ``(h_0, c_0)``, each (L * dirs, B, ·) in batch order. Returns the output
        (N, dirs * H_out) in the same packed order and the final states as a tuple like ``hx``. This
        skips the padding and reordering of ``forward``, for callers that build the packed rows
        themselves; ``backend="native"`` runs torch's packed op, ``"equations"`` the gate equations.
        """
        self._check_features(x)
        if self._fused(x, *(hx or ())):
            return _native.run_packed(self._kind, x, packing, hx, self._flat_weights, has_biases=self.bias,
                                      num_layers=self.num_layers, dropout=self.dropout, training=self.training,
                                      bidirectional=self.bidirectional)
        return self._stack(
            lambda x, layer_hx, weights: _equations.run_packed(self.mode, x, packing, layer_hx, weights,
                                                               has_biases=self.bias),
            x, hx,
        )

    def _fused(self, *tensors: torch.Tensor) -> bool:
        """Whether torch's fused kernels run: on the native backend, unless a ``torch.func`` transform (vmap,
        jacrev, ...) runs over ``tensors`` or the weights. torch's fused ops have no batching rule, so then the
        equations run instead, as they would on ``backend="equations"``."""
        return self.backend == "native" and not _equations.transformed([*tensors, *self._flat_weights])

    def _stack(self, run_layer, x, hx):
        """``run_layer(x, layer_hx, weights) -> (x, states)`` for each layer in turn, with dropout between
        layers, never after the last (as in ``torch.nn.LSTM``); the final states concatenated."""
        dirs, weights, finals = self.dirs, self.all_weights, []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            layer_hx = None if hx is None else tuple(s[layer * dirs : (layer + 1) * dirs] for s in hx)
            x, states = run_layer(x, layer_hx, weights[layer * dirs : (layer + 1) * dirs])
            finals.append(states)
        return x, tuple(torch.cat(states) for states in zip(*finals))

    def _check_features(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.shape[-1] != self.input_size:
            raise RNNInputError(
                f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {x.shape[-1]}"
            )
        check_dtype(name, x, self.weight_ih_l0)

    def _time_major(self, input: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """``input`` as (T, B, D), and whether it came unbatched (T, D)."""
        name = type(self).__name__
        if input.dim() not in (2, 3):
            raise RNNInputError(
                f"{name}: expected input to be 2-D (T, D) unbatched or 3-D batched, got {input.dim()}-D"
            )
        self._check_features(input)
        if input.shape[1 if input.dim() == 3 and self.batch_first else 0] == 0:
            # as torch: a recurrence over no step has no last step to return a state from
            raise RNNInputError(f"{name}: expected sequence length to be larger than 0, got an input with 0 steps")
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
        leading = (self.num_layers * self.dirs, *(() if unbatched else (B,)))
        states = check_hx(type(self).__name__, hx, self._kind, leading, self.weight_ih_l0, ("h_0", "c_0"),
                          hidden_size=self.hidden_size, proj_size=self.proj_size)
        return tuple(state.unsqueeze(1) if unbatched else state for state in states)

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

    Args, as torch's: ``input_size`` D, ``hidden_size`` H, ``num_layers`` L, ``bias``,
    ``batch_first``, ``dropout`` (between layers), ``bidirectional``, ``proj_size`` (H_out; 0 = no
    projection), ``device``, ``dtype``; and keyword-only ``backend``: ``"native"`` (torch's fused
    kernels, the default via ``"auto"``) or ``"equations"``. ``bias``, ``batch_first`` and
    ``bidirectional`` must be bools (``TypeError`` otherwise; torch checks the first two only).

    ``forward(input, hx=None, lengths=None, mask=None)``:

    * ``input``: (T, B, D), (B, T, D) with ``batch_first``, unbatched (T, D), or a
      :class:`~torch.nn.utils.rnn.PackedSequence` (then ``output`` is packed the same way).
    * ``hx``: ``(h_0, c_0)``, (L * dirs, B, H_out) and (L * dirs, B, H); zeros when None.
    * ``lengths``: (B,) integers, any order, any device; or ``mask``: (B, T) bool, True at
      real steps (a prefix of each row). Neither means every sequence is T steps long.

    Returns ``output, (h_n, c_n)`` (a plain tuple, as torch's): ``output`` (T, B, dirs * H_out) (or batch-first),
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

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend)


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

    Arguments and ``forward`` as in :class:`LSTM`, without ``proj_size`` (giving one is torch's
    ``ValueError``); ``hx`` is ``h_0`` (L * dirs, B, H) and the return value is ``output, h_n``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, proj_size=None, backend: str = "auto") -> None:
        _no_projection("GRU", proj_size)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype, backend)


class RNN(_RNNBase):
    r"""A multi-layer Elman RNN, :class:`torch.nn.RNN`-compatible and length-aware.

    Each layer runs :class:`rnnkit.RNNCell`'s step over time,

    .. math::
        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \qquad \phi = \tanh \text{ or } \mathrm{ReLU}

    Arguments as torch's: ``nonlinearity`` (``"tanh"`` or ``"relu"``, 4th positional as in
    torch; ``mode`` is ``"RNN_TANH"`` or ``"RNN_RELU"``), the rest and ``forward`` as in
    :class:`GRU`. With lengths, the native backend runs torch's packed op (an Elman RNN has no
    gate that could hold its state through padding steps, see :mod:`rnnkit._native`).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, proj_size=None, backend: str = "auto") -> None:
        _no_projection("RNN", proj_size)
        super().__init__(rnn_mode(nonlinearity), input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend)
        self.nonlinearity = nonlinearity


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

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, proj_size=None, backend: str = "auto") -> None:
        _no_projection("LayerNormLSTM", proj_size)
        super().__init__("LayerNormLSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend)
